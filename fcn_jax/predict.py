"""Inference API: segment uint8 images of any size with a trained FCN.

    seg = Segmenter.from_checkpoint("runs/camvid_fcn8s")     # best/ if present, else latest
    seg = Segmenter.from_pretrained("user/fcn8s-camvid")     # or a local folder (docs/deploy.md)
    labels = seg.predict(image)                 # (H, W, 3) uint8 -> (H, W) int32 class ids
    probs = seg.predict_proba(image)            # -> (H, W, C) float32, sums to 1 per pixel
    many = seg.predict([img_a, img_b])          # list of images of any sizes -> list

Compilation and shape buckets
-----------------------------
XLA compiles one program per input shape, so a folder of photos of many sizes would compile
once per size. Padding every image up to a few fixed sizes (say multiples of 32) and cropping
the result avoids that, but is *not* correct for an FCN in general: the padded pixels are
seen by every layer's receptive field, and once the conv biases are non-zero (any trained or
converted net) the outputs change everywhere near the bottom/right borders of small images
(e.g. 64x96 padded to 96x128: probabilities move by up to 6e-3 and 0.6 % of arg-maxes flip,
with random non-zero biases).

The buckets used here are chosen so that padding changes nothing. The model already pads its
input with zeros (in normalised space) by a fixed amount before and by the *smallest* amount
after that puts a coarsest (stride-32) score cell on or beyond the border
(`geometry.plan_axis`). So every side length n in (32(k-1)+1, 32k+1] is padded by the model to
the same total length, and all crops of the fused score maps start at offsets that do not
depend on n. Padding an image with normalised zeros at the bottom/right up to the top of its
class, `bucket_length(n) = 32 * ceil((n - 1) / 32) + 1`, therefore hands the network exactly
the tensor it would have built itself: the outputs, cropped back, are identical (checked
against per-image `model.apply` in tests/test_predict.py), and images of different sizes in
one bucket share one compiled program. `bucket_length` derives the 32 from the layer
geometry and verifies the padding plan, so a change of backbone cannot silently break this.

Batches are padded with blank images up to a power of two (at most `batch_size`), so a call
compiles at most once per (bucket, batch size) pair; `num_traces` counts the compilations.

Images cross to the device as uint8; normalisation happens there through a 256-entry table
computed by `fcn_jax.data.normalize` (the only place it is defined), so it equals the host
function bit for bit. `predict` takes the arg-max on the device and brings back int32 ids
only; `predict_proba` and flip TTA bring back probabilities (C floats per pixel) and are
host-bound on a fast GPU.

Large images: tiles
-------------------
With `tile=(H, W)`, an image larger than the tile runs as windows of one size (at most H x W,
clipped to the image), overlapping by at least `overlap` pixels and spread evenly
(`tile_starts`), in batches of `batch_size`: one compiled program, whose device memory
(`memory_stats`, from XLA's memory analysis) depends on the tile and the batch size only.
Each window runs exactly as the model would run on that crop; the window logits are averaged
with weights that ramp linearly over the overlap at edges inside the image (`tile_weights`:
a window's edge pixels saw zero padding instead of their surroundings) and accumulate on the
host. An image no larger than the tile is not padded up to it: it runs whole, so where one
tile covers the image the result is the plain one, bit for bit.

Test-time augmentation: scales and flips
----------------------------------------
`scales=(0.75, 1, 1.25)` runs the image resized by each factor (uint8, PIL bilinear), and
`flip=True` also each pass's mirror image; every pass's probabilities (tiled where the pass
is larger than the tile) are mirrored back, resized to the original size (PIL bilinear, per
class) and averaged with equal weights. Scale 1 without flip is plain inference, unchanged.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import geometry

# -- buckets --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _axis_key(n: int, variant: str, backbone: str) -> tuple:
    """Everything of the model's padding plan that the computation depends on, except n."""
    p = geometry.plan_axis(n, variant, backbone)
    return (n + p.pad[0] + p.pad[1], p.pad[0], tuple(sorted(p.skip_starts.items())), p.out_start)


