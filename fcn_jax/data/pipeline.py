"""grain input pipelines: the training loader (shuffled, augmented, resumable) and evaluation.

Multi-host contract (TrainLoader): for epoch e the example order is a permutation of all
indices drawn from (seed, e) only; global batch k is perm[k*G:(k+1)*G]; process p of P takes
positions [p*L:(p+1)*L] of it (L = G // P); the augmentation of an example is drawn from
(seed, e, position in epoch) only. So the global batch — which examples, their order and
their augmentations — does not depend on the number of processes, and a run can be resumed
with a different process count from the same state.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from fcn_jax.data import transforms
from fcn_jax.data.errors import DataError
from fcn_jax.data.meta import load_index, load_meta

STATE_VERSION = 1
_EPOCHS_AHEAD = 1 << 20  # the element stream is "infinite": 2**20 epochs


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in 0..{process_count - 1}")
    return int(process_index), int(process_count)


def open_source(data_dir, split: str):
    """Random-access source of decoded examples {"image", "label", "file_name"} of a split."""
    import tensorflow_datasets as tfds

    meta = load_meta(data_dir)
    if split not in meta.splits:
        raise DataError(f"{meta.data_dir}: no split {split!r} (have {', '.join(meta.splits)})", meta.data_dir)
    return tfds.builder_from_directory(str(meta.data_dir)).as_data_source(split)


def _read(source, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    ex = source[int(index)]
    name = ex["file_name"]
    return ex["image"], ex["label"][..., 0], name.decode() if isinstance(name, bytes) else str(name)


def _threads(num_threads: int | None) -> int:
    return num_threads or min(16, max(2, os.cpu_count() or 1))


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


class TrainLoader:
    """Infinite iterator of process-local training batches with resumable state.

    Yields {"image": float32 (L, h, w, 3) normalised, "label": uint8 (L, h, w)},
    L = global_batch_size // process_count. Each epoch drops its last partial global batch.
    `crop_size=None` gives whole images without scaling (all images must have one size).
    A `margin` ((top, bottom), (left, right)) widens each image, not its label, by that much
    context around the crop (`transforms.apply_augmentation`).
    `get_state()` / `set_state()` use a small JSON-serialisable dict.

    For fast accelerators: `cache=True` keeps decoded examples in memory after their first
    use (CamVid train: ~250 MB), so later epochs skip PNG decoding; `normalize=False` yields
    uint8 images to be normalised on the device with `transforms.normalize_jax`.
    """

    def __init__(
        self,
        data_dir,
        *,
        split: str = "train",
        global_batch_size: int,
        crop_size: tuple[int, int] | None = (360, 480),
        scale_range: tuple[float, float] | None = (0.75, 1.25),
        flip: bool = True,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        num_threads: int | None = None,
        prefetch: int | None = None,
        cache: bool = False,
        normalize: bool = True,
        jitter=(0.0, 0.0, 0.0, 0.0),
        margin=transforms.NO_MARGIN,
    ):
        self.meta = load_meta(data_dir)
        self.split = split
        self.process_index, self.process_count = _process(process_index, process_count)
        if global_batch_size < 1 or global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a positive multiple "
                f"of the process count {self.process_count}"
            )
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // self.process_count
        if split not in self.meta.splits:
            raise DataError(f"{self.meta.data_dir}: no split {split!r}", self.meta.data_dir)
        self.num_examples = self.meta.splits[split]
        self.steps_per_epoch = self.num_examples // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{self.meta.data_dir}: split {split!r} has {self.num_examples} examples, "
                f"fewer than one global batch ({self.global_batch_size})",
                self.meta.data_dir,
            )
        self.crop_size = None if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
        if self.crop_size is None:
            shapes = {tuple(s) for s in load_index(data_dir, split)["shapes"]}
            if len(shapes) > 1:
                raise DataError(
                    f"{self.meta.data_dir}: crop_size=None needs images of one size, split "
                    f"{split!r} has {len(shapes)} sizes; give a crop_size",
                    self.meta.data_dir,
                )
        self.scale_range = None if scale_range is None else tuple(float(s) for s in scale_range)
        self.flip = bool(flip)
        self.jitter = tuple(float(v) for v in jitter)
        self.margin = transforms.check_margin(margin, self.crop_size)
        self.seed = int(seed)
        self.num_threads = _threads(num_threads)
        self.prefetch = prefetch or max(2 * self.local_batch_size, self.num_threads)
        self._source = open_source(data_dir, split)
        self._cache: dict | None = {} if cache else None
        self.normalize = bool(normalize)
        self._epoch = 0
        self._step = 0  # next batch within the epoch
        self._it = None

    # -- order and augmentation: functions of (seed, epoch, position) only ----------------
    def permutation(self, epoch: int) -> np.ndarray:
        return _permutation(self.seed, epoch, self.num_examples)

    def _position(self, local_element: int) -> tuple[int, int]:
        """Local element counted from epoch 0 -> (epoch, position within the epoch's order)."""
        L = self.local_batch_size
        epoch, r = divmod(local_element, self.steps_per_epoch * L)
        k, i = divmod(r, L)
        return epoch, k * self.global_batch_size + self.process_index * L + i

    def example(self, epoch: int, position: int) -> dict:
        """The augmented example at `position` of epoch `epoch`'s order."""
        index = int(self.permutation(epoch)[position])
        if self._cache is None:
            image, label, _ = _read(self._source, index)
        else:
            if index not in self._cache:
                self._cache[index] = _read(self._source, index)[:2]
            image, label = self._cache[index]
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        image, label = transforms.augment(
            image,
            label,
            rng,
            crop_size=self.crop_size,
            scale_range=self.scale_range,
            flip=self.flip,
            ignore_index=self.meta.ignore_index,
            jitter=self.jitter,
            margin=self.margin,
        )
        image = transforms.normalize(image) if self.normalize else np.ascontiguousarray(image)
        return {"image": image, "label": np.ascontiguousarray(label, np.uint8)}

    def _make_iter(self):
        import grain

        L = self.local_batch_size
        start = (self._epoch * self.steps_per_epoch + self._step) * L
        ds = grain.MapDataset.range(start, start + _EPOCHS_AHEAD * self.steps_per_epoch * L)
        ds = ds.map(lambda j: self.example(*self._position(j)))
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
        )
        return iter(it_ds.batch(L, drop_remainder=True))

    # -- iteration and state --------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._make_iter()
        batch = next(self._it)
        self._step += 1
        if self._step == self.steps_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
        return batch

    @property
    def epoch(self) -> int:
        return self._epoch

    path = "host"

    def get_state(self) -> dict:
        """Where the next batch comes from; JSON-serialisable."""
        return {
            "version": STATE_VERSION,
            "path": self.path,
            "split": self.split,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples,
            "epoch": self._epoch,
            "step_in_epoch": self._step,
        }

    def set_state(self, state: dict) -> None:
        from fcn_jax.data.device import check_state

        check_state(self, state)
        self._epoch, self._step = int(state["epoch"]), int(state["step_in_epoch"])
        self._it = None  # restart the stream from the restored position


