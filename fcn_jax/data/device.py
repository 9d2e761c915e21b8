"""The device-resident input path: the decoded train split lives on the devices, and each
batch is gathered and augmented inside the jitted train step.

On a fast accelerator the host pipeline (PNG decoding, PIL resizing, crops and flips in
Python threads, a host-to-device copy per step) cannot keep up with the step. When the
decoded split fits a memory budget (CamVid train: 367 x 360 x 480 x 4 bytes = 254 MB) it is
copied to every device once, as uint8 images and labels padded to the largest size, and the
host sends one integer per step: the global batch index. Everything else is a pure function
of (seed, epoch, position in the epoch), computed on the devices:

- the epoch's order: a permutation drawn from (seed, epoch);
- per example, from (seed, epoch, position): a scale in `scale_range`, a crop window of the
  scaled image padded to `crop_size` (mean colour / ignore value), and a flip; with a
  `margin`, the image (not the label) is that window widened by the margin;
- the image is resized by PIL's bilinear filter (a triangle kernel widened by the scale
  factor when shrinking: antialiased), written as two small matrix products per example;
  the label nearest-neighbour, by an exact integer formula that `transforms.resize_pair`
  uses too, so label maps are identical on both paths for the same draws.

So the global batch does not depend on the number of devices or processes, and the loader
state saved with checkpoints (epoch, step in epoch) resumes it exactly. The draws come from
jax.random rather than numpy: the two paths give the same kind of augmentation, not the
same stream, and a run cannot switch paths in the middle (`DeviceLoader.set_state` refuses).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.data import transforms
from fcn_jax.data.errors import DataError
from fcn_jax.data.meta import load_index, load_meta

PATH = "device"


class Draw(NamedTuple):
    """One example's augmentation: scaled size, crop offset in the scaled (padded) image,
    flip. Arrays with one entry per example (or scalars for one example)."""

    height: jax.Array  # scaled size, >= 1
    width: jax.Array
    top: jax.Array  # crop window's top-left corner
    left: jax.Array
    flip: jax.Array  # bool
    brightness: jax.Array | float = 1.0  # colour jitter factors (transforms.color_jitter)
    contrast: jax.Array | float = 1.0
    saturation: jax.Array | float = 1.0
    hue: jax.Array | float = 0.0


@dataclasses.dataclass(frozen=True)
class Augment:
    """What the device path needs to know to build batches (hashable: a static argument)."""

    num_examples: int
    global_batch_size: int
    crop_size: tuple[int, int] | None
    scale_range: tuple[float, float] | None
    flip: bool
    seed: int
    ignore_index: int
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue
    margin: tuple[tuple[int, int], tuple[int, int]] = transforms.NO_MARGIN  # context around the image's crop
    nan_at_batch: int = -1  # fault injection for tests: poison this global batch

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size


def cache_bytes(data_dir, split: str) -> int:
    """Bytes the split takes on each device: uint8 RGB + label, padded to the largest size."""
    shapes = np.asarray(load_index(data_dir, split)["shapes"])
    h, w = shapes.max(axis=0)
    return int(len(shapes) * h * w * 4)


# -- draws ----------------------------------------------------------------------------------


def _example_key(seed: int, epoch, position) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), position)
    return jax.random.fold_in(key, 1)


def draw(aug: Augment, epoch, position, size: jax.Array) -> Draw:
    """The augmentation of the example at `position` of epoch `epoch`, whose image is
    `size` = (h, w). Same order of decisions as `transforms.augment`."""
    k_scale, k_top, k_left, k_flip, k_jitter = jax.random.split(_example_key(aug.seed, epoch, position), 5)
    h, w = size[0], size[1]
    u = jax.random.uniform(k_jitter, (4,), jnp.float32, -1.0, 1.0)
    b, c, s, hue = aug.jitter
    factors = (1.0 + b * u[0], 1.0 + c * u[1], 1.0 + s * u[2], hue * u[3])
    if aug.crop_size is None:
        zero = jnp.zeros((), jnp.int32)
        flip = jax.random.uniform(k_flip) < 0.5 if aug.flip else jnp.zeros((), bool)
        return Draw(h, w, zero, zero, flip, *factors)
    ch, cw = aug.crop_size
    if aug.scale_range:
        s = jax.random.uniform(k_scale, (), jnp.float32, *aug.scale_range)
        sh = jnp.maximum(1, jnp.round(h * s).astype(jnp.int32))
        sw = jnp.maximum(1, jnp.round(w * s).astype(jnp.int32))
    else:
        sh, sw = h, w
    top = jax.random.randint(k_top, (), 0, jnp.maximum(sh, ch) - ch + 1)
    left = jax.random.randint(k_left, (), 0, jnp.maximum(sw, cw) - cw + 1)
    flip = jax.random.uniform(k_flip) < 0.5 if aug.flip else jnp.zeros((), bool)
    return Draw(sh, sw, top, left, flip, *factors)


# -- resampling, as PIL does it ----------------------------------------------------------------


def bilinear_weights(in_size, out_size, start, count: int, capacity: int) -> jax.Array:
    """(count, capacity) weights: row i resamples output pixel `start + i` of a length
    `out_size` resize of a length `in_size` signal (entries beyond in_size are zero).

    PIL's BILINEAR: centre (o + 0.5) * in/out, triangle kernel of support max(in/out, 1),
    normalised per output pixel. The distance from a centre, in kernel units, is
    |(2o + 1) in - (2r + 1) out| / (2 max(in, out)): an exact integer over an exact integer,
    so each weight is rounded once (a float32 centre would be off by ~1e-4 at 480 pixels)."""
    o = (start + jnp.arange(count, dtype=jnp.int32))[:, None]
    r = jnp.arange(capacity, dtype=jnp.int32)[None, :]
    num = jnp.abs((2 * o + 1) * in_size - (2 * r + 1) * out_size)
    w = jnp.maximum(
        0.0, 1.0 - num.astype(jnp.float32) / (2 * jnp.maximum(in_size, out_size)).astype(jnp.float32)
    )
    w = jnp.where(r < in_size, w, 0.0)
    return w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-12)


def nearest_index(in_size, out_size, out_index):
    """Source index of output pixel `out_index` in a nearest-neighbour resize: the pixel
    whose span holds the output pixel's centre, floor((o + 0.5) * in / out), exactly."""
    return ((2 * out_index + 1) * in_size) // (2 * out_size)


