"""Dataset metadata: class names, palette, ignore value and split sizes of a prepared dataset.

A prepared dataset is a standard TFDS directory `<out>/<name>/<version>/` (dataset_info.json,
features.json, metadata.json, array_record shards). fcn_jax adds two JSON files beside them:
`fcn_jax_index.json` (file name and size of every example, in record order) and
`class_stats.json` (per-class pixel counts of the train split). This module reads only JSON,
so it is cheap and does not import tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from fcn_jax.data.errors import DataError

INDEX_FILE = "fcn_jax_index.json"
STATS_FILE = "class_stats.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(eq=False)
class DatasetMeta:
    """What the model, metrics and visualisation need to know about a dataset."""

    name: str
    num_classes: int
    ignore_index: int
    class_names: list[str]
    palette: np.ndarray  # uint8 (num_classes, 3): display colour of class i
    splits: dict[str, int]  # split name -> number of examples
    ignore_color: tuple[int, int, int] = (0, 0, 0)  # display colour of ignored pixels
    data_dir: Path | None = None  # the versioned TFDS directory
    version: str = ""

    def __eq__(self, other) -> bool:
        if not isinstance(other, DatasetMeta):
            return NotImplemented
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return np.array_equal(a.pop("palette"), b.pop("palette")) and a == b

    def to_dict(self) -> dict:
        """Plain JSON types (a run records the dataset it was trained on this way)."""
        d = dataclasses.asdict(self)
        d["palette"] = np.asarray(self.palette).tolist()
        d["ignore_color"] = list(self.ignore_color)
        d["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetMeta:
        """The inverse of to_dict; keys it does not know are ignored, missing ones are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["palette"] = np.asarray(kwargs["palette"], np.uint8).reshape(-1, 3)
        kwargs["class_names"] = list(kwargs["class_names"])
        kwargs["splits"] = {str(k): int(v) for k, v in dict(kwargs.get("splits") or {}).items()}
        if kwargs.get("data_dir"):
            kwargs["data_dir"] = Path(kwargs["data_dir"])
        if "ignore_color" in kwargs:
            kwargs["ignore_color"] = tuple(int(v) for v in kwargs["ignore_color"])
        return cls(**kwargs)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Class-index mask (H, W) -> uint8 RGB (H, W, 3); ignore/out-of-range -> ignore_color."""
        lut = np.tile(np.asarray(self.ignore_color, np.uint8), (256, 1))
        lut[: self.num_classes] = self.palette
        return lut[np.asarray(label).astype(np.int64).clip(0, 255)]


def default_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), class 0 black: distinct colours for any n."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def read_palette_png(path: Path, n: int) -> np.ndarray:
    """A palette image (e.g. camvid11_palette.png, 256x1 RGBA): pixel i is the colour of class i."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).reshape(-1, 3)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read palette image ({e})", path) from None
    if arr.shape[0] < n:
        raise DataError(f"{path}: palette has {arr.shape[0]} colours, need {n}", path)
    return arr[:n].astype(np.uint8)


def resolve_dataset_dir(data_dir) -> Path:
    """Accept the `prepare --out` directory, `<out>/<name>` or the versioned TFDS directory."""
    p = Path(data_dir).expanduser()
    if (p / "dataset_info.json").is_file():
        return p
    if not p.is_dir():
        raise DataError(f"{p}: prepared dataset directory does not exist", p)
    found = sorted(q.parent for q in p.glob("*/dataset_info.json"))
    if not found:
        found = sorted(q.parent for q in p.glob("*/*/dataset_info.json"))
    if not found:
        raise DataError(
            f"{p}: no prepared dataset here (no dataset_info.json found in it or "
            "two levels below); run `fcn-jax prepare ...` first",
            p,
        )
    names = {q.parent.name for q in found}
    if len(names) > 1:
        raise DataError(
            f"{p}: holds several datasets ({', '.join(sorted(names))}); pass "
            "the one you mean, e.g. " + str(found[0]),
            p,
        )

    def version_key(q: Path):
        try:
            return tuple(int(x) for x in q.name.split("."))
        except ValueError:
            return (-1,)

    return max(found, key=version_key)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: missing; the dataset directory was not written by `fcn-jax prepare` or is incomplete",
            path,
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})", path) from None


def load_meta(data_dir) -> DatasetMeta:
    d = resolve_dataset_dir(data_dir)
    info = _read_json(d / "dataset_info.json")
    md = _read_json(d / "metadata.json")
    if "num_classes" not in md:
        raise DataError(
            f"{d / 'metadata.json'}: no fcn_jax metadata (num_classes); prepare the "
            "dataset with `fcn-jax prepare`",
            d / "metadata.json",
        )
    splits = {s["name"]: int(sum(int(n) for n in s.get("shardLengths", []))) for s in info.get("splits", [])}
    return DatasetMeta(
        name=info.get("name", d.parent.name),
        num_classes=int(md["num_classes"]),
        ignore_index=int(md["ignore_index"]),
        class_names=list(md["class_names"]),
        palette=np.asarray(md["palette"], np.uint8).reshape(-1, 3),
        splits=splits,
        ignore_color=tuple(int(v) for v in md.get("ignore_color", (0, 0, 0))),
        data_dir=d,
        version=info.get("version", d.name),
    )


def load_index(data_dir, split: str) -> dict:
    """{"file_names": [...], "shapes": [[h, w], ...]} of a split, in record order."""
    d = resolve_dataset_dir(data_dir)
    index = _read_json(d / INDEX_FILE)
    if split not in index["splits"]:
        raise DataError(f"{d}: no split {split!r} (have {', '.join(index['splits'])})", d)
    return index["splits"][split]


def split_fingerprint(data_dir, split: str) -> str:
    """sha256 of a split's file names and image sizes, in record order: the same for a
    dataset prepared again from the same files or moved elsewhere, different when the
    examples differ. A run records it to refuse resuming on other data."""
    import hashlib

    entry = load_index(data_dir, split)
    text = json.dumps([entry["file_names"], entry["shapes"]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
