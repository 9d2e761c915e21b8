"""Pictures of segmentations: colour masks, overlays, image | truth | prediction grids, legends.

Everything takes and returns uint8 numpy arrays (H, W, 3); nothing here touches JAX.
Ignored pixels (the dataset's void value, or any value outside 0..C-1) are drawn in
`ignore_color` (black by default) in masks and left as the plain image in overlays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 4  # pixels between grid cells
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def colorize(
    labels, palette, ignore_index: int | None = None, ignore_color: Sequence[int] = (0, 0, 0)
) -> np.ndarray:
    """Class ids (H, W) -> uint8 RGB (H, W, 3) in `palette` (C, 3)."""
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    labels = np.asarray(labels).astype(np.int64)
    lut = np.tile(np.asarray(ignore_color, np.uint8), (256, 1))
    lut[: min(len(palette), 256)] = palette[:256]
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = ignore_color
    inside = (labels >= 0) & (labels < 256)
    out = lut[np.where(inside, labels, 0)]
    out[~inside] = ignore_color
    return out


def valid_mask(labels, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid &= labels != ignore_index
    return valid


def overlay(image, labels, palette, alpha: float = 0.5, ignore_index: int | None = None) -> np.ndarray:
    """Alpha-blend the colour mask onto the image: (1 - alpha) * image + alpha * colour.
    Ignored pixels keep the image unchanged."""
    image = np.asarray(image, np.uint8)
    if image.shape[:2] != np.shape(labels):
        raise ValueError(f"image {image.shape[:2]} and labels {np.shape(labels)} differ in size")
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    color = colorize(labels, palette, ignore_index).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * color
    out = np.where(valid_mask(labels, len(palette), ignore_index)[..., None], blend, image)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _text_image(text: str, width: int, height: int, size: int = 14) -> np.ndarray:
    """Black text on white, vertically centred on its ink box."""
    font = _font(size)
    im = Image.new("RGB", (max(width, 1), height), BACKGROUND)
    draw = ImageDraw.Draw(im)
    top, bottom = draw.textbbox((0, 0), text or " ", font=font)[1::2]
    draw.text((2, (height - (bottom + top)) // 2), text, fill=TEXT, font=font)
    return np.asarray(im)


def _text_width(text: str, size: int = 14) -> int:
    font = _font(size)
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 6


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), BACKGROUND, np.uint8)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def tile(
    rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None, gap: int = GAP
) -> np.ndarray:
    """Cells (H, W, 3) uint8 in rows and columns, with gaps and optional column titles."""
    if not rows:
        raise ValueError("nothing to draw: no rows")
    ncol = max(len(r) for r in rows)
    col_w = [max(r[c].shape[1] for r in rows if c < len(r)) for c in range(ncol)]
    row_h = [max(cell.shape[0] for cell in r) for r in rows]
    lines = []
    if titles:
        head = 20
        cells = [_text_image(t, w, head) for t, w in zip(titles, col_w)]
        lines.append(cells)
        row_h = [head] + row_h
    lines += [list(r) for r in rows]
    width = sum(col_w) + gap * (ncol + 1)
    height = sum(row_h) + gap * (len(lines) + 1)
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    y = gap
    for h, line in zip(row_h, lines):
        x = gap
        for c in range(ncol):
            if c < len(line):
                cell = _pad_to(np.asarray(line[c], np.uint8), h, col_w[c])
                canvas[y : y + h, x : x + col_w[c]] = cell
            x += col_w[c] + gap
        y += h + gap
    return canvas


def prediction_grid(images_uint8, labels, preds, palette, ignore_index: int | None = None) -> np.ndarray:
    """One row per example: image | ground truth | prediction, with column titles.

    images_uint8: (N, H, W, 3) uint8 (or a list of differently sized images); labels and
    preds: (N, H, W) class ids (labels may hold `ignore_index`, drawn black). Returns one
    uint8 RGB image, e.g. for `PIL.Image.fromarray(grid).save(...)`.
    """
    if not (len(images_uint8) == len(labels) == len(preds)):
        raise ValueError(
            f"prediction_grid: {len(images_uint8)} images, {len(labels)} labels, "
            f"{len(preds)} predictions; they must match"
        )
    rows = []
    for i, (im, lab, pred) in enumerate(zip(images_uint8, labels, preds)):
        im = np.asarray(im)
        if im.dtype != np.uint8:
            raise ValueError(
                f"prediction_grid: images must be uint8, got {im.dtype} "
                "(use fcn_jax.data.denormalize on normalised images)"
            )
        if im.shape[:2] != np.shape(lab) or im.shape[:2] != np.shape(pred):
            raise ValueError(
                f"prediction_grid: example {i}: image {im.shape[:2]}, label "
                f"{np.shape(lab)} and prediction {np.shape(pred)} differ in size"
            )
        rows.append([im, colorize(lab, palette, ignore_index), colorize(pred, palette, ignore_index)])
    return tile(rows, ["image", "ground truth", "prediction"])


ERROR_COLOR = (255, 0, 0)  # a wrong pixel in an error map
VOID_COLOR = (128, 128, 128)  # an unlabelled (ignored) pixel in an error map
ERROR_GRID_TITLES = ("image", "ground truth", "prediction", "errors: wrong red, void grey")


def error_map(image, labels, preds, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Where a prediction is wrong: red for a wrong pixel, grey for an unlabelled one (void or
    any value outside 0..num_classes-1: not scored), and the image darkened to a third where
    the prediction is right, so the failures stand out against the scene they are in."""
    image = np.asarray(image, np.uint8)
    labels, preds = np.asarray(labels), np.asarray(preds)
    if not image.shape[:2] == labels.shape == preds.shape:
        raise ValueError(
            f"error_map: image {image.shape[:2]}, labels {labels.shape} and predictions "
            f"{preds.shape} differ in size"
        )
    valid = valid_mask(labels, num_classes, ignore_index)
    out = (image.astype(np.uint16) // 3).astype(np.uint8)
    out[valid & (preds != labels)] = ERROR_COLOR
    out[~valid] = VOID_COLOR
    return out


def legend(class_names: Sequence[str], palette, swatch: int = 16, columns: int = 1) -> np.ndarray:
    """Colour swatches with class names, as a uint8 image (`columns` columns)."""
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    row_h = swatch + 6
    cells = []
    for name, color in zip(class_names, palette):
        sw = np.full((row_h, swatch, 3), BACKGROUND, np.uint8)
        top = (row_h - swatch) // 2
        sw[top : top + swatch] = color
        sw[[top, top + swatch - 1], :] = 0
        sw[top : top + swatch, [0, -1]] = 0
        text = _text_image(str(name), _text_width(str(name)), row_h)
        cells.append(np.concatenate([sw, np.full((row_h, 4, 3), BACKGROUND, np.uint8), text], axis=1))
    per_col = -(-len(cells) // columns)
    grid = [cells[i::per_col] for i in range(per_col)]
    return tile(grid, gap=2)
