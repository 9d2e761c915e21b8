"""`fcn-jax predict --checkpoint PATH IMAGES_OR_DIRS... --out DIR`.

For every input image writes, under DIR:
    color/<name>.png     the prediction in the dataset's palette
    overlay/<name>.png   the colours alpha-blended onto the image (--alpha)
    labels/<name>.png    raw class ids, 8-bit single channel (value i = class i)
and DIR/legend.png (palette and class names). Folders are read non-recursively (files with
an image extension; --recursive descends). Grayscale, palette and RGBA images are converted
to RGB (alpha dropped); EXIF orientation is applied. A file that cannot be read is reported
on stderr, naming it; the other files are still processed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Segment images and write colour masks, overlays and label PNGs."
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGES_OR_DIR", help="image files and/or folders of images"
    )
    parser.add_argument(
        "--checkpoint", required=True, help="run directory (best, else latest checkpoint) or a step directory"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--flip", action="store_true", help="test-time augmentation: average with the mirrored image"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the colours (default 0.5)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per device call (default 4)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def collect(inputs: list[str], recursive: bool) -> tuple[list[Path], list[str]]:
    """(image files, error messages) from file and folder arguments."""
    files, errors = [], []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found = sorted(
                q
                for q in (p.rglob("*") if recursive else p.iterdir())
                if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS and not q.name.startswith(".")
            )
            if not found:
                errors.append(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.exists():
            errors.append(f"{p}: not a regular file or folder")
        else:
            errors.append(f"{p}: no such file or folder")
    return files, errors


def read_image(path: Path):
    """uint8 RGB (H, W, 3); ValueError with a message naming the file."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.width == 0 or im.height == 0:
                raise ValueError(f"{path}: image has zero size ({im.width}x{im.height})")
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ValueError(f"{path}: {im.mode} (16-bit/float) images are not supported; save as 8-bit")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from None


def _output_names(files: list[Path]) -> list[str]:
    """File stems, made unique (a.png and a.jpg, or dir1/a.png and dir2/a.png)."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        names.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return names


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from fcn_jax import visualize
    from fcn_jax.predict import Segmenter

    def err(msg: str) -> None:
        tqdm.write(f"fcn-jax predict: error: {msg}", file=sys.stderr)

    if not 0.0 <= args.alpha <= 1.0:
        print(f"fcn-jax predict: --alpha must be in [0, 1], got {args.alpha}", file=sys.stderr)
        return 2
    files, errors = collect(args.inputs, args.recursive)
    for e in errors:
        err(e)
    if not files:
        err("no images to process")
        return 1
    try:
        seg = Segmenter.from_checkpoint(args.checkpoint, batch_size=args.batch_size, flip=args.flip)
    except (FileNotFoundError, ValueError) as e:
        print(f"fcn-jax predict: --checkpoint {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    meta = seg.meta
    if seg.num_classes > 256:
        print(f"fcn-jax predict: {seg.num_classes} classes do not fit 8-bit label PNGs", file=sys.stderr)
        return 2
    out = Path(args.out)
    for sub in ("color", "overlay", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(visualize.legend(seg.class_names, meta.palette)).save(out / "legend.png")

    failed = len(errors)
    names = _output_names(files)
    chunk = max(1, args.batch_size)
    bar = tqdm(
        total=len(files), unit="img", desc="predict", disable=args.quiet or len(files) < 2, dynamic_ncols=True
    )
    for start in range(0, len(files), chunk):
        batch = []
        for f, name in zip(files[start : start + chunk], names[start : start + chunk]):
            try:
                batch.append((f, name, read_image(f)))
            except ValueError as e:
                err(str(e))
                failed += 1
                bar.update(1)
        if not batch:
            continue
        preds = seg.predict([im for _, _, im in batch])
        for (f, name, im), pred in zip(batch, preds):
            try:
                Image.fromarray(visualize.colorize(pred, meta.palette)).save(out / "color" / f"{name}.png")
                Image.fromarray(visualize.overlay(im, pred, meta.palette, args.alpha)).save(
                    out / "overlay" / f"{name}.png"
                )
                Image.fromarray(pred.astype(np.uint8)).save(out / "labels" / f"{name}.png")
            except OSError as e:
                err(f"{f}: cannot write its outputs under {out} ({e})")
                failed += 1
            bar.update(1)
    bar.close()
    ok = len(files) - (failed - len(errors))
    print(f"wrote {ok} segmentation(s) to {out}" + (f"; {failed} input(s) failed" if failed else ""))
    return 1 if failed else 0