@functools.lru_cache(maxsize=4096)
def bucket_length(n: int, variant: str = "8s", backbone: str = "alexnet") -> int:
    """The largest side length >= n that the model pads to the same tensor as n (see module doc)."""
    if n < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {n}")
    stride = int(geometry.trace(1 << 12, "fc7", backbone=backbone)["fc7"].stride)
    candidate = 1 + stride * math.ceil((n - 1) / stride)
    key = _axis_key(n, variant, backbone)
    while candidate > n and _axis_key(candidate, variant, backbone) != key:  # never for AlexNet
        candidate -= 1
    return candidate


def bucket_shape(height: int, width: int, variant: str = "8s", backbone: str = "alexnet") -> tuple[int, int]:
    return bucket_length(height, variant, backbone), bucket_length(width, variant, backbone)


# -- input checks ---------------------------------------------------------------------------


def as_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 from an array (H, W), (H, W, 1|3|4) uint8 or a PIL image.

    Grayscale is repeated to RGB; an alpha channel is dropped. Other dtypes are refused
    (a float image could be in [0, 1] or [0, 255]: convert it yourself).
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: image has zero size {a.shape[:2]}")
    return np.ascontiguousarray(a[..., :3])


def _pow2_at_most(n: int, cap: int) -> int:
    return min(1 << (n - 1).bit_length(), cap)


# -- tiles and test-time scales -------------------------------------------------------------


def tile_starts(n: int, t: int, overlap: int) -> list[int]:
    """Window starts along one axis of length n for windows of t <= n pixels overlapping by at
    least `overlap`: as few windows as cover the axis, spread evenly (the overlaps differ by at
    most one pixel, rather than a thin last one), the first at 0 and the last at n - t."""
    if n <= t:
        return [0]
    k = math.ceil((n - overlap) / (t - overlap))
    return [(i * (n - t)) // (k - 1) for i in range(k)]


def tile_weights(start: int, t: int, n: int, overlap: int) -> np.ndarray:
    """(t,) float32 weights of a window's pixels along one axis: 1, except a linear ramp
    1/(r+1), 2/(r+1), ..., 1 over the first and last r = overlap pixels of an edge that lies
    inside the image. A window's edge pixels saw the model's zero padding instead of the
    image around them, so they count least; where two windows overlap by exactly r pixels
    the ramps cross-fade (their weights sum to 1). Image borders get no ramp: no other window
    has a better view there."""
    w = np.ones(t, np.float32)
    if overlap > 0:
        ramp = np.arange(1, overlap + 1, dtype=np.float32) / np.float32(overlap + 1)
        r = min(overlap, t)
        if start > 0:
            w[:r] = np.minimum(w[:r], ramp[:r])
        if start + t < n:
            w[t - r :] = np.minimum(w[t - r :], ramp[:r][::-1])
    return w


def parse_tile(text: str | None) -> tuple[int, int] | None:
    """'H,W' (or 'HxW', or one number for a square) -> (H, W); None or '' -> None."""
    if not text:
        return None
    parts = [p for p in re.split(r"[,xX]", text.strip()) if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"tile must be H,W in pixels, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"tile must be H,W with both >= 1, got {text!r}")
    return values[0], values[1]


def parse_scales(text: str | None) -> tuple[float, ...]:
    """'0.75,1,1.25' -> (0.75, 1.0, 1.25); None or '' -> (1.0,)."""
    if not text:
        return (1.0,)
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"scales must be comma-separated numbers, got {text!r}") from None
    return check_scales(values)


def check_scales(scales) -> tuple[float, ...]:
    values = tuple(float(s) for s in scales)
    if not values or any(not (0.0 < s <= 16.0) or math.isnan(s) for s in values):
        raise ValueError(f"scales must be numbers in (0, 16], got {scales}")
    if len(set(values)) != len(values):
        raise ValueError(f"scales repeat a value: {scales}")
    return values


def check_tile(tile, overlap: int) -> tuple[tuple[int, int] | None, int]:
    overlap = int(overlap)
    if tile is None:
        return None, overlap
    th, tw = (int(v) for v in tile)
    if th < 1 or tw < 1:
        raise ValueError(f"tile must be (H, W) with both >= 1, got {tile}")
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"overlap must be in 0..{min(th, tw) - 1} for tile {th}x{tw}, got {overlap}")
    return (th, tw), overlap


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (H, W, 3) scaled by `scale` (PIL bilinear; sides rounded, at least 1 pixel)."""
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (h, w, C) -> (height, width, C), each channel resized by PIL's bilinear filter."""
    from PIL import Image

    if maps.shape[:2] == (height, width):
        return maps
    out = np.empty((height, width, maps.shape[-1]), np.float32)
    for c in range(maps.shape[-1]):
        im = Image.fromarray(np.ascontiguousarray(maps[..., c], np.float32), mode="F")
        out[..., c] = np.asarray(im.resize((width, height), Image.BILINEAR))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(-1, keepdims=True)
    return z


