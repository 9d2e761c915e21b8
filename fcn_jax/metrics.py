"""Segmentation scores from one confusion matrix (pure numpy).

The matrix is (C, C) counts, rows = ground truth, columns = prediction, with void/ignored
pixels already dropped (`fcn_jax.training.confusion_matrix` does that). From it, as in the
FCN paper's `score.py` and scenic's global metrics:

    pixel_accuracy        sum_i n_ii / sum_ij n_ij
    class accuracy_i      n_ii / t_i                      (t_i = sum_j n_ij, truth pixels of i)
    IoU_i                 n_ii / (t_i + p_i - n_ii)        (p_i = sum_j n_ji, predicted pixels)
    mean_class_accuracy   mean of accuracy_i over classes with t_i > 0
    miou                  mean of IoU_i over classes with t_i + p_i > 0
    fw_iou                sum_i (t_i / sum t) IoU_i

A class that is absent from both truth and prediction has no defined IoU: it is left out of
the means and listed in `excluded_classes` (its per-class values are None, JSON null). A class
absent from the truth but predicted somewhere has IoU 0 (it counts, as a false positive) but
no defined accuracy (recall): it is listed in `absent_from_truth` and left out of
`mean_class_accuracy` only. With no labelled pixels at all every score is None.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np

SUMMARY_KEYS = ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou")


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@dataclasses.dataclass
class SegmentationMetrics:
    """Scores of one confusion matrix; `to_dict()` is JSON-ready (None for undefined values)."""

    miou: float | None
    pixel_accuracy: float | None
    mean_class_accuracy: float | None
    fw_iou: float | None
    per_class_iou: dict[str, float | None]
    per_class_accuracy: dict[str, float | None]
    excluded_classes: list[str]  # absent from truth and prediction: not in any mean
    absent_from_truth: list[str]  # no truth pixels (includes excluded): not in mean class accuracy
    num_pixels: int  # labelled pixels counted
    confusion: list[list[int]]  # the matrix itself, rows truth, columns prediction

    @property
    def class_names(self) -> list[str]:
        return list(self.per_class_iou)

    def summary(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in SUMMARY_KEYS}

    def to_dict(self, include_confusion: bool = True) -> dict:
        d = dataclasses.asdict(self)
        if not include_confusion:
            d.pop("confusion")
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> SegmentationMetrics:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def table(self, title: str | None = None) -> str:
        return format_table(self, title)


def compute_metrics(confusion, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
    """Scores of a (C, C) confusion matrix (rows truth, columns prediction)."""
    hist = np.asarray(confusion)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {hist.shape}")
    if hist.size and (hist < 0).any():
        raise ValueError("confusion matrix has negative counts")
    c = hist.shape[0]
    names = [str(i) for i in range(c)] if class_names is None else [str(n) for n in class_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}x{c} confusion matrix")
    if len(set(names)) != c:
        raise ValueError(f"class names must be unique, got {names}")

    hist = hist.astype(np.float64)
    tp = np.diag(hist)
    truth, pred = hist.sum(1), hist.sum(0)
    total = hist.sum()
    union = truth + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(truth > 0, tp / truth, np.nan)
    present = union > 0
    if total > 0:
        pixel_acc = tp.sum() / total
        mean_acc = np.nanmean(acc)  # truth > 0 somewhere since total > 0
        miou = iou[present].mean()
        fw = float(np.sum((truth / total)[present] * iou[present]))
    else:
        pixel_acc = mean_acc = miou = fw = math.nan

    return SegmentationMetrics(
        miou=_num(miou),
        pixel_accuracy=_num(pixel_acc),
        mean_class_accuracy=_num(mean_acc),
        fw_iou=_num(fw),
        per_class_iou={n: _num(v) for n, v in zip(names, iou)},
        per_class_accuracy={n: _num(v) for n, v in zip(names, acc)},
        excluded_classes=[n for n, p in zip(names, present) if not p],
        absent_from_truth=[n for n, t in zip(names, truth) if t == 0],
        num_pixels=int(total),
        confusion=np.asarray(confusion).astype(np.int64).tolist(),
    )


def _pct(x: float | None) -> str:
    return "     -" if x is None else f"{100.0 * x:6.2f}"


def format_table(m: SegmentationMetrics, title: str | None = None) -> str:
    """A plain-text table: per-class IoU / accuracy / share of truth pixels, then the means."""
    names = m.class_names
    width = max([len(n) for n in names] + [len("frequency-weighted IoU")])
    truth = np.asarray(m.confusion, np.float64).sum(1) if m.confusion else np.zeros(len(names))
    total = max(truth.sum(), 1.0)
    lines = []
    if title:
        lines += [title, ""]
    lines.append(f"{'class':<{width}}  {'IoU %':>6}  {'acc %':>6}  {'pixels %':>8}")
    lines.append("-" * (width + 28))
    for i, n in enumerate(names):
        note = (
            "  (absent: not in means)"
            if n in m.excluded_classes
            else ("  (not in truth)" if n in m.absent_from_truth else "")
        )
        lines.append(
            f"{n:<{width}}  {_pct(m.per_class_iou[n])}  {_pct(m.per_class_accuracy[n])}  "
            f"{100.0 * truth[i] / total:8.2f}{note}"
        )
    lines.append("-" * (width + 28))
    for label, key in (
        ("mean IoU", "miou"),
        ("pixel accuracy", "pixel_accuracy"),
        ("mean class accuracy", "mean_class_accuracy"),
        ("frequency-weighted IoU", "fw_iou"),
    ):
        lines.append(f"{label:<{width}}  {_pct(getattr(m, key))}")
    lines.append(f"{'labelled pixels':<{width}}  {m.num_pixels:,}")
    if m.excluded_classes:
        lines.append(
            f"excluded from the means (absent from truth and prediction): {', '.join(m.excluded_classes)}"
        )
    return "\n".join(lines)


def format_comparison(
    a: SegmentationMetrics, b: SegmentationMetrics, titles: tuple[str, str], title: str | None = None
) -> str:
    """Two evaluations of the same images side by side (e.g. plain and test-time augmented):
    per-class IoU, the means, and the change in points."""
    names = a.class_names
    width = max([len(n) for n in names] + [len("frequency-weighted IoU")])
    cols = [max(len(t), 6) for t in titles]

    def row(label: str, x: float | None, y: float | None) -> str:
        change = "     -" if x is None or y is None else f"{100.0 * (y - x):+6.2f}"
        return f"{label:<{width}}  {_pct(x):>{cols[0]}}  {_pct(y):>{cols[1]}}  {change}"

    lines = [title, ""] if title else []
    lines.append(f"{'IoU %':<{width}}  {titles[0]:>{cols[0]}}  {titles[1]:>{cols[1]}}  {'change':>6}")
    lines.append("-" * (width + sum(cols) + 12))
    lines += [row(n, a.per_class_iou[n], b.per_class_iou.get(n)) for n in names]
    lines.append("-" * (width + sum(cols) + 12))
    for label, key in (
        ("mean IoU", "miou"),
        ("pixel accuracy", "pixel_accuracy"),
        ("mean class accuracy", "mean_class_accuracy"),
        ("frequency-weighted IoU", "fw_iou"),
    ):
        lines.append(row(label, getattr(a, key), getattr(b, key)))
    return "\n".join(lines)
