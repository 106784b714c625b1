"""A multi-class model's class bias: which lesion class a pixel or region takes, never where the lesion is; its
checks and its record in config.json (medseg-calibrate --what class-bias chooses it: tests/test_calibrate.py)."""

import json
import shutil

import numpy as np
import pytest

from medseg_core import Segmenter
from medseg_core.hub import UnsafeWeightsError, record_class_bias, resolve_weights


def _probs(*pixels):
    """(3, 1, N) probabilities from N (background, class 1, class 2) triples."""
    return np.asarray(pixels, np.float32).T[:, None, :]


def test_the_bias_moves_a_lesion_pixel_between_classes_but_not_the_lesion_boundary(tiny_3class):
    probs = _probs((0.2, 0.5, 0.3), (0.2, 0.45, 0.35), (0.4, 0.25, 0.35), (0.6, 0.3, 0.1))
    plain = Segmenter.from_pretrained(tiny_3class, device="cpu")
    assert plain.class_bias is None and plain.mask_from_probs(probs).tolist() == [[1, 1, 0, 0]]
    biased = Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[0, 0, 0.5])  # x1.65 for class 2
    # 0.3 x 1.65 < 0.5 stays class 1; 0.35 x 1.65 > 0.45 turns class 2; background stays background (0.4 > 0.35
    # and 0.6 > 0.3 unscaled), though the scaled class 2 (0.58) would outweigh 0.4.
    assert biased.mask_from_probs(probs).tolist() == [[1, 2, 0, 0]]
    # The same offset on every class, or none, changes nothing.
    assert Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[1, 1, 1]).class_bias is None


def test_the_region_vote_reads_the_biased_probabilities(tiny_3class):
    # One region of four pixels: class 1 holds more probability mass (2.0 against 1.2) until class 2 is scaled
    # by e (3.26); the reported probabilities stay the network's.
    probs = _probs((0.1, 0.6, 0.3), (0.1, 0.6, 0.3), (0.1, 0.4, 0.5), (0.2, 0.4, 0.1))
    image = np.zeros((1, 4, 3), np.uint8)
    plain = Segmenter.from_pretrained(tiny_3class, device="cpu", postprocess=["region_class_consistency"])
    biased = Segmenter.from_pretrained(tiny_3class, device="cpu", postprocess=["region_class_consistency"],
                                       class_bias=[0, 0, 1])
    assert plain.result_from_probs(image, probs).mask.tolist() == [[1, 1, 1, 1]]
    result = biased.result_from_probs(image, probs)
    assert result.mask.tolist() == [[2, 2, 2, 2]]
    assert np.array_equal(result.probs, probs) and np.allclose(result.confidence, 1 - probs[0])


def test_bad_class_bias_is_refused(tiny_3class, tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="one finite number per class"):
        Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[0, 1])
    with pytest.raises(ValueError, match="one finite number per class"):
        Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[0, 0, float("nan")])
    with pytest.raises(ValueError, match="multi-class"):
        Segmenter.from_pretrained(tiny_weights, device="cpu", class_bias=[0, 1])
    model = tmp_path / "m"
    shutil.copytree(tiny_3class, model)
    with pytest.raises(UnsafeWeightsError, match="class_bias"):
        record_class_bias(model, [0, 0, 50])
    config = json.loads((model / "config.json").read_text())
    config["class_bias"] = [0, 0, "1"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeWeightsError, match="class_bias"):
        Segmenter.from_pretrained(resolve_weights(model), device="cpu")


def test_recording_a_choice_made_on_a_test_split_warns(caplog):
    from medseg_core.cli import warn_if_test_split

    with caplog.at_level("WARNING", logger="medseg"):
        warn_if_test_split("neopolyp-full-val", "class bias")
        assert not caplog.records
        warn_if_test_split("splits/neopolyp-full-test.txt", "class bias")
    assert len(caplog.records) == 1 and "class bias chosen on a test split" in caplog.records[0].getMessage()
