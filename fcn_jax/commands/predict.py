"""`fcn-jax predict --checkpoint PATH IMAGES_OR_DIRS... --out DIR`.

For every input image writes, under DIR:
    color/<name>.png     the prediction in the dataset's palette
    overlay/<name>.png   the colours alpha-blended onto the image (--alpha)
    labels/<name>.png    raw class ids, 8-bit single channel (value i = class i)
and DIR/legend.png (palette and class names). --tile H,W --overlap PX segments images larger
than the tile in overlapping windows (device memory bounded by the tile); --scales and --flip
average the probabilities of resized and mirrored copies (`fcn_jax.predict`). Folders are
read non-recursively (files with an image extension; --recursive descends). Images are read
by `fcn_jax.data.imageio.read_rgb`, which applies the same rules as `prepare` (docs/data.md):
grayscale, palette and opaque RGBA images are converted to RGB; images with transparent
pixels and 16-bit or float images are refused; EXIF orientation is applied. A file that
cannot be read is reported on stderr, naming it; the other files are still processed and
the exit code is 1. Every input gets its own output name (see `_output_names`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Segment images and write colour masks, overlays and label PNGs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGES_OR_DIR", help="image files and/or folders of images"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run directory (best, else latest checkpoint), a step directory, or a pretrained folder "
        "(model.safetensors + config.json, from fcn-jax export --format safetensors)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    from fcn_jax.commands.eval import add_inference_arguments

    add_inference_arguments(parser)
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the colours (default 0.5)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per device call (default 4)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def collect(inputs: list[str], recursive: bool) -> tuple[list[Path], list[str]]:
    """(image files, error messages) from file and folder arguments."""
    from fcn_jax.data.imageio import IMAGE_EXTENSIONS

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


def _output_names(files: list[Path]) -> list[str]:
    """One output name per input, distinct even ignoring case, the same for the same list.

    A file keeps its stem unless an earlier file took it (a.png and a.jpg, or dir1/a.png and
    dir2/a.png); then it gets `<stem>_<k>` with the smallest k that is no input's stem and not
    already given. Reserving every plain stem first is what stops a.jpg's `a_1` from
    overwriting the outputs of an input really called a_1.png. Case is ignored so that A.png
    and a.png do not share files on case-insensitive file systems (macOS, Windows).
    """
    taken = {f.stem.casefold() for f in files}
    given: set[str] = set()
    names = []
    for f in files:
        name, k = f.stem, 0
        while name.casefold() in given or (k and name.casefold() in taken):
            k += 1
            name = f"{f.stem}_{k}"
        given.add(name.casefold())
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from fcn_jax import visualize
    from fcn_jax.data.imageio import read_rgb
    from fcn_jax.fsutil import atomic_output, check_writable_dir
    from fcn_jax.predict import Segmenter, check_tile, parse_scales, parse_tile

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
    out = Path(args.out)
    try:
        for sub in ("color", "overlay", "labels"):
            check_writable_dir(out / sub, "--out")
    except OSError as e:
        print(f"fcn-jax predict: {e}", file=sys.stderr)
        return 2
    try:
        tile, scales = parse_tile(args.tile), parse_scales(args.scales)
        check_tile(tile, args.overlap)
    except ValueError as e:
        print(f"fcn-jax predict: --tile/--overlap/--scales: {e}", file=sys.stderr)
        return 2
    try:
        seg = Segmenter.from_checkpoint(
            args.checkpoint,
            batch_size=args.batch_size,
            flip=bool(args.flip),
            scales=scales,
            tile=tile,
            overlap=args.overlap,
        )
    except (OSError, ValueError) as e:
        print(f"fcn-jax predict: --checkpoint: {e}", file=sys.stderr)
        return 2
    meta = seg.meta
    if seg.num_classes > 256:
        print(f"fcn-jax predict: {seg.num_classes} classes do not fit 8-bit label PNGs", file=sys.stderr)
        return 2

    def save(array, path: Path) -> None:
        with atomic_output(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")

    save(visualize.legend(seg.class_names, meta.palette), out / "legend.png")

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
                batch.append((f, name, read_rgb(f)))
            except ValueError as e:
                err(str(e))
                failed += 1
                bar.update(1)
        if not batch:
            continue
        preds = seg.predict([im for _, _, im in batch])
        for (f, name, im), pred in zip(batch, preds):
            try:
                save(visualize.colorize(pred, meta.palette), out / "color" / f"{name}.png")
                save(visualize.overlay(im, pred, meta.palette, args.alpha), out / "overlay" / f"{name}.png")
                save(pred.astype(np.uint8), out / "labels" / f"{name}.png")
            except OSError as e:
                err(f"{f}: cannot write its outputs under {out} ({e})")
                failed += 1
            bar.update(1)
    bar.close()
    ok = len(files) - (failed - len(errors))
    print(f"wrote {ok} segmentation(s) to {out}" + (f"; {failed} input(s) failed" if failed else ""))
    return 1 if failed else 0
