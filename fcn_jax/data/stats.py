"""Class statistics of a prepared dataset: pixel counts and median-frequency weights.

`prepare` writes them to `class_stats.json` in the dataset directory (computed while checking
the labels, so they cost nothing extra); datasets without that file get it computed on first
use and cached there when the directory is writable.

Median-frequency balancing (Eigen & Fergus 2015, as used by SegNet on CamVid):
    freq(c)   = pixels of class c / labelled pixels of the images in which c occurs
    weight(c) = median over present classes of freq / freq(c)
Ignored (void) pixels count nowhere; a class with no pixels gets weight 0.

`loss.class_weighting` names a power of these weights (`WEIGHTINGS`): 1 is SegNet's balancing,
0.5 a milder one (the square root: a class 100x rarer weighs 10x, not 100x), 0 none.
"""

from __future__ import annotations

import json

import numpy as np

from fcn_jax.data.errors import DataError
from fcn_jax.data.meta import STATS_FILE, load_meta, resolve_dataset_dir
from fcn_jax.fsutil import atomic_write_json


def _compute(data_dir, split: str) -> dict:
    import tensorflow_datasets as tfds

    meta = load_meta(data_dir)
    builder = tfds.builder_from_directory(str(meta.data_dir))
    src = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    k = meta.num_classes
    pixels = np.zeros(k, np.int64)
    present = np.zeros(k, np.int64)
    ignored = 0
    for i in range(len(src)):
        counts = np.bincount(np.asarray(src[i]["label"]).ravel(), minlength=256)
        pixels += counts[:k]
        present[counts[:k] > 0] += counts[:k].sum()
        ignored += int(counts[meta.ignore_index])
    return {
        "num_images": len(src),
        "pixels": pixels.tolist(),
        "ignored": ignored,
        "labelled_pixels_of_images_with_class": present.tolist(),
    }


def class_stats(data_dir, split: str = "train") -> dict:
    """{"num_images", "pixels" (per class), "ignored", "labelled_pixels_of_images_with_class"}."""
    d = resolve_dataset_dir(data_dir)
    path = d / STATS_FILE
    stats = json.loads(path.read_text()) if path.is_file() else {"format": 1, "splits": {}}
    if split not in stats["splits"]:
        meta = load_meta(d)
        if split not in meta.splits:
            raise DataError(f"{d}: no split {split!r} (have {', '.join(meta.splits)})", d)
        stats["splits"][split] = _compute(d, split)
        stats.update(num_classes=meta.num_classes, ignore_index=meta.ignore_index)
        try:
            # Atomic: the dataset directory is the user's; a full disk must not leave a
            # truncated class_stats.json that breaks every later read.
            atomic_write_json(path, stats, indent=1)
        except OSError:
            pass  # read-only dataset directory: just don't cache
    return stats["splits"][split]


def class_counts(data_dir, split: str = "train") -> np.ndarray:
    """Pixels per class (int64, shape (num_classes,)), void excluded."""
    return np.asarray(class_stats(data_dir, split)["pixels"], np.int64)


def median_frequency_weights(pixels, present_pixels) -> np.ndarray:
    pixels = np.asarray(pixels, np.float64)
    present_pixels = np.asarray(present_pixels, np.float64)
    ok = pixels > 0
    weights = np.zeros(pixels.shape, np.float32)
    if ok.any():
        freq = pixels[ok] / present_pixels[ok]
        weights[ok] = (np.median(freq) / freq).astype(np.float32)
    return weights


WEIGHTINGS = {"none": 0.0, "median_frequency": 1.0, "sqrt_median_frequency": 0.5}


def class_weights(data_dir, split: str = "train", weighting: str = "median_frequency") -> np.ndarray | None:
    """`weighting`'s power of the median-frequency weights of `split` (float32, shape
    (num_classes,)); None for "none", which the loss reads as an unweighted mean."""
    power = WEIGHTINGS[weighting]
    if power == 0:
        return None
    s = class_stats(data_dir, split)
    w = median_frequency_weights(s["pixels"], s["labelled_pixels_of_images_with_class"])
    return w if power == 1 else (w**power).astype(np.float32)
