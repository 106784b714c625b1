import math

import numpy as np
import pytest
import torch

from medseg_core.metrics import (
    SegMetrics,
    binary_metrics,
    dice_score,
    hd95,
    iou_score,
    lesion_free_summary,
    per_class_metrics,
    threshold_sweep_dice,
)


def _square(shape, y0, x0, size):
    m = np.zeros(shape, np.uint8)
    m[y0 : y0 + size, x0 : x0 + size] = 1
    return m


def test_hand_made_overlap():
    pred = _square((10, 10), 0, 0, 4)  # 16 px
    target = _square((10, 10), 2, 0, 4)  # 16 px, 8 shared
    m = binary_metrics(pred, target)
    assert m["dice"] == pytest.approx(2 * 8 / 32)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx((100 - 16) / 100)
    assert m["hd95"] == pytest.approx(2.0)


def test_empty_cases_are_defined():
    empty = np.zeros((8, 8), np.uint8)
    full = _square((8, 8), 2, 2, 3)
    both = binary_metrics(empty, empty)
    assert both == {"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "hd95": 0.0}
    missed = binary_metrics(empty, full)
    assert missed["dice"] == 0.0 and missed["recall"] == 0.0 and missed["precision"] == 0.0
    assert missed["hd95"] == pytest.approx(math.hypot(8, 8))
    false_alarm = binary_metrics(full, empty)
    assert false_alarm["dice"] == 0.0 and false_alarm["recall"] == 0.0
    assert not any(np.isnan(v) for v in false_alarm.values())


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        binary_metrics(np.zeros((4, 4)), np.zeros((4, 5)))


def test_per_class_and_accumulator():
    target = np.zeros((6, 6), np.uint8)
    target[:3] = 1
    target[3:] = 2
    pred = target.copy()
    pred[3:] = 1  # class 2 entirely mistaken for class 1
    pc = per_class_metrics(pred, target, 3)
    assert pc["dice_1"] == pytest.approx(2 * 18 / (36 + 18))
    assert pc["dice_2"] == 0.0
    assert pc["mdice"] == pytest.approx((pc["dice_1"] + pc["dice_2"]) / 2)
    acc = SegMetrics(num_classes=3)
    acc.update(pred, target, "a")
    acc.update(target, target, "b")
    agg = acc.aggregate()
    assert agg["dice_2"] == pytest.approx(0.5)
    assert agg["dice"] == pytest.approx(1.0)  # the lesion (non-zero) region is right in both
    acc.reset()
    assert acc.aggregate() == {}


def test_threshold_sweep_dice_of_a_perfect_hard_map_is_one_except_top_threshold():
    target = _square((16, 16), 4, 4, 6)
    assert threshold_sweep_dice(target.astype(np.float32), target) == pytest.approx(255 / 256)


def test_against_monai_on_random_masks():
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.random((48, 40)) > 0.6
        t = rng.random((48, 40)) > 0.5
        pt = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
        tt = torch.from_numpy(np.stack([~t, t])[None].astype(np.float32))
        dice = monai_metrics.compute_dice(pt, tt, include_background=False).item()
        iou = monai_metrics.compute_iou(pt, tt, include_background=False).item()
        hd = monai_metrics.compute_hausdorff_distance(pt, tt, include_background=False, percentile=95).item()
        assert dice_score(p, t) == pytest.approx(dice, abs=1e-6)
        assert iou_score(p, t) == pytest.approx(iou, abs=1e-6)
        assert hd95(p, t) == pytest.approx(hd, abs=1e-4)


def test_lesion_free_summary_counts_false_alarms_and_scores_the_lesion_images_apart():
    rows = [{"dice": 0.8, "n_lesion_truth": 50, "n_lesion_pred": 40},
            {"dice": 0.6, "n_lesion_truth": 10, "n_lesion_pred": 30},
            {"dice": 0.0, "n_lesion_truth": 0, "n_lesion_pred": 7},  # a lesion drawn on a lesion-free image
            {"dice": 1.0, "n_lesion_truth": 0, "n_lesion_pred": 0}]
    assert lesion_free_summary(rows) == {"lesion_free_images": 2, "false_alarms": 1,
                                         "dice_lesion_images": pytest.approx(0.7)}
    assert lesion_free_summary(rows[:2]) == {}  # every image holds a lesion
    assert lesion_free_summary([{"dice": 1.0}]) == {}  # rows without the counts
