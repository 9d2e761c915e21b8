"""Evaluate a model on a split of a prepared dataset: one global confusion matrix -> metrics.

`evaluate(model, params, data_dir, split, batch_size, mesh=None)` is what both the
`fcn-jax eval` command and the training loop call. It jits `training.eval_step` over a data
mesh (batch sharded on "data", params replicated), runs every image of the split once at its
own size (`data.eval_batches` groups images by size and masks the padding examples of a last
partial batch), sums the per-batch confusion matrices in int64 on the host, and scores the
sum with `fcn_jax.metrics`. Multi-process: every process calls it with the same arguments;
each feeds its share of each global batch and all get the same result.
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
    from tqdm import tqdm

    from fcn_jax import data

    meta = check_split(data_dir, split)
    mesh = training.data_mesh() if mesh is None else mesh
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(
            f"batch size {batch_size} must be a positive multiple of the number of "
            f"devices in the mesh ({mesh.size})"
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f"batch size {batch_size} must be a multiple of the process count {jax.process_count()}"
        )
    step = _compiled_eval(model, meta.ignore_index, mesh)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    total = np.zeros((meta.num_classes, meta.num_classes), np.int64)
    pending: list[jax.Array] = []  # fetch one batch late, so the host does not stall the device
    bar = tqdm(
        total=num_batches(data_dir, split, batch_size),
        desc=f"eval {split}",
        unit="batch",
        disable=not progress or jax.process_index() != 0,
        dynamic_ncols=True,
        leave=False,
    )
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
