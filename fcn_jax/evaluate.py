"""Evaluate a model on a split of a prepared dataset: one global confusion matrix -> metrics.

`evaluate(model, params, data_dir, split, batch_size, mesh=None)` is what both the
`fcn-jax eval` command and the training loop call. It jits `training.eval_step` over a data
mesh (batch sharded on "data", params replicated), runs every image of the split once at its
own size (`data.eval_batches` groups images by size and masks the padding examples of a last
partial batch), sums the per-batch confusion matrices in int64 on the host, and scores the
sum with `fcn_jax.metrics`. Multi-process: every process calls it with the same arguments;
each feeds its share of each global batch and all get the same result.

Per image: `evaluate_per_image` runs the same way but keeps one confusion matrix per image
(named through `data.eval_plan`), so `fcn-jax eval` can record every image's mean IoU and
pixel accuracy and `fcn-jax report` can show the worst. `evaluate_segmenter` evaluates
through a `predict.Segmenter` on one device instead, for what only it does: tiles and
test-time augmentation (scales, flips); its per-image records have the same form.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fcn_jax import metrics as metrics_lib
from fcn_jax import training


class SplitNotFound(ValueError):
    """The requested split is not in the prepared dataset; the message lists the ones that are."""


@functools.lru_cache(maxsize=8)
def _compiled_eval(model, ignore_index: int, mesh: Mesh):
    """One jitted eval step per (model, ignore value, mesh): the training loop evaluates many
    times and must not re-trace each time (jit caches on the function object)."""
    return training.compile_eval_step(mesh, model, ignore_index)


def check_split(data_dir, split: str):
    """The dataset's meta, or SplitNotFound naming the available splits."""
    from fcn_jax import data

    meta = data.load_meta(data_dir)
    if split not in meta.splits:
        have = ", ".join(f"{k} ({n} images)" for k, n in meta.splits.items()) or "none"
        raise SplitNotFound(
            f"{meta.data_dir}: the prepared dataset has no split {split!r}; available: {have}"
        )
    return meta


def num_batches(data_dir, split: str, global_batch_size: int) -> int:
    """How many global batches `data.eval_batches` yields (images are grouped by size)."""
    from fcn_jax import data

    sizes: dict[tuple, int] = {}
    for s in data.load_index(data_dir, split)["shapes"]:
        sizes[tuple(s)] = sizes.get(tuple(s), 0) + 1
    return sum(math.ceil(n / global_batch_size) for n in sizes.values())


def _check_batch_size(batch_size: int, mesh: Mesh) -> Mesh:
    """A global eval batch is split evenly over the mesh's devices and over the processes."""
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(
            f"batch size {batch_size} must be a positive multiple of the number of "
            f"devices in the mesh ({mesh.size})"
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f"batch size {batch_size} must be a multiple of the process count {jax.process_count()}"
        )
    return mesh


