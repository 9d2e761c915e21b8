"""Your own data: a folder of images and a folder of masks, matched by file name stem.

Masks hold class indices 0..num_classes-1 and the ignore value (default 255), 8-bit
single-channel (L or palette-index PNGs), or, with a colour map (`color_map=`, see
`fcn_jax.data.color_map`), a colour per class (RGB, also JPEG), converted to indices.
Splits are given either as fractions of all pairs, shuffled with a fixed seed (default
train 0.9 / val 0.1), or as one list file per split.
List file lines are either `IMAGE MASK` (paths relative to the list file, or absolute) or a
single `NAME` (an image file name or stem in images_dir, its mask found by stem in masks_dir).
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fcn_jax.data import imageio
from fcn_jax.data.builder import Sample, default_out, iter_pairs, write_dataset
from fcn_jax.data.color_map import ColorMap, describe_unknown, load_color_map
from fcn_jax.data.errors import DataError
from fcn_jax.data.imageio import IMAGE_EXTENSIONS, LABEL_EXTENSIONS
from fcn_jax.data.meta import read_palette_png

DEFAULT_SPLITS = {"train": 0.9, "val": 0.1}
# Colour masks may be JPEG (lossy: their damaged edges are what --unknown-colors is for);
# index masks may not, since JPEG would change the class ids themselves.
COLOR_MASK_EXTENSIONS = (*LABEL_EXTENSIONS, ".jpg", ".jpeg", ".webp")


class _ColorMasks:
    """Reads colour masks through `imageio.load_color_label` and keeps one unknown-colour
    report per file (the builder reads each mask twice: to check it, then to encode it)."""

    def __init__(self, color_map: ColorMap, unknown: str):
        self.color_map, self.unknown = color_map, unknown
        self.reports: dict[str, dict] = {}
        self._lock = threading.Lock()

    def source(self, path: Path):
        return functools.partial(self.read, path)

    def read(self, path: Path) -> np.ndarray:
        ids, report = imageio.load_color_label(path, str(path), self.color_map, self.unknown)
        if report:
            with self._lock:
                self.reports.setdefault(str(path), report)
        return ids

    def messages(self) -> list[str]:
        ignore = self.color_map.ignore_index
        return [
            f"{name}: {describe_unknown(r)} not in the colour map; mapped to the ignore value {ignore}"
            for name, r in sorted(self.reports.items())
        ]

    def metadata(self) -> dict:
        return {
            "color_map": {
                **self.color_map.to_dict(),
                "unknown_colors": self.unknown,
                "files_with_unknown_colors": dict(sorted(self.reports.items())),
            }
        }


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


def match_by_stem(
    images_dir: Path, masks_dir: Path, mask_suffix: str = "", mask_exts: tuple[str, ...] = LABEL_EXTENSIONS
) -> list[tuple[Path, Path]]:
    """Every image must have a mask named `<stem><mask_suffix>.<ext>` and vice versa."""
    images = _files(images_dir, IMAGE_EXTENSIONS, "image")
    masks = _files(masks_dir, mask_exts, "mask")
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
    list_file,
    images_dir: Path | None,
    masks_dir: Path | None,
    mask_suffix: str = "",
    mask_exts: tuple[str, ...] = LABEL_EXTENSIONS,
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
                masks = _files(masks_dir, mask_exts, "mask")
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
    color_map=None,
    unknown_colors: str = "error",
    ignore_colors=(),
    color_tolerance: int = 0,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Prepare a folder dataset under `out` (`<out>/<name>/1.0.0`); returns that directory.

    splits: {"train": 0.9, "val": 0.1} (fractions, shuffled with `split_seed`; the default) or
    {"train": "train.txt", "val": "val.txt"} (one list file per split). `list_file` replaces
    stem matching by an explicit list, which is then cut by fractions.
    palette: (num_classes, 3) uint8 colours, or a palette image path; default the VOC colours
    (with a colour map: the map's class colours).
    color_map: masks are colour-coded; a palette image or `R G B name` text file (or a
    `ColorMap`) converts them (`fcn_jax.data.color_map`). A text map gives num_classes and the
    class names when they are not passed. unknown_colors: "error" refuses a mask with colours
    not in the map, "ignore" maps them to `ignore_index`; ignore_colors: [(r, g, b)] mapped to
    the ignore value; color_tolerance: a colour within this of a map colour in every channel
    counts as it (for JPEG masks). `report` receives one line per file whose unknown colours were
    ignored (default: `warnings.warn`); the counts are also in the dataset's metadata.json.
    """
    masks = None
    if color_map is not None:
        if unknown_colors not in ("error", "ignore"):
            raise DataError(f"unknown_colors must be 'error' or 'ignore', got {unknown_colors!r}", color_map)
        if not isinstance(color_map, ColorMap):
            color_map = load_color_map(color_map, num_classes, ignore_index, ignore_colors, color_tolerance)
        num_classes = color_map.num_classes if num_classes is None else num_classes
        class_names = class_names or color_map.class_names
        palette = color_map.palette if palette is None else palette
        masks = _ColorMasks(color_map, unknown_colors)
    elif ignore_colors:
        raise DataError("ignore colours need a colour map (--color-map)", "ignore_colors")
    if num_classes is None:
        raise DataError("num_classes is required for a folder dataset", images_dir)
    mask_exts = COLOR_MASK_EXTENSIONS if masks is not None else LABEL_EXTENSIONS
    images_dir = None if images_dir is None else Path(images_dir).expanduser()
    masks_dir = None if masks_dir is None else Path(masks_dir).expanduser()
    splits = dict(splits or DEFAULT_SPLITS)
    kinds = {isinstance(v, (int, float)) for v in splits.values()}
    if len(kinds) != 1:
        raise DataError(f"splits mixes fractions and list files: {splits}", "splits")
    if kinds == {True}:
        if list_file is not None:
            pairs = read_list_file(list_file, images_dir, masks_dir, mask_suffix, mask_exts)
        else:
            pairs = match_by_stem(images_dir, masks_dir, mask_suffix, mask_exts)
        by_split = split_by_fraction(pairs, splits, split_seed)
    else:
        if list_file is not None:
            raise DataError("give either list_file or per-split list files, not both", list_file)
        by_split = {
            k: read_list_file(v, images_dir, masks_dir, mask_suffix, mask_exts) for k, v in splits.items()
        }
    if masks is None:
        samples = {k: [Sample(img.name, img, msk) for img, msk in v] for k, v in by_split.items()}
    else:
        samples = {
            k: [Sample(img.name, img, masks.source(msk), label_desc=str(msk)) for img, msk in v]
            for k, v in by_split.items()
        }
    if isinstance(palette, (str, Path)):
        palette = read_palette_png(Path(palette), num_classes)
    if isinstance(class_names, str):
        class_names = [c.strip() for c in class_names.split(",")]
    path = write_dataset(
        name,
        default_out(out),
        samples,
        num_classes=num_classes,
        ignore_index=ignore_index,
        class_names=class_names,
        palette=palette,
        source=f"images={images_dir} masks={masks_dir} list_file={list_file}"
        + ("" if masks is None else f" color_map={masks.color_map.source}"),
        overwrite=overwrite,
        workers=workers,
        progress=progress,
        extra_metadata=None if masks is None else masks.metadata,
    )
    for line in [] if masks is None else masks.messages():
        (report or warnings.warn)(line)
    return path