class _Unset:
    def __repr__(self) -> str:
        return "the segmenter's setting"


_UNSET: Any = _Unset()


# -- the segmenter --------------------------------------------------------------------------


class Segmenter:
    """A trained FCN for inference on uint8 RGB images of any size (see the module doc).

    model, params: an `fcn_jax.models.FCN` and its parameters; meta: the dataset's
    `DatasetMeta` (class names, palette), optional. batch_size: images (or tiles) per device
    call. Defaults of every prediction, each overridable per call:
    flip: also run the mirror image; scales: also run the image resized by these factors
    (test-time augmentation: probabilities averaged at the original size);
    tile=(H, W), overlap: sliding-window inference in tiles of at most H x W overlapping by
    `overlap` pixels, for images larger than the tile (device memory bounded by the tile).
    """

    def __init__(
        self,
        model,
        params,
        meta=None,
        *,
        batch_size: int = 4,
        flip: bool = False,
        scales=(1.0,),
        tile: tuple[int, int] | None = None,
        overlap: int = 64,
        device=None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.meta = model, meta
        self.batch_size, self.flip = int(batch_size), bool(flip)
        self.scales = check_scales(scales)
        self.tile, self.overlap = check_tile(tile, overlap)
        self.device = device or jax.devices()[0]
        self.set_params(params)
        self.num_traces = 0  # compilations of the forward pass (one per bucket, batch size, output)
        self.num_tiles = 0  # windows run by tiled inference, all calls together
        from fcn_jax.export import normalization_table

        self._table = normalization_table()  # data.normalize of every uint8 value
        self._forward = jax.jit(self._forward_fn, static_argnames="output")
        self._compiled: dict[tuple, Any] = {}  # (batch shape, output) -> XLA executable
        self._ran: set[tuple] = set()  # the keys of _compiled that have run

    def set_params(self, params) -> None:
        """New weights for the same model (e.g. at each evaluation of a run): no recompilation."""
        self.params = jax.device_put(params, self.device)

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> Segmenter:
        """From a run directory (its best checkpoint, else its latest), a step directory, or a
        pretrained folder (model.safetensors + config.json); the model is the one the run or
        folder recorded (`fcn_jax.pretrained.load_model`)."""
        from fcn_jax import pretrained

        trained = pretrained.load_model(Path(path))
        return cls(trained.model, trained.params, trained.meta, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_repo_id, *, revision: str | None = None, **kwargs) -> Segmenter:
        """From a pretrained folder (`fcn-jax export --format safetensors`) or a Hugging Face
        Hub repo id holding one ("user/fcn8s-camvid", fetched into the Hub cache); the weights'
        sha256 is checked against config.json. ValueError with one line if it cannot be loaded
        (e.g. no network for a repo id not in the cache)."""
        from fcn_jax import pretrained

        loaded = pretrained.load_pretrained(path_or_repo_id, revision)
        return cls(loaded.model, loaded.params, loaded.meta, **kwargs)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def class_names(self) -> list[str]:
        if self.meta is not None:
            return list(self.meta.class_names)
        return [str(i) for i in range(self.num_classes)]

    def _forward_fn(self, params, images, sizes, output: str):
        """uint8 (B, Hb, Wb, 3) bucket batch, true (h, w) per image -> labels, probabilities
        or logits.

        Normalises on the device (a table lookup equal to `data.normalize`, so uint8 crosses
        to the device, not float32) and sets everything outside each image to 0, the value
        the model pads with. `output="labels"` takes the arg-max on the device too.
        """
        self.num_traces += 1  # runs once per trace, i.e. per compiled shape
        x = jnp.asarray(self._table)[images.astype(jnp.int32), jnp.arange(3)]
        hb, wb = images.shape[1:3]
        inside = (jnp.arange(hb)[None, :, None] < sizes[:, 0, None, None]) & (
            jnp.arange(wb)[None, None, :] < sizes[:, 1, None, None]
        )
        x = jnp.where(inside[..., None], x, 0.0)
        logits = self.model.apply({"params": params}, x, train=False).astype(jnp.float32)
        if output == "labels":
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if output == "logits":
            return logits
        return jax.nn.softmax(logits, axis=-1)

    def bucket(self, height: int, width: int) -> tuple[int, int]:
        return bucket_shape(height, width, self.model.variant, self.model.backbone)

    # -- public API -------------------------------------------------------------------

    def predict_proba(self, images, *, flip=_UNSET, scales=_UNSET, tile=_UNSET, overlap=_UNSET):
        """(H, W, 3) uint8 -> (H, W, C) float32 probabilities; a list -> a list;
        an (N, H, W, 3) array -> (N, H, W, C)."""
        single, batch = self._unpack(images)
        return self._pack(self._infer(batch, "probs", flip, scales, tile, overlap), single, images)

    def predict(self, images, *, flip=_UNSET, scales=_UNSET, tile=_UNSET, overlap=_UNSET):
        """(H, W, 3) uint8 -> (H, W) int32 class ids; a list -> a list;
        an (N, H, W, 3) array -> (N, H, W)."""
        single, batch = self._unpack(images)
        return self._pack(self._infer(batch, "labels", flip, scales, tile, overlap), single, images)

    def predict_logits(self, images, *, tile=_UNSET, overlap=_UNSET):
        """(H, W, 3) uint8 -> (H, W, C) float32 logits (tiles' logits averaged, no test-time
        augmentation: averaging logits over scales is not what the scales average)."""
        single, batch = self._unpack(images)
        return self._pack(self._infer(batch, "logits", False, (1.0,), tile, overlap), single, images)

    def memory_stats(self) -> dict:
        """Device memory of the compiled programs that ran, by XLA's `memory_analysis()`.

        {"programs": [{"batch_shape", "output", "argument_bytes", "output_bytes",
        "temp_bytes", "alias_bytes", "code_bytes", "total_bytes"}, ...], "peak_program_bytes":
        the largest total, "device_peak_bytes": the device's own peak counter where it keeps one
        (`Device.memory_stats()`; None on CPU)}. A program's total is what it needs while it
        runs: its arguments (parameters and the uint8 batch), its output, its scratch space and
        its code, less what it aliases. Between calls only the parameters stay on the device,
        so on one device the largest total bounds the device memory of all inference so far.
        """
        programs = []
        for key in sorted(self._ran, key=str):
            shape, output = key
            m = self._compiled[key].memory_analysis()
            entry = {
                "batch_shape": list(shape),
                "output": output,
                "argument_bytes": int(m.argument_size_in_bytes),
                "output_bytes": int(m.output_size_in_bytes),
                "temp_bytes": int(m.temp_size_in_bytes),
                "alias_bytes": int(m.alias_size_in_bytes),
                "code_bytes": int(m.generated_code_size_in_bytes),
            }
            entry["total_bytes"] = (
                entry["argument_bytes"]
                + entry["output_bytes"]
                + entry["temp_bytes"]
                + entry["code_bytes"]
                - entry["alias_bytes"]
            )
            programs.append(entry)
        stats = self.device.memory_stats() or {}
        return {
            "programs": programs,
            "peak_program_bytes": max((p["total_bytes"] for p in programs), default=0),
            "device_peak_bytes": stats.get("peak_bytes_in_use"),
        }

    # -- internals ----------------------------------------------------------------------

    @staticmethod
    def _unpack(images) -> tuple[bool, list[np.ndarray]]:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return False, [as_rgb_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
        if isinstance(images, (list, tuple)):
            return False, [as_rgb_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
        return True, [as_rgb_uint8(images)]

    @staticmethod
    def _pack(out: list[np.ndarray], single: bool, original):
        if single:
            return out[0]
        if isinstance(original, np.ndarray):
            return np.stack(out)
        return out

    def _call(self, x: np.ndarray, sizes: np.ndarray, output: str) -> np.ndarray:
        """One device call of the forward pass on a bucket batch; compiled ahead of time once
        per (batch shape, output), so that its memory analysis can be read (`memory_stats`)."""
        xd, sd = jax.device_put(x, self.device), jax.device_put(sizes, self.device)
        key = (x.shape, output)
        program = self._compiled.get(key)
        if program is None:
            program = self._compiled[key] = self._forward.lower(self.params, xd, sd, output=output).compile()
        self._ran.add(key)
        return np.asarray(program(self.params, xd, sd))

    def _stream(self, items: Sequence[tuple[Any, np.ndarray]], output: str):
        """(key, uint8 image) pairs -> (key, output cropped to the image), in bucket batches.

        Images are grouped by bucket, batched up to `batch_size` (padded with blank images to a
        power of two) and yielded as soon as their batch returns, in the given order within a
        bucket; so a caller can fold tiles into an accumulator without holding all outputs.
        """
        groups: dict[tuple[int, int], list] = {}
        for item in items:
            groups.setdefault(self.bucket(*item[1].shape[:2]), []).append(item)
        for (bh, bw), group in groups.items():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                n = _pow2_at_most(len(chunk), self.batch_size)
                x = np.zeros((n, bh, bw, 3), np.uint8)
                sizes = np.zeros((n, 2), np.int32)  # (0, 0): a blank batch-filler
                for k, (_, im) in enumerate(chunk):
                    x[k, : im.shape[0], : im.shape[1]] = im
                    sizes[k] = im.shape[:2]
                y = self._call(x, sizes, output)
                for k, (key, im) in enumerate(chunk):
                    yield key, y[k, : im.shape[0], : im.shape[1]]

    def _settings(self, flip, scales, tile, overlap):
        flip = self.flip if flip is _UNSET else bool(flip)
        scales = self.scales if scales is _UNSET else check_scales(scales)
        tile, overlap = check_tile(
            self.tile if tile is _UNSET else tile, self.overlap if overlap is _UNSET else overlap
        )
        return flip, scales, tile, overlap

    def _infer(self, images: list[np.ndarray], want: str, flip, scales, tile, overlap) -> list[np.ndarray]:
        """`want` ("labels", "probs" or "logits") of every image under the given settings.

        Plain inference (scale 1, no flip) of images no larger than the tile batches images
        together and computes exactly what the model computes at each image's size. Anything
        else runs one image at a time, so that host memory holds one image's accumulators.
        """
        flip, scales, tile, overlap = self._settings(flip, scales, tile, overlap)
        plain = not flip and scales == (1.0,)
        out: list[np.ndarray | None] = [None] * len(images)
        whole = [(i, im) for i, im in enumerate(images) if plain and not _needs_tiles(im, tile)]
        for i, y in self._stream(whole, want):
            out[i] = np.ascontiguousarray(y)
        for i, im in enumerate(images):
            if out[i] is None:
                out[i] = self._augmented(im, want, flip, scales, tile, overlap)
        return out

    def _augmented(self, image, want: str, flip: bool, scales, tile, overlap: int) -> np.ndarray:
        """One image: for every (scale, mirror) pass, logits (tiled where the pass is larger
        than the tile) -> probabilities, mirrored back and resized to the image's size with
        PIL's bilinear filter; their mean. One pass (tiling only) keeps its logits."""
        h, w = image.shape[:2]
        passes = []
        for s in scales:
            src = resize_image(image, s)
            passes += [((s, False), src)] + ([((s, True), src[:, ::-1])] if flip else [])
        if len(passes) == 1 and passes[0][1] is image:  # tiling alone: the averaged logits
            _, logits = next(iter(self._logits(passes, tile, overlap)))
            if want == "labels":
                return logits.argmax(-1).astype(np.int32)
            return logits if want == "logits" else softmax(logits)
        total = None
        for (_, mirrored), logits in self._logits(passes, tile, overlap):
            p = softmax(logits)
            p = resize_maps(p[:, ::-1] if mirrored else p, h, w)
            total = p if total is None else total + p
        total /= np.float32(len(passes))
        return total.argmax(-1).astype(np.int32) if want == "labels" else total

    def _logits(self, passes, tile, overlap: int):
        """(key, uint8 image) -> (key, float32 logits (h, w, C)) of each, as each completes.

        An image larger than the tile runs as overlapping windows (`tile_starts`) of one size,
        all in one bucket; their logits are weighted (`tile_weights`) and averaged. The
        weights are separable, so their sum is the outer product of two vectors."""
        items, plans = [], {}
        for key, im in passes:
            if not _needs_tiles(im, tile):
                items.append(((key, None), im))
                continue
            h, w = im.shape[:2]
            th, tw = min(tile[0], h), min(tile[1], w)
            ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
            wy = [tile_weights(y, th, h, overlap) for y in ys]
            wx = [tile_weights(x, tw, w, overlap) for x in xs]
            sum_y, sum_x = np.zeros(h, np.float32), np.zeros(w, np.float32)
            for y, v in zip(ys, wy):
                sum_y[y : y + th] += v
            for x, v in zip(xs, wx):
                sum_x[x : x + tw] += v
            plans[key] = {"left": len(ys) * len(xs), "acc": None, "sum": (sum_y, sum_x)}
            for a, y in enumerate(ys):
                for b, x in enumerate(xs):
                    items.append(((key, (y, x, wy[a], wx[b])), im[y : y + th, x : x + tw]))
        for (key, window), y in self._stream(items, "logits"):
            if window is None:
                yield key, np.array(y, np.float32)
                continue
            self.num_tiles += 1
            plan = plans[key]
            if plan["acc"] is None:
                h, w = len(plan["sum"][0]), len(plan["sum"][1])
                plan["acc"] = np.zeros((h, w, y.shape[-1]), np.float32)
            y0, x0, wy, wx = window
            weight = (wy[:, None] * wx[None, :])[..., None]
            plan["acc"][y0 : y0 + y.shape[0], x0 : x0 + y.shape[1]] += y * weight
            plan["left"] -= 1
            if plan["left"] == 0:
                acc = plans.pop(key)["acc"]
                sum_y, sum_x = plan["sum"]
                acc /= (sum_y[:, None] * sum_x[None, :])[..., None]
                yield key, acc


def _needs_tiles(image: np.ndarray, tile) -> bool:
    return tile is not None and (image.shape[0] > tile[0] or image.shape[1] > tile[1])
