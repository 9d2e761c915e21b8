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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import geometry

# -- buckets --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _axis_key(n: int, variant: str) -> tuple:
    """Everything of the model's padding plan that the computation depends on, except n."""
    p = geometry.plan_axis(n, variant)
    return (n + p.pad[0] + p.pad[1], p.pad[0], tuple(sorted(p.skip_starts.items())), p.out_start)


@functools.lru_cache(maxsize=4096)
def bucket_length(n: int, variant: str = "8s") -> int:
    """The largest side length >= n that the model pads to the same tensor as n (see module doc)."""
    if n < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {n}")
    stride = int(geometry.trace(1 << 12, "fc7")["fc7"].stride)
    candidate = 1 + stride * math.ceil((n - 1) / stride)
    key = _axis_key(n, variant)
    while candidate > n and _axis_key(candidate, variant) != key:  # never taken for AlexNet
        candidate -= 1
    return candidate


def bucket_shape(height: int, width: int, variant: str = "8s") -> tuple[int, int]:
    return bucket_length(height, variant), bucket_length(width, variant)


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


# -- the segmenter --------------------------------------------------------------------------


class Segmenter:
    """A trained FCN for inference on uint8 RGB images of any size (see the module doc).

    model, params: an `fcn_jax.models.FCN` and its parameters; meta: the dataset's
    `DatasetMeta` (class names, palette), optional. flip: average the probabilities of each
    image and its mirror image (test-time augmentation; twice the compute). batch_size:
    images per device call.
    """

    def __init__(self, model, params, meta=None, *, batch_size: int = 4, flip: bool = False, device=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.meta = model, meta
        self.batch_size, self.flip = int(batch_size), bool(flip)
        self.device = device or jax.devices()[0]
        self.set_params(params)
        self.num_traces = 0  # compilations of the forward pass (one per bucket, batch size, output)
        from fcn_jax.export import normalization_table

        self._table = normalization_table()  # data.normalize of every uint8 value
        self._forward = jax.jit(self._forward_fn, static_argnames="output")

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
        """uint8 (B, Hb, Wb, 3) bucket batch, true (h, w) per image -> labels or probabilities.

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
        return jax.nn.softmax(logits, axis=-1)

    def bucket(self, height: int, width: int) -> tuple[int, int]:
        return bucket_shape(height, width, self.model.variant)

    # -- public API -------------------------------------------------------------------

    def predict_proba(self, images, *, flip: bool | None = None):
        """(H, W, 3) uint8 -> (H, W, C) float32 probabilities; a list -> a list;
        an (N, H, W, 3) array -> (N, H, W, C)."""
        single, batch = self._unpack(images)
        out = self._run(batch, self.flip if flip is None else flip, "probs")
        return self._pack(out, single, images)

    def predict(self, images, *, flip: bool | None = None):
        """(H, W, 3) uint8 -> (H, W) int32 class ids; a list -> a list;
        an (N, H, W, 3) array -> (N, H, W)."""
        single, batch = self._unpack(images)
        flip = self.flip if flip is None else flip
        if flip:  # average probabilities on the host, then arg-max
            out = [p.argmax(-1).astype(np.int32) for p in self._run(batch, True, "probs")]
        else:
            out = self._run(batch, False, "labels")
        return self._pack(out, single, images)

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

    def _run(self, images: Sequence[np.ndarray], flip: bool, output: str) -> list[np.ndarray]:
        jobs = [(i, False, im) for i, im in enumerate(images)]
        if flip:
            jobs += [(i, True, im[:, ::-1]) for i, im in enumerate(images)]
        groups: dict[tuple[int, int], list] = {}
        for job in jobs:
            groups.setdefault(self.bucket(*job[2].shape[:2]), []).append(job)
        results: dict[tuple[int, bool], np.ndarray] = {}
        for (bh, bw), group in groups.items():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                n = _pow2_at_most(len(chunk), self.batch_size)
                x = np.zeros((n, bh, bw, 3), np.uint8)
                sizes = np.zeros((n, 2), np.int32)  # (0, 0): a blank batch-filler
                for k, (_, _, im) in enumerate(chunk):
                    x[k, : im.shape[0], : im.shape[1]] = im
                    sizes[k] = im.shape[:2]
                y = np.asarray(
                    self._forward(
                        self.params,
                        jax.device_put(x, self.device),
                        jax.device_put(sizes, self.device),
                        output=output,
                    )
                )
                for k, (i, flipped, im) in enumerate(chunk):
                    p = y[k, : im.shape[0], : im.shape[1]]
                    results[(i, flipped)] = p[:, ::-1] if flipped else p
        out = []
        for i in range(len(images)):
            p = results[(i, False)]
            if flip:
                p = 0.5 * (p + results[(i, True)])
            out.append(np.ascontiguousarray(p))
        return out
