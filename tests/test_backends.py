"""Network runners: torch and onnxruntime give the same logits, and Segmenter gives the same result on either."""

import cv2
import numpy as np
import pytest
import torch

from medseg_core import Segmenter, create_model, load_model
from medseg_core.backends import OnnxRuntimeBackend, TorchBackend, create_backend, resolve_backend
from medseg_core.export import export_onnx

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_weights(tiny_weights, tmp_path_factory):
    """A copy of the tiny weights folder with its model.onnx."""
    folder = tmp_path_factory.mktemp("onnx") / "tiny_unet.onnx"
    export_onnx(tiny_weights, folder)
    return folder


def test_onnxruntime_matches_torch_logits_at_any_batch_and_layout(onnx_weights):
    model = load_model(onnx_weights)
    eager, ort = TorchBackend(model), OnnxRuntimeBackend(onnx_weights / "model.onnx", threads=1)
    rng = np.random.default_rng(0)
    for n in (1, 3):
        x = rng.standard_normal((n, 3, 64, 64)).astype(np.float32)
        expected = eager(x)
        assert expected.shape == (n, 1, 64, 64) and expected.dtype == np.float32
        assert np.abs(ort(x) - expected).max() < 1e-4
        # A channels-last view (what Segmenter hands over) gives the same logits as the contiguous array.
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        assert np.abs(ort(nhwc.transpose(0, 3, 1, 2)) - expected).max() < 1e-4
        assert np.abs(eager(nhwc.transpose(0, 3, 1, 2)) - expected).max() < 1e-5
    # The reused input buffer must not leak one call's input into the next call's output.
    a, b = (rng.standard_normal((1, 64, 64, 3)).astype(np.float32).transpose(0, 3, 1, 2) for _ in range(2))
    out_a = ort(a).copy()
    out_b = ort(b)
    assert not np.allclose(out_a, out_b)
    assert np.abs(ort(a) - out_a).max() == 0
    # Its threads sleep between runs instead of spinning, leaving the cores to PyTorch's pre- and post-processing.
    assert ort.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_segmenter_gives_the_same_result_on_either_backend(onnx_weights, example_image):
    torch_seg = Segmenter.from_pretrained(onnx_weights, device="cpu", backend="torch")
    ort_seg = Segmenter.from_pretrained(onnx_weights, device="cpu", backend="onnxruntime")
    assert torch_seg.backend.name == "torch" and ort_seg.backend.name == "onnxruntime"
    a, b = torch_seg(example_image), ort_seg(example_image)
    assert a.probs.shape == b.probs.shape == (2, *example_image.shape[:2])
    assert np.abs(a.probs - b.probs).max() < 1e-4
    # Masks may differ only where the probability sits on the threshold.
    differ = a.mask != b.mask
    assert (np.abs(a.probs[1][differ] - 0.5) < 1e-4).all()
    ta, tb = torch_seg(example_image, tta=True), ort_seg(example_image, tta=True)
    assert np.abs(ta.disagreement - tb.disagreement).max() < 1e-4


def test_auto_picks_onnxruntime_only_where_a_model_file_exists(onnx_weights, tiny_weights):
    assert Segmenter.from_pretrained(onnx_weights, device="cpu").backend.name == "onnxruntime"
    assert Segmenter.from_pretrained(tiny_weights, device="cpu").backend.name == "torch"
    # bf16 is an eager-PyTorch option: auto keeps torch rather than ignoring the request.
    assert Segmenter.from_pretrained(onnx_weights, device="cpu", precision="bf16").backend.name == "torch"
    assert resolve_backend("auto", onnx_weights / "model.onnx") == "onnxruntime"
    assert resolve_backend("auto", None) == "torch"


def test_bad_backend_requests_are_refused(tiny_weights, onnx_weights):
    model = load_model(tiny_weights)
    with pytest.raises(ValueError, match="backend must be one of"):
        Segmenter(model, device="cpu", backend="tensorrt")
    # An exported file has one input size: scale TTA at others needs eager PyTorch.
    with pytest.raises(ValueError, match="needs the torch backend"):
        Segmenter.from_pretrained(onnx_weights, device="cpu", backend="onnxruntime", tta_scales=(0.5, 1.0))
    assert Segmenter.from_pretrained(onnx_weights, device="cpu", backend="onnxruntime", tta_scales=(1.0,))
    with pytest.raises(ValueError, match="needs an .onnx file"):
        Segmenter.from_pretrained(tiny_weights, device="cpu", backend="onnxruntime")
    with pytest.raises(ValueError, match="torch backend only"):
        create_backend("onnxruntime", model, precision="bf16", onnx_path=onnx_weights / "model.onnx")


def test_preprocessing_matches_the_written_formula(example_image):
    torch.manual_seed(0)
    model = create_model("unet", encoder="tf_efficientnet_lite0", encoder_weights="random",
                         decoder_channels=[16, 16, 16, 16, 8], input_size=64, mean=[0.4, 0.5, 0.6],
                         std=[0.2, 0.25, 0.3])
    seg = Segmenter(model, device="cpu")
    x = seg._preprocess(example_image)
    resized = cv2.resize(example_image, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float64) / 255
    expected = ((resized - [0.4, 0.5, 0.6]) / [0.2, 0.25, 0.3]).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    assert np.abs(x - expected).max() < 1e-4
    # An image already at the input size is not resampled.
    small = np.ascontiguousarray(example_image[:64, :64])
    expected_small = ((small / 255.0 - [0.4, 0.5, 0.6]) / [0.2, 0.25, 0.3]).transpose(2, 0, 1)[None]
    assert np.abs(seg._preprocess(small) - expected_small).max() < 1e-4


def test_batched_network_probs_equal_one_image_at_a_time(tiny_weights, example_image):
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    images = [example_image, example_image[::-1].copy(), example_image[:, 40:300].copy()]
    batch = seg.network_probs(images)
    assert batch.shape == (3, 2, 64, 64)
    for image, p in zip(images, batch):
        h, w = image.shape[:2]
        single, _ = seg.predict_probs(image)
        assert np.abs(seg.probs_at(p, h, w) - single).max() < 1e-5
        assert np.allclose(single.sum(0), 1, atol=1e-6)
