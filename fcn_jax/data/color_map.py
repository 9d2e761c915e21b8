"""Colour-coded masks: a colour per class, turned into class ids when a dataset is prepared.

Many datasets ship their masks as RGB pictures (CamVid's original LabeledApproved_full, ADE
exports, annotation tools). `fcn-jax prepare folder --color-map FILE` converts them; the
stored dataset holds class ids as always, so training and evaluation never see colours.

A colour map is read from one of two kinds of file:

- a palette image (e.g. camvid11_palette.png, 256x1 RGBA): pixel i, in reading order, is the
  colour of class i, for i < num_classes. Its entry at the ignore value, where the palette has
  that many entries, is the ignore colour: a colour mask is then exactly `palette[index mask]`
  (CamVid: entry 11, void, black; the 256-colour PASCAL VOC map: entry 255, (224, 224, 192),
  VOC's boundary colour). Other entries are not used.
- a text file of `R G B name` lines, one per class in class order (class i is the i-th such
  line; the names become the class names), plus any number of `R G B ignore` lines: colours
  mapped to the ignore value. Blank lines and lines starting with `#` are skipped.

`ignore_colors` (`--ignore-color R,G,B`, repeatable) gives the ignore colours explicitly; a
palette image's ignore entry is then not used. A colour given to two classes, or to a class
and the ignore value, is refused naming both, since a mask holding it could not be decoded.

JPEG moves colours: a flat region of CamVid's (60, 40, 222) may decode as (61, 40, 220), and
edges blend two classes. `tolerance` (`--color-tolerance N`) accepts a colour within N of an
entry in every channel as that entry; N must stay below half the distance between any two
entries of different values, so that no colour is within reach of two. What is still in no
entry's reach is an unknown colour.

Pixels whose colour is in no entry (JPEG-damaged edges, a stray brush colour) are counted per
file: with `unknown="error"` (the default) the file is refused, listing the colours and their
pixel counts; with `unknown="ignore"` they become the ignore value, and the counts are still
reported (and recorded in the prepared dataset's metadata).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fcn_jax.data.errors import DataError

UNKNOWN_POLICIES = ("error", "ignore")
IGNORE_NAME = "ignore"
IMAGE_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".jpg", ".jpeg")


def _key(rgb) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) int32 keys 0xRRGGBB."""
    a = np.asarray(rgb).astype(np.int32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


def _rgb(key: int) -> tuple[int, int, int]:
    return (int(key) >> 16) & 255, (int(key) >> 8) & 255, int(key) & 255


def parse_color(text: str, where: str = "colour") -> tuple[int, int, int]:
    """'R,G,B' (or 'R G B', or '#rrggbb') -> (r, g, b), each 0..255."""
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            values = [int(t[i : i + 2], 16) for i in (1, 3, 5)]
        else:
            values = [int(v) for v in t.replace(",", " ").split()]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise DataError(f"{where}: expected a colour R,G,B with values 0..255, got {text!r}", where)
    return values[0], values[1], values[2]


@dataclasses.dataclass(frozen=True, eq=False)
class ColorMap:
    """Colours -> mask values. `colors` (K, 3) uint8 and `values` (K,) uint8 are the entries
    (classes and ignore colours); `what` names each entry in messages."""

    source: str
    num_classes: int
    ignore_index: int
    colors: np.ndarray
    values: np.ndarray
    what: tuple[str, ...]
    class_names: list[str] | None = None  # from a text file
    tolerance: int = 0  # a colour within this of an entry, in every channel, counts as it

    def __post_init__(self):
        keys = _key(self.colors)
        order = np.argsort(keys, kind="stable")
        object.__setattr__(self, "_keys", keys[order])
        object.__setattr__(self, "_lookup", np.asarray(self.values, np.uint8)[order])

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8: the colour of each class (the display palette too)."""
        out = np.zeros((self.num_classes, 3), np.uint8)
        for color, value in zip(self.colors, self.values):
            if value < self.num_classes:
                out[value] = color
        return out

    @property
    def ignore_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(int(v) for v in c) for c, v in zip(self.colors, self.values) if v >= self.num_classes]

    def to_dict(self) -> dict:
        """What the prepared dataset records about the map it was made with."""
        return {
            "source": self.source,
            "classes": self.palette.tolist(),
            "ignore_colors": [list(c) for c in self.ignore_colors],
            "tolerance": self.tolerance,
        }

    def to_ids(self, rgb: np.ndarray, name: str, unknown: str = "error") -> tuple[np.ndarray, dict]:
        """uint8 (H, W, 3) colours -> (uint8 (H, W) mask values, unknown-colour report).

        The report is {} when every pixel's colour is in the map, else {"pixels": n,
        "fraction": n / (H * W), "colors": [[r, g, b, count], ...] most frequent first}. With
        unknown="error" such a mask raises DataError naming `name`; with "ignore" those pixels
        get the ignore value.
        """
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        keys = _key(rgb)
        pos = np.searchsorted(self._keys, keys).clip(0, len(self._keys) - 1)
        known = self._keys[pos] == keys
        ids = self._lookup[pos]
        if known.all():
            return ids, {}
        if self.tolerance > 0:  # each off colour once: its entry within reach, if any
            off, inverse = np.unique(keys[~known], return_inverse=True)
            off_rgb = np.stack([(off >> 16) & 255, (off >> 8) & 255, off & 255], -1)
            dist = np.abs(off_rgb[:, None, :] - self.colors[None].astype(np.int32)).max(-1)
            near = dist.argmin(1)
            reach = dist[np.arange(len(off)), near] <= self.tolerance
            fixed = np.zeros(keys.shape, bool)
            fixed[~known] = reach[inverse.ravel()]
            ids = ids.copy()
            ids[~known] = np.where(reach, np.asarray(self.values)[near], 0)[inverse.ravel()]
            known |= fixed
            if known.all():
                return ids, {}
        found, counts = np.unique(keys[~known], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        n = int(counts.sum())
        report = {
            "pixels": n,
            "fraction": n / keys.size,
            "colors": [[*_rgb(found[i]), int(counts[i])] for i in order],
        }
        if unknown == "error":
            raise DataError(
                f"{name}: {describe_unknown(report)} not in the colour map {self.source}; "
                "add them to the map, or map them to the ignore value with --unknown-colors ignore",
                name,
            )
        ids = np.where(known, ids, np.uint8(self.ignore_index))
        return ids, report


def describe_unknown(report: dict, shown: int = 6) -> str:
    """'1,234 pixels (0.71 %) of 3 colours: (1, 2, 3) 1,000 px, ...'"""
    colors = report["colors"]
    listed = ", ".join(f"({r}, {g}, {b}) {c:,} px" for r, g, b, c in colors[:shown])
    more = f", ... and {len(colors) - shown} more colours" if len(colors) > shown else ""
    plural = "colour" if len(colors) == 1 else "colours"
    share = f"{report['pixels']:,} pixels ({100 * report['fraction']:.2f} %)"
    return f"{share} of {len(colors)} {plural}: {listed}{more}"


def _check_tolerance(cmap: ColorMap) -> None:
    """Refuse a tolerance that would put a colour within reach of two entries."""
    t = cmap.tolerance
    if t < 0 or t > 127:
        raise DataError(f"{cmap.source}: colour tolerance must be in 0..127, got {t}", cmap.source)
    if t == 0 or len(cmap.colors) < 2:
        return
    c = cmap.colors.astype(np.int32)
    dist = np.abs(c[:, None] - c[None]).max(-1)
    dist[np.asarray(cmap.values)[:, None] == np.asarray(cmap.values)[None]] = 1 << 10  # same value
    i, j = np.unravel_index(dist.argmin(), dist.shape)
    if 2 * t >= dist[i, j]:
        raise DataError(
            f"{cmap.source}: colour tolerance {t} reaches both {cmap.what[i]} {_rgb(_key(c[i]))} and "
            f"{cmap.what[j]} {_rgb(_key(c[j]))}, {dist[i, j]} apart; use at most {(dist[i, j] - 1) // 2}",
            cmap.source,
        )


def _build(source, entries, num_classes, ignore_index, class_names=None, tolerance: int = 0) -> ColorMap:
    """entries: [(rgb, value, what)]. Refuses a colour given twice to different values."""
    seen: dict[int, tuple[int, str]] = {}
    kept = []
    for rgb, value, what in entries:
        k = int(_key(np.asarray(rgb, np.uint8)))
        if k in seen:
            if seen[k][0] != value:
                raise DataError(
                    f"{source}: colour {_rgb(k)} is given to both {seen[k][1]} and {what}; "
                    "a mask pixel of that colour could not be decoded",
                    source,
                )
            continue  # the same colour twice for the same value: harmless
        seen[k] = (value, what)
        kept.append((rgb, value, what))
    cmap = ColorMap(
        source=str(source),
        num_classes=num_classes,
        ignore_index=ignore_index,
        colors=np.asarray([e[0] for e in kept], np.uint8).reshape(-1, 3),
        values=np.asarray([e[1] for e in kept], np.uint8),
        what=tuple(e[2] for e in kept),
        class_names=class_names,
        tolerance=int(tolerance),
    )
    _check_tolerance(cmap)
    return cmap


def _read_text(path: Path) -> tuple[list[tuple], list[str]]:
    """-> ([(rgb, is_ignore, line number)], class names) of a `R G B name` file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read colour map ({e})", path) from None
    rows, names = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 3)
        where = f"{path}:{n}"
        if len(parts) < 4:
            raise DataError(f"{where}: expected 'R G B name', got {line!r}", path)
        rgb = parse_color(" ".join(parts[:3]), where)
        name = parts[3].strip()
        if name == IGNORE_NAME:
            rows.append((rgb, True, n))
        else:
            rows.append((rgb, False, n))
            names.append(name)
    if not names:
        raise DataError(f"{path}: colour map names no classes (no 'R G B name' lines)", path)
    return rows, names


