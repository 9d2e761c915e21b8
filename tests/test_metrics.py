"""Metrics from a confusion matrix: hand-computed cases and a brute-force check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fcn_jax import metrics
from fcn_jax.training import confusion_matrix


def test_hand_computed_case():
    # rows truth, cols prediction; class "d" is absent from both.
    hist = np.array([[3, 1, 0, 0], [2, 4, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    m = metrics.compute_metrics(hist, ["a", "b", "c", "d"])
    assert m.pixel_accuracy == pytest.approx(7 / 11)
    assert m.mean_class_accuracy == pytest.approx((3 / 4 + 4 / 6 + 0) / 3)
    # IoU: a 3/(4+5-3), b 4/(6+6-4), c 0/1
    assert m.per_class_iou == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0, "d": None})
    assert m.miou == pytest.approx(1 / 3)
    assert m.fw_iou == pytest.approx(4 / 11 * 0.5 + 6 / 11 * 0.5)
    assert m.per_class_accuracy["d"] is None and m.per_class_accuracy["c"] == 0.0
    assert m.excluded_classes == ["d"] and m.absent_from_truth == ["d"]
    assert m.num_pixels == 11


def test_predicted_but_absent_from_truth_counts_in_miou_not_in_class_accuracy():
    hist = np.array([[2, 2], [0, 0]])  # class 1 never in truth, predicted twice
    m = metrics.compute_metrics(hist, ["x", "y"])
    assert m.per_class_iou == {"x": 0.5, "y": 0.0}
    assert m.miou == pytest.approx(0.25)
    assert m.mean_class_accuracy == pytest.approx(0.5)  # only x has truth pixels
    assert m.excluded_classes == [] and m.absent_from_truth == ["y"]


def test_empty_matrix_gives_none_and_valid_json():
    m = metrics.compute_metrics(np.zeros((3, 3), np.int64))
    assert m.summary() == {k: None for k in metrics.SUMMARY_KEYS}
    assert m.excluded_classes == ["0", "1", "2"]
    json.loads(m.to_json())  # no NaN in the output


def brute_force(labels, preds, num_classes, ignore):
    keep = labels != ignore
    t, p = labels[keep], preds[keep]
    iou, acc = {}, {}
    for c in range(num_classes):
        inter = np.sum((t == c) & (p == c))
        union = np.sum((t == c) | (p == c))
        iou[c] = inter / union if union else None
        acc[c] = inter / np.sum(t == c) if np.sum(t == c) else None
    ious = [v for v in iou.values() if v is not None]
    accs = [v for v in acc.values() if v is not None]
    fw = sum(np.sum(t == c) / t.size * iou[c] for c in range(num_classes) if iou[c] is not None)
    return (
        {
            "pixel_accuracy": np.mean(t == p),
            "miou": np.mean(ious),
            "mean_class_accuracy": np.mean(accs),
            "fw_iou": fw,
        },
        iou,
        acc,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    num_classes, ignore = 6, 6
    labels = rng.integers(0, num_classes + 1, (3, 17, 23))  # value 6 = void
    labels[labels == 4] = 0  # class 4 never in truth ...
    preds = rng.integers(0, num_classes, (3, 17, 23))
    preds[preds == 5] = 1  # ... class 5 never predicted
    if seed == 2:
        labels[labels == 5] = 1  # and in one case class 5 absent from both
    hist = np.asarray(confusion_matrix(labels, preds, num_classes, labels != ignore))
    assert hist.sum() == np.sum(labels != ignore)
    names = [f"c{i}" for i in range(num_classes)]
    m = metrics.compute_metrics(hist, names)
    expect, iou, acc = brute_force(labels, preds, num_classes, ignore)
    for k, v in expect.items():
        assert getattr(m, k) == pytest.approx(v, rel=1e-12), k
    assert m.per_class_iou == pytest.approx({f"c{c}": v for c, v in iou.items()})
    assert m.per_class_accuracy == pytest.approx({f"c{c}": v for c, v in acc.items()})
    assert m.excluded_classes == (["c5"] if seed == 2 else [])
    assert "c4" in m.absent_from_truth


def test_json_round_trip_and_table():
    hist = np.array([[5, 1, 0], [0, 3, 0], [0, 0, 0]])
    m = metrics.compute_metrics(hist, ["Sky", "Road", "Bicyclist"])
    d = json.loads(m.to_json())
    assert d["per_class_iou"]["Bicyclist"] is None and d["excluded_classes"] == ["Bicyclist"]
    assert d["confusion"] == hist.tolist()
    assert metrics.SegmentationMetrics.from_dict(d) == m
    text = metrics.format_table(m, "val")
    assert "Sky" in text and "83.33" in text  # Sky IoU 5/6
    assert "mean IoU" in text and f"{100 * m.miou:.2f}" in text
    assert "excluded from the means" in text and "Bicyclist" in text.splitlines()[-1]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="square"):
        metrics.compute_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class names"):
        metrics.compute_metrics(np.zeros((2, 2)), ["a"])
