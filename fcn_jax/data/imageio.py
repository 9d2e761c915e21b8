"""Reading and checking image/label files at prepare time.

Policy for image modes (documented in docs/data.md):
- RGB: used as is (PNG bytes are stored unchanged, other formats such as JPEG too).
- Grayscale (L, 1, LA with opaque alpha) and palette (P) images: converted to RGB.
- RGBA: converted to RGB when every alpha value is 255; refused otherwise, because the
  colour of transparent pixels is undefined.
- CMYK and YCbCr (some JPEGs): converted to RGB.
- 16-bit/float images (I;16, I, F): refused (no safe way to map them to 8-bit RGB).
Labels must be single-channel class indices: L, P (palette *indices* are used, not the
colours), 1, or 16-bit/32-bit integer PNGs whose values fit in 0..255. Colour (RGB) masks are
refused with a pointer to the docs. Label values must be in 0..num_classes-1 or the ignore value.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fcn_jax.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".pgm")


def _open(source, what: str, name: str) -> Image.Image:
    """Open and fully decode, so truncated/corrupt files fail here, naming the file."""
    try:
        data = source.read_bytes() if isinstance(source, Path) else source
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except FileNotFoundError:
        raise DataError(f"{name}: {what} file does not exist", name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{name}: cannot decode {what} ({type(e).__name__}: {e}); "
            "the file is corrupt, truncated or not an image",
            name,
        ) from None


def load_image(source, name: str) -> tuple[Image.Image, bool]:
    """-> (RGB PIL image, converted) where converted says the stored bytes must be re-encoded."""
    im = _open(source, "image", name)
    mode = im.mode
    if mode == "RGB":
        return im, False
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            raise DataError(
                f"{name}: image has transparent pixels (mode {mode}, min alpha {int(alpha.min())}); "
                "their colour is undefined, so it is refused. Flatten it onto a background "
                "first, or save it without alpha",
                name,
            )
        return im.convert("RGBA").convert("RGB"), True
    if mode in ("L", "1", "P", "CMYK", "YCbCr"):
        return im.convert("RGB"), True
    raise DataError(
        f"{name}: unsupported image mode {mode!r} (16-bit or float images are refused; save as 8-bit RGB)",
        name,
    )


def load_label(source, name: str) -> tuple[np.ndarray, bool]:
    """-> (uint8 (H, W) class indices, reencode) where reencode says it is not an 8-bit L PNG."""
    im = _open(source, "label", name)
    mode = im.mode
    if mode in ("L", "P"):
        arr = np.asarray(im)  # for P, the palette indices
        return arr, not (mode == "L" and im.format == "PNG")
    if mode == "1":
        return np.asarray(im).astype(np.uint8), True
    if mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(
                f"{name}: label values up to {int(arr.max())} do not fit the 8-bit "
                "masks this project stores (at most 255 classes)",
                name,
            )
        return arr.astype(np.uint8), True
    raise DataError(
        f"{name}: label must be a single-channel image of class indices (mode L or P), got "
        f"mode {mode!r}; colour-coded masks must be converted to indices first (docs/data.md)",
        name,
    )


def encode_png(array_or_image, compress_level: int = 1) -> bytes:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def check_label_values(label: np.ndarray, num_classes: int, ignore_index: int, name: str) -> np.ndarray:
    """-> bincount over 0..255; raises naming the file if a value is neither a class nor ignore."""
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts) if v >= num_classes and v != ignore_index]
    if bad:
        shown = ", ".join(f"{v} ({counts[v]} px)" for v in bad[:8])
        raise DataError(
            f"{name}: label values outside 0..{num_classes - 1} that are not the ignore value "
            f"{ignore_index}: {shown}",
            name,
        )
    return counts
