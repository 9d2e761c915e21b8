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


def resize_pair(image: np.ndarray, label: np.ndarray, size_hw: tuple[int, int]):
    """Resize image bilinear and label nearest-neighbour to (h, w)."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image, label
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
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
    """Random scale, random crop to `crop_size` (padding as needed), horizontal flip.

    Draws from `rng` in a fixed order (scale, crop y, crop x, flip) so an example's
    augmentation depends only on how `rng` was seeded. uint8 in, uint8 out.
    """
    s = rng.uniform(*scale_range) if (crop_size is not None and scale_range) else 1.0
    if crop_size is not None:
        h, w = label.shape
        if s != 1.0:
            image, label = resize_pair(image, label, (max(1, round(h * s)), max(1, round(w * s))))
        image, label = pad_to(image, label, crop_size, ignore_index)
        ch, cw = crop_size
        y = int(rng.integers(0, label.shape[0] - ch + 1))
        x = int(rng.integers(0, label.shape[1] - cw + 1))
        image, label = image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label