def _progress_bar(total: int, split: str, progress: bool):
    """Batches of a split, shown by process 0 only."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=f"eval {split}",
        unit="batch",
        disable=not progress or jax.process_index() != 0,
        dynamic_ncols=True,
        leave=False,
    )


def confusion(
    model,
    params: Any,
    data_dir,
    split: str = "val",
    batch_size: int = 4,
    mesh: Mesh | None = None,
    *,
    progress: bool = True,
    num_threads: int | None = None,
) -> np.ndarray:
    """The (C, C) int64 confusion matrix of `split` (rows truth, columns prediction)."""

    from fcn_jax import data

    meta = check_split(data_dir, split)
    mesh = _check_batch_size(batch_size, training.data_mesh() if mesh is None else mesh)
    step = _compiled_eval(model, meta.ignore_index, mesh)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    total = np.zeros((meta.num_classes, meta.num_classes), np.int64)
    pending: list[jax.Array] = []  # fetch one batch late, so the host does not stall the device
    bar = _progress_bar(num_batches(data_dir, split, batch_size), split, progress)
    try:
        for batch in data.eval_batches(data_dir, split, batch_size, num_threads=num_threads):
            batch = data.to_global({k: batch[k] for k in ("image", "label", "valid")}, mesh)
            pending.append(step(params, batch))
            if len(pending) > 1:
                total += np.asarray(pending.pop(0), np.int64)
            bar.update(1)
        for c in pending:
            total += np.asarray(c, np.int64)
    finally:
        bar.close()
    return total


def evaluate(
    model,
    params: Any,
    data_dir,
    split: str = "val",
    batch_size: int = 4,
    mesh: Mesh | None = None,
    *,
    progress: bool = True,
    num_threads: int | None = None,
) -> metrics_lib.SegmentationMetrics:
    """Metrics of `model` with `params` on every image of `split` (void pixels ignored).

    `batch_size` is global (over all devices and processes) and must be a multiple of the
    mesh size. Raises SplitNotFound (listing the available splits) for a missing split.
    """
    meta = check_split(data_dir, split)
    hist = confusion(
        model, params, data_dir, split, batch_size, mesh, progress=progress, num_threads=num_threads
    )
    return metrics_lib.compute_metrics(hist, meta.class_names)


# -- per image ----------------------------------------------------------------------------------


def image_record(file_name: str, confusion, class_names) -> dict:
    """One image's scores: mean IoU over the classes in its truth or prediction, pixel
    accuracy, the IoU of each such class and the truth pixels of each class it holds."""
    hist = np.asarray(confusion, np.int64)
    m = metrics_lib.compute_metrics(hist, class_names)
    truth = hist.sum(1)
    return {
        "file_name": file_name,
        "miou": m.miou,
        "pixel_accuracy": m.pixel_accuracy,
        "num_pixels": m.num_pixels,
        "per_class_iou": {n: v for n, v in m.per_class_iou.items() if v is not None},
        "class_pixels": {n: int(t) for n, t in zip(m.class_names, truth) if t > 0},
    }


def worst_images(images: list[dict], k: int) -> list[dict]:
    """The k `image_record`s with the lowest mean IoU (images without labels left out)."""
    return sorted((r for r in images if r.get("miou") is not None), key=lambda r: r["miou"])[:k]


@functools.lru_cache(maxsize=8)
def _compiled_per_image(model, ignore_index: int, mesh: Mesh):
    """A global batch -> one (C, C) confusion matrix per example, gathered on every process."""
    replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P(training.DATA_AXIS))

    def step(params, batch):
        logits = training.predict_logits(params, batch["image"], model=model)
        preds = jax.numpy.argmax(logits, axis=-1)
        mask = (batch["label"] != ignore_index) & batch["valid"][:, None, None]
        per_example = functools.partial(training.confusion_matrix, num_classes=logits.shape[-1])
        return jax.vmap(lambda l, p, m: per_example(l, p, mask=m))(batch["label"], preds, mask)

    return jax.jit(step, in_shardings=(replicated, batched), out_shardings=replicated)


def evaluate_per_image(
    model,
    params: Any,
    data_dir,
    split: str = "val",
    batch_size: int = 4,
    mesh: Mesh | None = None,
    *,
    progress: bool = True,
    num_threads: int | None = None,
) -> tuple[metrics_lib.SegmentationMetrics, list[dict]]:
    """`evaluate`'s metrics and one `image_record` per image of the split, in dataset order.

    The split's confusion matrix is the sum of the images' (the same pixels, counted once)."""

    from fcn_jax import data

    meta = check_split(data_dir, split)
    mesh = _check_batch_size(batch_size, training.data_mesh() if mesh is None else mesh)
    step = _compiled_per_image(model, meta.ignore_index, mesh)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    plan = data.eval_plan(data_dir, split, batch_size)
    names = data.load_index(data_dir, split)["file_names"]
    per_image: dict[int, np.ndarray] = {}
    batches = data.eval_batches(data_dir, split, batch_size, num_threads=num_threads)
    bar = _progress_bar(len(plan), split, progress)
    try:
        for rows, batch in zip(plan, batches):
            batch = data.to_global({k: batch[k] for k in ("image", "label", "valid")}, mesh)
            hists = np.asarray(step(params, batch), np.int64)
            for (i, valid), hist in zip(rows, hists):
                if valid:
                    per_image[i] = hist
            bar.update(1)
    finally:
        bar.close()
    order = sorted(per_image)
    total = sum((per_image[i] for i in order), np.zeros((meta.num_classes,) * 2, np.int64))
    records = [image_record(names[i], per_image[i], meta.class_names) for i in order]
    return metrics_lib.compute_metrics(total, meta.class_names), records


def evaluate_segmenter(
    segmenter,
    data_dir,
    split: str = "val",
    *,
    progress: bool = True,
    **settings,
) -> tuple[metrics_lib.SegmentationMetrics, list[dict]]:
    """Metrics and per-image records of `segmenter.predict` on every image of the split.

    settings (flip, scales, tile, overlap) override the segmenter's own for this evaluation.
    The images are read one batch (`segmenter.batch_size`) at a time and scored on the host;
    void pixels are ignored as in `evaluate`."""
    from tqdm import tqdm

    from fcn_jax import data

    meta = check_split(data_dir, split)
    c = meta.num_classes
    source = data.open_source(data_dir, split)
    total = np.zeros((c, c), np.int64)
    records = []
    step = max(1, segmenter.batch_size)
    bar = tqdm(total=len(source), desc=f"eval {split}", unit="img", disable=not progress, leave=False)
    with bar:
        for start in range(0, len(source), step):
            examples = [source[i] for i in range(start, min(start + step, len(source)))]
            preds = segmenter.predict([np.asarray(ex["image"]) for ex in examples], **settings)
            for ex, pred in zip(examples, preds):
                label = np.asarray(ex["label"])[..., 0].astype(np.int64)
                keep = label < c
                hist = np.bincount(label[keep] * c + pred[keep], minlength=c * c).reshape(c, c)
                total += hist
                name = ex["file_name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                records.append(image_record(name, hist, meta.class_names))
            bar.update(len(examples))
    return metrics_lib.compute_metrics(total, meta.class_names), records
