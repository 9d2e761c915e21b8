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


def window(a: np.ndarray, top: int, left: int, size: tuple[int, int], fill) -> tuple[np.ndarray, np.ndarray]:
    """`a[top : top + h, left : left + w]` where it lies inside `a`, `fill` elsewhere (the
    corner may be negative or the window run past `a`), and where it lies inside."""
    h, w = size
    rows, cols = top + np.arange(h), left + np.arange(w)
    inside = ((rows >= 0) & (rows < a.shape[0]))[:, None] & ((cols >= 0) & (cols < a.shape[1]))[None, :]
    out = np.empty((h, w, *a.shape[2:]), a.dtype)
    out[...] = fill
    r0, r1 = max(top, 0), min(top + h, a.shape[0])
    c0, c1 = max(left, 0), min(left + w, a.shape[1])
    if r0 < r1 and c0 < c1:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = a[r0:r1, c0:c1]
    return out, inside


NO_MARGIN = ((0, 0), (0, 0))


def check_margin(margin, crop_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """`margin` as ((top, bottom), (left, right)) ints; refused when negative or without a crop."""
    (mt, mb), (ml, mr) = margin
    out = ((int(mt), int(mb)), (int(ml), int(mr)))
    if min(mt, mb, ml, mr) < 0 or (crop_size is None and out != NO_MARGIN):
        raise ValueError(f"margin must be >= 0 and needs a crop_size: {margin}, crop_size={crop_size}")
    return out


# Photometric augmentation (colour jitter), applied to the image pixels of the crop and of
# its margin (not the padding), in this order, each result clipped to [0, 255] as
# torchvision's ColorJitter does: brightness (scale), contrast (blend with the mean grey),
# saturation (blend with the grey image), hue (rotation of the chroma plane in YIQ, by a
# fraction of a full turn).
# The device path (data.device.jitter) computes the same function with jax.
_GREY = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def jitter_factors(rng: np.random.Generator, strength: tuple[float, float, float, float]):
    """(brightness, contrast, saturation, hue) factors for `strength` (b, c, s, h): the first
    three uniform in [1 - x, 1 + x], hue uniform in [-h, h] (fractions of a turn)."""
    b, c, s, h = strength
    return (
        float(rng.uniform(1 - b, 1 + b)) if b else 1.0,
        float(rng.uniform(1 - c, 1 + c)) if c else 1.0,
        float(rng.uniform(1 - s, 1 + s)) if s else 1.0,
        float(rng.uniform(-h, h)) if h else 0.0,
    )


def color_jitter(image: np.ndarray, inside: np.ndarray, factors) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8: `factors` applied where `inside` (bool (H, W)) holds."""
    b, c, s, h = factors
    if (b, c, s, h) == (1.0, 1.0, 1.0, 0.0):
        return image
    x = image.astype(np.float32)
    x = np.clip(x * np.float32(b), 0, 255)
    grey = x @ _GREY
    mean = np.float32(grey[inside].mean()) if inside.any() else np.float32(0)
    x = np.clip((x - mean) * np.float32(c) + mean, 0, 255)
    grey = (x @ _GREY)[..., None]
    x = np.clip(grey + np.float32(s) * (x - grey), 0, 255)
    if h:
        cos, sin = np.float32(np.cos(2 * np.pi * h)), np.float32(np.sin(2 * np.pi * h))
        rot = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], np.float32)
        x = np.clip(x @ (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).T, 0, 255)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.where(inside[..., None], out, image)


def draw_augmentation(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    crop_size: tuple[int, int] | None,
    scale_range: tuple[float, float] | None,
    flip: bool,
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
) -> tuple:
    """(scaled height, scaled width, crop top, crop left, flip, brightness, contrast,
    saturation, hue) for an image of `shape`, drawn from `rng` in a fixed order (scale, crop
    y, crop x, flip, then the jitter factors that are on), so an example's augmentation
    depends only on how `rng` was seeded."""
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
    return (h, w, top, left, flipped, *jitter_factors(rng, jitter))


def apply_augmentation(
    image: np.ndarray,
    label: np.ndarray,
    draw: tuple[int, int, int, int, bool],
    *,
    crop_size: tuple[int, int] | None,
    ignore_index: int,
    margin: tuple[tuple[int, int], tuple[int, int]] = NO_MARGIN,
):
    """Resize to the drawn size, crop at the drawn corner (the mean colour / ignore value
    past the image), jitter the colours of the image pixels, flip if drawn. uint8 in, uint8
    out.

    `margin` ((top, bottom), (left, right)) widens the image, not the label, by that much
    around the crop: what surrounds the crop in the scaled image, the mean colour past it
    (`data.crop_context`). A flipped crop takes its left margin from the right, so that the
    crop sits at the same place in the image after the flip."""
    h, w, top, left, flipped, *factors = draw
    inside = np.ones(label.shape, bool)
    if crop_size is not None:
        image, label = resize_pair(image, label, (h, w))
        ch, cw = crop_size
        (mt, mb), (ml, mr) = margin
        if flipped:
            ml, mr = mr, ml
        label, _ = window(label, top, left, crop_size, ignore_index)
        image, inside = window(image, top - mt, left - ml, (ch + mt + mb, cw + ml + mr), PAD_RGB)
    if factors:
        image = color_jitter(image, inside, factors)
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
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    margin: tuple[tuple[int, int], tuple[int, int]] = NO_MARGIN,
):
    """Random scale, random crop to `crop_size` (padding as needed) with `margin` of context
    around the image's crop, colour jitter, horizontal flip."""
    draw = draw_augmentation(
        label.shape, rng, crop_size=crop_size, scale_range=scale_range, flip=flip, jitter=jitter
    )
    return apply_augmentation(
        image, label, draw, crop_size=crop_size, ignore_index=ignore_index, margin=margin
    )