def _round_u8(x: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(x), 0, 255)


_PRECISION_BITS = 22  # PIL's: 32 bits - 8 for the pixel - 2 for the sum's headroom


def _fixed_point(weights: jax.Array) -> jax.Array:
    return jnp.floor(0.5 + weights * (1 << _PRECISION_BITS)).astype(jnp.int32)


def _from_fixed(acc: jax.Array) -> jax.Array:
    """Round a fixed-point sum to 8 bits (half up), as PIL's clip8."""
    return jnp.clip((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255)


def jitter(image: jax.Array, inside: jax.Array, d: Draw) -> jax.Array:
    """`transforms.color_jitter` in jax: uint8 (H, W, 3), the jitter factors of `d` applied
    where `inside` holds."""
    grey_w = jnp.asarray(transforms._GREY)
    x = jnp.clip(image.astype(jnp.float32) * d.brightness, 0, 255)
    grey = x @ grey_w
    mean = jnp.sum(jnp.where(inside, grey, 0.0)) / jnp.maximum(jnp.sum(inside), 1)
    x = jnp.clip((x - mean) * d.contrast + mean, 0, 255)
    grey = (x @ grey_w)[..., None]
    x = jnp.clip(grey + d.saturation * (x - grey), 0, 255)
    cos, sin = jnp.cos(2 * jnp.pi * d.hue), jnp.sin(2 * jnp.pi * d.hue)
    rot = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    mix = jnp.asarray(transforms._YIQ_TO_RGB) @ rot @ jnp.asarray(transforms._RGB_TO_YIQ)
    x = jnp.clip(x @ mix.T, 0, 255)
    return jnp.where(inside[..., None], _round_u8(x), image.astype(jnp.float32)).astype(jnp.uint8)


def apply(aug: Augment, image: jax.Array, label: jax.Array, size: jax.Array, d: Draw):
    """One example: `image` (H, W, 3) uint8 and `label` (H, W) uint8 padded beyond `size`,
    augmented by `d` -> (crop_h + margin, crop_w + margin, 3) uint8, (crop_h, crop_w) uint8,
    as `transforms.apply_augmentation`."""
    h, w = size[0], size[1]
    if aug.crop_size is None:
        img, lab = image, label
        inside = jnp.ones(img.shape[:2], bool)
    else:
        ch, cw = aug.crop_size
        (mt, mb), (ml, mr) = aug.margin
        out_h, out_w = ch + mt + mb, cw + ml + mr
        top, left = d.top - mt, d.left - jnp.where(d.flip, mr, ml)  # image window, scaled image
        rows, cols = top + jnp.arange(out_h), left + jnp.arange(out_w)
        inside = ((rows >= 0) & (rows < d.height))[:, None] & ((cols >= 0) & (cols < d.width))[None, :]
        # Image: horizontal pass then vertical, each in PIL's 22-bit fixed point and rounded
        # to 8 bits: integer sums, so the result does not depend on how XLA orders them
        # (nor on how a batch is split over devices), and it matches PIL's.
        wx = _fixed_point(bilinear_weights(w, d.width, left, out_w, image.shape[1]))
        wy = _fixed_point(bilinear_weights(h, d.height, top, out_h, image.shape[0]))
        x = _from_fixed(
            jnp.einsum("hwc,ow->hoc", image.astype(jnp.int32), wx, preferred_element_type=jnp.int32)
        )
        x = _from_fixed(jnp.einsum("hoc,ph->poc", x, wy, preferred_element_type=jnp.int32))
        pad = jnp.asarray(transforms.PAD_RGB, jnp.int32)
        img = jnp.where(inside[..., None], x, pad).astype(jnp.uint8)
        rows, cols = d.top + jnp.arange(ch), d.left + jnp.arange(cw)  # label window
        src_r = jnp.clip(nearest_index(h, d.height, rows), 0, label.shape[0] - 1)
        src_c = jnp.clip(nearest_index(w, d.width, cols), 0, label.shape[1] - 1)
        lab = jnp.where(
            (rows < d.height)[:, None] & (cols < d.width)[None, :],
            label[src_r[:, None], src_c[None, :]],
            jnp.uint8(aug.ignore_index),
        )
    if any(aug.jitter):
        img = jitter(img.astype(jnp.uint8), inside, d)
    if aug.flip:
        img = jnp.where(d.flip, img[:, ::-1], img)
        lab = jnp.where(d.flip, lab[:, ::-1], lab)
    return img.astype(jnp.uint8), lab.astype(jnp.uint8)


def batch(aug: Augment, cache: dict, index: jax.Array) -> dict:
    """Global batch `index` (counted from the start of training): {"image": uint8
    (G, h, w, 3), "label": uint8 (G, h, w)}, from the device-resident `cache`."""
    G, spe = aug.global_batch_size, aug.steps_per_epoch
    epoch, k = index // spe, index % spe
    order = jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(aug.seed), epoch), aug.num_examples)
    positions = k * G + jnp.arange(G)
    examples = jnp.take(order, positions)
    sizes = cache["size"][examples]
    draws = jax.vmap(lambda p, s: draw(aug, epoch, p, s))(positions, sizes)
    images, labels = jax.vmap(functools.partial(apply, aug))(
        cache["image"][examples], cache["label"][examples], sizes, draws
    )
    out = {"image": images, "label": labels}
    if aug.nan_at_batch >= 0:
        poison = jnp.where(index == aug.nan_at_batch, jnp.float32(jnp.nan), jnp.float32(1.0))
        out["image"] = transforms.normalize_jax(out["image"]) * poison  # float: already normalised
    return out


