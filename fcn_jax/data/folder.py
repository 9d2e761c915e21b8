"""Your own data: a folder of images and a folder of masks, matched by file name stem.

Masks hold class indices 0..num_classes-1 and the ignore value (default 255), 8-bit
single-channel (L or palette-index PNGs). Splits are given either as fractions of all pairs,
shuffled with a fixed seed (default train 0.9 / val 0.1), or as one list file per split.
List file lines are either `IMAGE MASK` (paths relative to the list file, or absolute) or a
single `NAME` (an image file name or stem in images_dir, its mask found by stem in masks_dir).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fcn_jax.data.builder import Sample, default_out, iter_pairs, write_dataset
from fcn_jax.data.errors import DataError
from fcn_jax.data.imageio import IMAGE_EXTENSIONS, LABEL_EXTENSIONS
from fcn_jax.data.meta import read_palette_png

DEFAULT_SPLITS = {"train": 0.9, "val": 0.1}


def _files(d: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    if not d.is_dir():
        raise DataError(f"{d}: {what} directory does not exist", d)
    by_stem: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in exts:
            continue
        if p.stem in by_stem:
            raise DataError(
                f"{p}: two {what} files share the stem {p.stem!r} "
                f"({by_stem[p.stem].name}); names must be unique up to the extension",
                p,
            )
        by_stem[p.stem] = p
    if not by_stem:
        raise DataError(f"{d}: {what} directory is empty (no {', '.join(exts)} files)", d)
    return by_stem


def _fail(problems: list[tuple[str, Path]]) -> None:
    if len(problems) == 1:
        raise DataError(problems[0][0], problems[0][1])
    shown = "\n  ".join(m for m, _ in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise DataError(f"{len(problems)} problems:\n  {shown}{more}", problems[0][1])


def match_by_stem(images_dir: Path, masks_dir: Path, mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """Every image must have a mask named `<stem><mask_suffix>.<ext>` and vice versa."""
    images = _files(images_dir, IMAGE_EXTENSIONS, "image")
    masks = _files(masks_dir, LABEL_EXTENSIONS, "mask")
    problems = []
    for stem, p in images.items():
        if stem + mask_suffix not in masks:
            problems.append(
                (
                    f"{p}: no mask for this image in {masks_dir} "
                    f"(looked for {stem}{mask_suffix}.png or another mask extension)",
                    p,
                )
            )
    wanted = {stem + mask_suffix for stem in images}
    for stem, p in masks.items():
        if stem not in wanted:
            problems.append((f"{p}: mask has no image in {images_dir}", p))
    if problems:
        _fail(problems)
    return [(p, masks[stem + mask_suffix]) for stem, p in images.items()]


def read_list_file(
    list_file, images_dir: Path | None, masks_dir: Path | None, mask_suffix: str = ""
) -> list[tuple[Path, Path]]:
    list_file = Path(list_file).expanduser()
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file does not exist", list_file)
    base = list_file.parent
    images = masks = None
    pairs, problems = [], []
    for n, tokens in iter_pairs(list_file.read_text().splitlines()):
        where = f"{list_file}:{n}"
        if len(tokens) == 2:
            img, msk = (Path(t) if Path(t).is_absolute() else base / t for t in tokens)
        elif len(tokens) == 1:
            if images_dir is None or masks_dir is None:
                raise DataError(f"{where}: a single name needs images_dir and masks_dir", list_file)
            if images is None:
                images = _files(images_dir, IMAGE_EXTENSIONS, "image")
                masks = _files(masks_dir, LABEL_EXTENSIONS, "mask")
            stem = Path(tokens[0]).stem if Path(tokens[0]).suffix.lower() in IMAGE_EXTENSIONS else tokens[0]
            img = images.get(stem, images_dir / tokens[0])
            msk = masks.get(stem + mask_suffix, masks_dir / f"{stem}{mask_suffix}.png")
        else:
            raise DataError(f"{where}: expected 'IMAGE MASK' or 'NAME', got {' '.join(tokens)!r}", list_file)
        for kind, p in (("image", img), ("mask", msk)):
            if not p.is_file():
                problems.append((f"{where}: names {kind} {p}, which does not exist", p))
        pairs.append((img, msk))
    if problems:
        _fail(problems)
    if not pairs:
        raise DataError(f"{list_file}: list file names no files", list_file)
    return pairs


def split_by_fraction(pairs: list, fractions: Mapping[str, float], seed: int) -> dict[str, list]:
    """Shuffle (fixed seed) and cut; the first split takes the rest after rounding."""
    names = list(fractions)
    f = np.array([float(fractions[k]) for k in names])
    if (f < 0).any() or f.sum() <= 0:
        raise DataError(f"split fractions must be >= 0 and not all 0, got {dict(fractions)}", "splits")
    f = f / f.sum()
    n = len(pairs)
    counts = [0] + [max(1, round(x * n)) if x > 0 else 0 for x in f[1:]]
    counts[0] = n - sum(counts[1:])
    if counts[0] < 1:
        raise DataError(f"{n} examples are too few for splits {dict(fractions)}", "splits")
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, c in zip(names, counts):
        if c:
            out[name] = [pairs[i] for i in sorted(order[start : start + c])]
        start += c
    return out


def prepare_folder(
    images_dir,
    masks_dir,
    out=None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    class_names=None,
    list_file=None,
    splits: Mapping[str, float | str | Path] | None = None,
    *,
    name: str = "folder",
    palette=None,
    mask_suffix: str = "",
    split_seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Prepare a folder dataset under `out` (`<out>/<name>/1.0.0`); returns that directory.

    splits: {"train": 0.9, "val": 0.1} (fractions, shuffled with `split_seed`; the default) or
    {"train": "train.txt", "val": "val.txt"} (one list file per split). `list_file` replaces
    stem matching by an explicit list, which is then cut by fractions.
    palette: (num_classes, 3) uint8 colours, or a palette image path; default the VOC colours.
    """
    if num_classes is None:
        raise DataError("num_classes is required for a folder dataset", images_dir)
    images_dir = None if images_dir is None else Path(images_dir).expanduser()
    masks_dir = None if masks_dir is None else Path(masks_dir).expanduser()
    splits = dict(splits or DEFAULT_SPLITS)
    kinds = {isinstance(v, (int, float)) for v in splits.values()}
    if len(kinds) != 1:
        raise DataError(f"splits mixes fractions and list files: {splits}", "splits")
    if kinds == {True}:
        if list_file is not None:
            pairs = read_list_file(list_file, images_dir, masks_dir, mask_suffix)
        else:
            pairs = match_by_stem(images_dir, masks_dir, mask_suffix)
        by_split = split_by_fraction(pairs, splits, split_seed)
    else:
        if list_file is not None:
            raise DataError("give either list_file or per-split list files, not both", list_file)
        by_split = {k: read_list_file(v, images_dir, masks_dir, mask_suffix) for k, v in splits.items()}
    samples = {k: [Sample(img.name, img, msk) for img, msk in v] for k, v in by_split.items()}
    if isinstance(palette, (str, Path)):
        palette = read_palette_png(Path(palette), num_classes)
    if isinstance(class_names, str):
        class_names = [c.strip() for c in class_names.split(",")]
    return write_dataset(
        name,
        default_out(out),
        samples,
        num_classes=num_classes,
        ignore_index=ignore_index,
        class_names=class_names,
        palette=palette,
        source=f"images={images_dir} masks={masks_dir} list_file={list_file}",
        overwrite=overwrite,
        workers=workers,
        progress=progress,
    )
