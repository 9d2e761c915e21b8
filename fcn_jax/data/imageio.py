"""Reading and checking image/label files: the one place that decides which images are accepted.

`prepare` (via the dataset builder) and `fcn-jax predict` (via `read_rgb`) both read images
here, so a file one of them refuses the other refuses too, with the same message.

Policy for image modes (documented in docs/data.md):
- RGB: used as is (PNG bytes are stored unchanged, other formats such as JPEG too).
- Grayscale (L, 1, LA with opaque alpha) and palette (P) images: converted to RGB.
- RGBA: converted to RGB when every alpha value is 255; refused otherwise, because the
  colour of transparent pixels is undefined.
- CMYK and YCbCr (some JPEGs): converted to RGB.
- 16-bit/float images (I;16, I, F): refused (no safe way to map them to 8-bit RGB). This
  includes 16-bit-per-channel colour images (48-bit RGB PNG/TIFF, 16-bit PPM): PIL opens
  them as mode "RGB" and silently keeps only the high byte, so the stored bit depth is read
  from the decoder's raw mode before decoding (see `_wide_rawmode`).
Labels must be single-channel class indices: L, P (palette *indices* are used, not the
colours), 1, or 16-bit/32-bit integer PNGs whose values fit in 0..255. Colour (RGB) masks are
refused with a pointer to the docs, unless a colour map is given (`load_color_label`, which
reads the mask's *colours* through the same decoder and maps them with
`fcn_jax.data.color_map`). Label values must be in 0..num_classes-1 or the ignore value.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fcn_jax.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".pgm")


# Raw modes that unpack 16 or 32 bits per channel ("RGB;16B" for a 48-bit PNG, "RGB;16L" for a
# TIFF, "RGBA;16B", "LA;16B", "CMYK;16L"). The byte-order letter is part of the match so that
# BMP's packed 16-bit-per-*pixel* modes ("BGR;15", "BGR;16"), which hold < 8 bits per channel,
# are not caught.
_WIDE_RAWMODE = re.compile(r";(16|32)[BLN]")


def _wide_rawmode(im: Image.Image) -> str | None:
    """The raw mode of a >8-bit-per-channel image, read before decoding (load() clears `tile`)."""
    for codec, _, _, args in im.tile:
        rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
        if _WIDE_RAWMODE.search(rawmode):
            return rawmode
        # PPM with a maximum value above 255 (16-bit samples): PIL scales it to 8 bits.
        if codec == "ppm" and isinstance(args, tuple) and len(args) > 1 and int(args[1]) > 255:
            return f"{rawmode} with maximum value {int(args[1])}"
    return None


def _open(source, what: str, name: str) -> tuple[Image.Image, str | None]:
    """Open and fully decode, so truncated/corrupt files fail here, naming the file.

    Returns the image and its `_wide_rawmode`, which can only be read before decoding.
    """
    try:
        data = source.read_bytes() if isinstance(source, Path) else source
    except FileNotFoundError:
        raise DataError(f"{name}: {what} file does not exist", name) from None
    except OSError as e:
        raise DataError(f"{name}: cannot read {what} file ({e.strerror or e})", name) from None
    if not data:
        raise DataError(f"{name}: {what} file is empty (0 bytes)", name)
    try:
        im = Image.open(io.BytesIO(data))
        wide = _wide_rawmode(im)
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{name}: cannot decode {what} ({type(e).__name__}: {e}); "
            "the file is corrupt, truncated or not an image",
            name,
        ) from None
    if im.width == 0 or im.height == 0:
        raise DataError(f"{name}: {what} has zero size ({im.width}x{im.height})", name)
    return im, wide


def load_image(source, name: str, exif_transpose: bool = False) -> tuple[Image.Image, bool]:
    """-> (RGB PIL image, converted) where converted says the stored bytes must be re-encoded.

    `exif_transpose` applies the EXIF orientation (what a photo viewer shows); `predict` wants
    that. Prepare does not: its labels are drawn on the pixels as stored, and the size check
    against the label compares stored sizes.
    """
    im, wide = _open(source, "image", name)
    mode = im.mode
    if wide is not None:
        raise DataError(
            f"{name}: image has more than 8 bits per channel (mode {mode}, stored as {wide}); "
            "reading it as 8-bit would silently drop the low bits, so it is refused. "
            "Convert it to 8-bit RGB first",
            name,
        )
    converted = False
    if exif_transpose:
        from PIL import ImageOps

        orientation = im.getexif().get(0x0112, 1)  # the EXIF Orientation tag
        if orientation not in (None, 1):
            im, converted = ImageOps.exif_transpose(im), True
    if mode == "RGB":
        return im, converted
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
    im, _ = _open(source, "label", name)  # 16-bit grey labels are allowed: values are checked
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


def load_color_label(source, name: str, color_map, unknown: str = "error") -> tuple[np.ndarray, dict]:
    """A colour-coded mask -> (uint8 (H, W) class ids, unknown-colour report), by `color_map`
    (a `fcn_jax.data.color_map.ColorMap`; see there for `unknown` and the report).

    The mask's colours are what count: palette (P) masks are read as their colours, not
    their indices. Transparent pixels have no defined colour and 16-bit channels would be
    cut to 8 bits, so both are refused, as for images. A single-channel mask is read as grey
    colours; when those are not in the map, the error says it may hold class ids instead.
    """
    im, wide = _open(source, "label", name)
    mode = im.mode
    if wide is not None:
        raise DataError(
            f"{name}: colour mask has more than 8 bits per channel (stored as {wide}); save it as 8-bit RGB",
            name,
        )
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        if rgba[..., 3].min() < 255:
            raise DataError(
                f"{name}: colour mask has transparent pixels (min alpha {int(rgba[..., 3].min())}); "
                "their colour is undefined, so it is refused. Save it without alpha",
                name,
            )
        rgb = rgba[..., :3]
    elif mode in ("RGB", "P", "L", "1", "CMYK", "YCbCr"):
        rgb = np.asarray(im.convert("RGB"))
    else:
        raise DataError(f"{name}: unsupported colour mask mode {mode!r}; save it as 8-bit RGB", name)
    try:
        return color_map.to_ids(rgb, name, unknown)
    except DataError as e:
        if mode in ("L", "1"):
            raise DataError(
                f"{e} (the mask is single-channel, mode {mode}: if its values are class ids, "
                "prepare without --color-map)",
                name,
            ) from None
        raise


def read_rgb(path) -> np.ndarray:
    """A file as uint8 RGB (H, W, 3), EXIF orientation applied, for `fcn-jax predict`.

    The same acceptance rules as prepare (`load_image`); raises DataError (a ValueError)
    with one line naming the file.
    """
    path = Path(path)
    return np.asarray(load_image(path, str(path), exif_transpose=True)[0])


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