# -- the loader ---------------------------------------------------------------------------------


class DeviceLoader:
    """The device-resident counterpart of `pipeline.TrainLoader`.

    `next(loader)` gives the global batch index to pass to the jitted step with `cache`
    (replicated on every device of `mesh`); `get_state` / `set_state` use TrainLoader's
    format, marked with this path.
    """

    path = PATH

    def __init__(
        self,
        data_dir,
        mesh,
        *,
        split: str = "train",
        global_batch_size: int,
        crop_size=(360, 480),
        scale_range=(0.75, 1.25),
        flip: bool = True,
        seed: int = 0,
        jitter=(0.0, 0.0, 0.0, 0.0),
        margin=transforms.NO_MARGIN,
        nan_at_batch: int = -1,
        progress: bool = False,
    ):
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from fcn_jax.data.pipeline import open_source

        meta = load_meta(data_dir)
        if split not in meta.splits:
            raise DataError(f"{meta.data_dir}: no split {split!r}", meta.data_dir)
        n = meta.splits[split]
        if global_batch_size < 1 or n // global_batch_size == 0:
            raise DataError(
                f"{meta.data_dir}: split {split!r} has {n} examples, fewer than one global "
                f"batch ({global_batch_size})",
                meta.data_dir,
            )
        shapes = np.asarray(load_index(data_dir, split)["shapes"], np.int32)
        if crop_size is None and len({tuple(s) for s in shapes}) > 1:
            raise DataError(
                f"{meta.data_dir}: crop_size=None needs images of one size; give a crop_size", meta.data_dir
            )
        self.split, self.seed = split, int(seed)
        self.global_batch_size, self.num_examples = int(global_batch_size), n
        self.aug = Augment(
            num_examples=n,
            global_batch_size=self.global_batch_size,
            crop_size=None if crop_size is None else (int(crop_size[0]), int(crop_size[1])),
            scale_range=None if not scale_range else (float(scale_range[0]), float(scale_range[1])),
            flip=bool(flip),
            seed=self.seed,
            ignore_index=meta.ignore_index,
            jitter=tuple(float(v) for v in jitter),
            margin=transforms.check_margin(margin, crop_size),
            nan_at_batch=nan_at_batch,
        )
        hmax, wmax = shapes.max(axis=0)
        images = np.zeros((n, hmax, wmax, 3), np.uint8)
        labels = np.full((n, hmax, wmax), meta.ignore_index, np.uint8)
        source = open_source(data_dir, split)
        from tqdm import tqdm

        for i in tqdm(range(n), desc="caching on device", unit="img", disable=not progress, leave=False):
            ex = source[i]
            h, w = ex["image"].shape[:2]
            images[i, :h, :w] = ex["image"]
            labels[i, :h, :w] = ex["label"][..., 0]
        replicated = NamedSharding(mesh, P())
        self.cache = {
            name: jax.make_array_from_callback(a.shape, replicated, lambda idx, a=a: a[idx])
            for name, a in (("image", images), ("label", labels), ("size", shapes))
        }
        self._index = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.aug.steps_per_epoch

    def __iter__(self):
        return self

    def __next__(self) -> int:
        index = self._index
        self._index += 1
        return index

    def get_state(self) -> dict:
        epoch, step = divmod(self._index, self.steps_per_epoch)
        return {
            "version": 1,
            "path": PATH,
            "split": self.split,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples,
            "epoch": epoch,
            "step_in_epoch": step,
        }

    def set_state(self, state: dict) -> None:
        check_state(self, state)
        self._index = int(state["epoch"]) * self.steps_per_epoch + int(state["step_in_epoch"])


def check_state(loader, state: dict) -> None:
    """Refuse a loader state written by the other input path or another configuration."""
    saved = state.get("path", "host")
    if saved != loader.path:
        raise ValueError(
            f"the run was trained with the {saved} input path and data.device_cache now selects the "
            f"{loader.path} path; set --config.data.device_cache={'on' if saved == PATH else 'off'} to "
            "continue it (the two paths draw their augmentations differently)"
        )
    for key in ("seed", "global_batch_size", "num_examples", "split"):
        if key in state and state[key] != getattr(loader, key):
            raise ValueError(
                f"loader state has {key}={state[key]!r}, this loader {getattr(loader, key)!r}: "
                "it belongs to another configuration"
            )
    step = int(state["step_in_epoch"])
    if not 0 <= step < loader.steps_per_epoch or int(state["epoch"]) < 0:
        raise ValueError(f"loader state epoch={state['epoch']} step_in_epoch={step} out of range")