class Prefetcher:
    """Batches of a host loader put on the devices `size` steps ahead, so the copy of batch
    k+1 overlaps step k. `get_state` is the loader's state after the last batch *taken*
    (not the ones waiting), which is what a checkpoint must record."""

    def __init__(self, loader, mesh, size: int = 2):
        import collections

        self.loader, self.mesh, self.size = loader, mesh, int(size)
        self.path = loader.path
        self._queue = collections.deque()
        self._state = loader.get_state()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while len(self._queue) < self.size + 1:
            batch = next(self.loader)
            self._queue.append((to_global(batch, self.mesh), self.loader.get_state()))
        batch, self._state = self._queue.popleft()
        return batch

    def get_state(self) -> dict:
        return dict(self._state)


def eval_plan(data_dir, split: str, global_batch_size: int) -> list[list[tuple[int, bool]]]:
    """The global batches `eval_batches` yields, as (example index, valid) rows: images
    grouped by size in dataset order, a group's last batch filled with copies of its first
    image marked invalid. Process p of P reads rows [p*L:(p+1)*L] (L = G/P) of each, so a
    global result (e.g. one confusion matrix per row) can be named by example."""
    G = global_batch_size
    if G < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {G}")
    buckets: dict[tuple, list[int]] = {}
    for i, s in enumerate(load_index(data_dir, split)["shapes"]):
        buckets.setdefault(tuple(s), []).append(i)
    plan = []
    for idx in buckets.values():
        for start in range(0, len(idx), G):
            chunk = [(i, True) for i in idx[start : start + G]]
            plan.append(chunk + [(chunk[0][0], False)] * (G - len(chunk)))
    return plan


def eval_batches(
    data_dir,
    split: str,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int | None = None,
):
    """Whole images, no augmentation, in dataset order, grouped by image size.

    Yields {"image": float32 (L, H, W, 3), "label": uint8 (L, H, W), "valid": bool (L,),
    "file_name": list[str]}. A size group's last partial global batch is filled by repeating
    its first image with valid=False, so every process gets the same number of batches and
    each real example appears exactly once with valid=True across all processes.
    """
    import grain

    p, P = _process(process_index, process_count)
    if global_batch_size < 1 or global_batch_size % P:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of {P}")
    L = global_batch_size // P
    local: list[tuple[int, bool]] = []
    for chunk in eval_plan(data_dir, split, global_batch_size):
        local += chunk[p * L : (p + 1) * L]
    source = open_source(data_dir, split)

    def load(item):
        i, valid = item
        image, label, name = _read(source, i)
        return {
            "image": transforms.normalize(image),
            "label": np.ascontiguousarray(label, np.uint8),
            "valid": valid,
            "file_name": name,
        }

    threads = _threads(num_threads)
    ds = (
        grain.MapDataset.source(local)
        .map(load)
        .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * L, threads)))
    )
    group = []
    for ex in ds:
        group.append(ex)
        if len(group) == L:
            yield {
                "image": np.stack([e["image"] for e in group]),
                "label": np.stack([e["label"] for e in group]),
                "valid": np.array([e["valid"] for e in group], bool),
                "file_name": [e["file_name"] for e in group],
            }
            group = []


def to_global(batch: dict, mesh, axis: str = "data") -> dict:
    """Process-local numpy arrays -> global jax arrays sharded on the batch axis over `axis`.

    Non-array entries (e.g. file_name lists) are passed through unchanged.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        if isinstance(v, (np.ndarray, jax.Array))
        else v
        for k, v in batch.items()
    }