def load_color_map(
    path,
    num_classes: int | None = None,
    ignore_index: int = 255,
    ignore_colors=(),
    tolerance: int = 0,
) -> ColorMap:
    """A colour map from a palette image or an `R G B name` text file (see the module doc).

    num_classes is required for a palette image and optional for a text file (its class
    lines give it; a different number is refused). ignore_colors: [(r, g, b)] or 'R,G,B'
    strings, mapped to `ignore_index`; given, they replace a palette image's ignore entry.
    tolerance: the largest per-channel difference at which a colour still counts as an entry.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: colour map file does not exist", path)
    extra = [parse_color(c, "--ignore-color") if isinstance(c, str) else tuple(c) for c in ignore_colors]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if num_classes is None:
            raise DataError(f"{path}: a palette image needs the number of classes (--num-classes)", path)
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB")).reshape(-1, 3)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read palette image ({e})", path) from None
        if len(arr) < num_classes:
            raise DataError(f"{path}: palette has {len(arr)} colours, need {num_classes}", path)
        entries = [(tuple(arr[i]), i, f"class {i} (palette entry {i})") for i in range(num_classes)]
        if extra:
            entries += [(c, ignore_index, f"the ignore value (--ignore-color {c})") for c in extra]
        elif ignore_index < len(arr):
            entries.append(
                (
                    tuple(arr[ignore_index]),
                    ignore_index,
                    f"the ignore value {ignore_index} (palette entry {ignore_index}; "
                    "give the ignore colour with --ignore-color R,G,B instead)",
                )
            )
        return _build(path, entries, num_classes, ignore_index, tolerance=tolerance)
    rows, names = _read_text(path)
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"{path}: names {len(names)} classes, but --num-classes is {num_classes}", path)
    entries, k = [], 0
    for rgb, is_ignore, n in rows:
        if is_ignore:
            entries.append((rgb, ignore_index, f"the ignore value (line {n})"))
        else:
            entries.append((rgb, k, f"class {k} {names[k]!r} (line {n})"))
            k += 1
    entries += [(c, ignore_index, f"the ignore value (--ignore-color {c})") for c in extra]
    return _build(path, entries, len(names), ignore_index, names, tolerance)
