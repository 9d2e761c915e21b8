"""Per-example transforms: normalisation (the only place it lives) and train augmentation.

Everything here is numpy/PIL and runs in the input pipeline's threads, not on the device.
Labels are only ever resized nearest-neighbour and padded with the ignore value.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# torchvision's ImageNet statistics, on RGB in [0, 1]: what the converted AlexNet expects.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Image padding value: the mean colour, so padded pixels normalise to ~0.
PAD_RGB = tuple(int(round(v * 255)) for v in IMAGENET_MEAN)

_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 `(x / 255 - mean) / std`; works for (H,W,3) and (N,H,W,3)."""
    images = np.asarray(images)
    if images.shape[-1:] != (3,):
        raise ValueError(f"normalize expects RGB images (..., 3), got shape {images.shape}")
    out = images.astype(np.float32)
    out *= _SCALE
    out += _OFFSET
    return out


def normalize_jax(images):
    """`normalize` for jax arrays, to run inside a jitted step on uint8 batches.

    With `TrainLoader(normalize=False)` the host ships uint8 (4x fewer bytes) and skips the
    float conversion, which matters when a GPU step outruns the CPU pipeline.
    """
    import jax.numpy as jnp

    return images.astype(jnp.float32) * jnp.asarray(_SCALE) + jnp.asarray(_OFFSET)


def denormalize(images: np.ndarray) -> np.ndarray:
    """Inverse of `normalize`, back to uint8 (for display)."""
    x = np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def nearest_rows(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output pixel of a nearest-neighbour resize: the pixel whose
    span holds the output pixel's centre, floor((o + 0.5) * in / out), computed exactly in
    integers (PIL computes it in floating point, which can land one pixel off). The
    device-resident path (`data.device.nearest_index`) uses the same formula."""
    o = np.arange(out_size, dtype=np.int64)
    return ((2 * o + 1) * in_size) // (2 * out_size)


def resize_pair(image: np.ndarray, label: np.ndarray, size_hw: tuple[int, int]):
    """Resize image bilinear (PIL's, antialiased when shrinking) and label nearest-neighbour to (h, w)."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image, label
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    lab = label[nearest_rows(label.shape[0], h)[:, None], nearest_rows(label.shape[1], w)[None, :]]
    return img, lab


def pad_to(image: np.ndarray, label: np.ndarray, min_hw: tuple[int, int], ignore_index: int):
    """Pad bottom/right up to at least `min_hw`: image with the mean colour, label with ignore."""
    h, w = label.shape
    ph, pw = max(min_hw[0] - h, 0), max(min_hw[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    img = np.empty((h + ph, w + pw, 3), np.uint8)
    img[...] = PAD_RGB
    img[:h, :w] = image
    lab = np.full((h + ph, w + pw), ignore_index, np.uint8)
    lab[:h, :w] = label
    return img, lab


def draw_augmentation(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    crop_size: tuple[int, int] | None,
    scale_range: tuple[float, float] | None,
    flip: bool,
) -> tuple[int, int, int, int, bool]:
    """(scaled height, scaled width, crop top, crop left, flip) for an image of `shape`,
    drawn from `rng` in a fixed order (scale, crop y, crop x, flip), so an example's
    augmentation depends only on how `rng` was seeded."""
    h, w = shape
    s = rng.uniform(*scale_range) if (crop_size is not None and scale_range) else 1.0
    top = left = 0
    if crop_size is not None:
        if s != 1.0:
            h, w = max(1, round(h * s)), max(1, round(w * s))
        ch, cw = crop_size
        top = int(rng.integers(0, max(h, ch) - ch + 1))
        left = int(rng.integers(0, max(w, cw) - cw + 1))
    flipped = bool(flip and rng.random() < 0.5)
    return h, w, top, left, flipped


def apply_augmentation(
    image: np.ndarray,
    label: np.ndarray,
    draw: tuple[int, int, int, int, bool],
    *,
    crop_size: tuple[int, int] | None,
    ignore_index: int,
):
    """Resize to the drawn size, pad to `crop_size` (mean colour / ignore value), crop at
    the drawn corner, flip if drawn. uint8 in, uint8 out."""
    h, w, top, left, flipped = draw
    if crop_size is not None:
        image, label = resize_pair(image, label, (h, w))
        image, label = pad_to(image, label, crop_size, ignore_index)
        ch, cw = crop_size
        image, label = image[top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
    if flipped:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: tuple[int, int] | None,
    scale_range: tuple[float, float] | None,
    flip: bool,
    ignore_index: int,
):
    """Random scale, random crop to `crop_size` (padding as needed), horizontal flip."""
    draw = draw_augmentation(label.shape, rng, crop_size=crop_size, scale_range=scale_range, flip=flip)
    return apply_augmentation(image, label, draw, crop_size=crop_size, ignore_index=ignore_index)
