"""Writing a segmentation dataset as a standard TFDS array_record directory (no TensorFlow).

Two passes. First every (image, label) pair is decoded and checked (threaded); all problems
are collected and raised as one `DataError` naming each file, before anything is written.
Then a TFDS `GeneratorBasedBuilder` writes the examples: PNG files that need no conversion are
stored byte for byte, anything converted is re-encoded as PNG. Record order is the order given
(`disable_shuffling`), and an index (file names, sizes) and class statistics are written beside.
The whole directory is built under a temporary name and renamed into place when complete
(`write_dataset`), so an existing dataset is never deleted before its replacement exists.

Features of every prepared dataset:
    image:     Image(shape=(None, None, 3), uint8)  RGB
    label:     Image(shape=(None, None, 1), uint8)  class indices, ignore value for void
    file_name: Text                                  e.g. "0001TP_006690.png"
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fcn_jax.data import imageio
from fcn_jax.data.errors import DataError
from fcn_jax.data.meta import FORMAT_VERSION, INDEX_FILE, STATS_FILE
from fcn_jax.fsutil import atomic_write_json, check_writable_dir, fsync_dir

DATASET_VERSION = "1.0.0"
Source = Path | Callable[[], object]  # a file, or a callable returning bytes / ndarray / PIL


@dataclasses.dataclass(frozen=True)
class Sample:
    """One example to write. `file_name` is unique within its split."""

    file_name: str
    image: Source
    label: Source
    image_desc: str = ""  # how errors name the source when it is not a file
    label_desc: str = ""

    def image_name(self) -> str:
        return str(self.image) if isinstance(self.image, Path) else (self.image_desc or self.file_name)

    def label_name(self) -> str:
        return str(self.label) if isinstance(self.label, Path) else (self.label_desc or self.file_name)


@dataclasses.dataclass
class _Checked:
    shape: tuple[int, int]
    counts: np.ndarray  # bincount over 0..255
    image_reencode: bool
    label_reencode: bool


def _get(source: Source):
    return source if isinstance(source, Path) else source()


def _image(sample: Sample):
    src = _get(sample.image)
    if isinstance(src, np.ndarray):
        from PIL import Image

        arr = src if src.ndim == 3 else src[..., None].repeat(3, -1)
        if arr.dtype != np.uint8 or arr.shape[-1] != 3:
            raise DataError(
                f"{sample.image_name()}: image array must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}",
                sample.image_name(),
            )
        return Image.fromarray(arr), True
    return imageio.load_image(src, sample.image_name())


def _label(sample: Sample):
    src = _get(sample.label)
    if isinstance(src, np.ndarray):
        arr = src[..., 0] if src.ndim == 3 and src.shape[-1] == 1 else src
        if arr.ndim != 2:
            raise DataError(
                f"{sample.label_name()}: label array must be (H, W), got {src.shape}", sample.label_name()
            )
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{sample.label_name()}: label values must fit in 0..255", sample.label_name())
        return arr.astype(np.uint8), True
    return imageio.load_label(src, sample.label_name())


def _check(sample: Sample, num_classes: int, ignore_index: int) -> _Checked:
    image, image_reencode = _image(sample)
    label, label_reencode = _label(sample)
    w, h = image.size
    if label.shape != (h, w):
        raise DataError(
            f"{sample.label_name()}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from "
            f"its image {sample.image_name()} ({w}x{h})",
            sample.label_name(),
        )
    counts = imageio.check_label_values(label, num_classes, ignore_index, sample.label_name())
    return _Checked((h, w), counts, image_reencode, label_reencode)


def _raw_bytes(source: Source):
    v = _get(source)
    if isinstance(v, Path):
        return v.read_bytes()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    return None


def _encode(sample: Sample, checked: _Checked) -> dict:
    """Stored bytes: the original file when no conversion was needed, else a new PNG."""
    image_bytes = None if checked.image_reencode else _raw_bytes(sample.image)
    if image_bytes is None:
        image_bytes = imageio.encode_png(_image(sample)[0])
    label_bytes = None if checked.label_reencode else _raw_bytes(sample.label)
    if label_bytes is None:
        label_bytes = imageio.encode_png(_label(sample)[0])
    return {"image": image_bytes, "label": label_bytes, "file_name": sample.file_name}


DATA_ENV_VAR = "FCN_JAX_DATA"


def default_out(out=None) -> Path:
    """Where prepared datasets go: `out`, else $FCN_JAX_DATA, else ~/tensorflow_datasets
    (the TFDS default, so `tfds.data_source(name)` finds them after `import fcn_jax.data`)."""
    if out is not None:
        return Path(out).expanduser()
    return Path(os.environ.get(DATA_ENV_VAR) or "~/tensorflow_datasets").expanduser()


def _workers(workers: int | None) -> int:
    return max(1, workers or min(8, os.cpu_count() or 1))


def _ordered_map(fn, items: list, workers: int, chunk: int = 32) -> Iterator:
    """Threaded map keeping order, with at most `chunk` results waiting in memory."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with cf.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), chunk):
            yield from pool.map(fn, items[start : start + chunk])


def check_samples(
    splits: dict[str, list[Sample]],
    num_classes: int,
    ignore_index: int,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, list[_Checked]]:
    """Decode and check every pair; raise one DataError listing every bad file."""
    errors: list[DataError] = []
    results: dict[str, list[_Checked]] = {}

    def safe_check(sample: Sample):
        try:
            return _check(sample, num_classes, ignore_index)
        except DataError as e:
            return e

    for split, samples in splits.items():
        out = []
        it = _ordered_map(safe_check, samples, _workers(workers), chunk=64)
        for r in tqdm(
            it, total=len(samples), desc=f"Checking {split}", unit="img", disable=not progress, leave=False
        ):
            (errors.append if isinstance(r, DataError) else out.append)(r)
        results[split] = out
    if len(errors) == 1:
        raise errors[0]
    if errors:
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(f"{len(errors)} bad files:\n  {shown}{more}", errors[0].path)
    return results


def _validate_args(name, splits, num_classes, ignore_index, class_names, palette):
    if not name.isidentifier() or name != name.lower():
        raise DataError(
            f"dataset name {name!r}: use lower case letters, digits and _ (it becomes a TFDS directory name)",
            name,
        )
    if not 1 <= num_classes <= 255:
        raise DataError(f"{name}: num_classes must be in 1..255 (8-bit masks), got {num_classes}", name)
    if not 0 <= ignore_index <= 255 or ignore_index < num_classes:
        raise DataError(
            f"{name}: ignore value must be in {num_classes}..255 (not a class id), got {ignore_index}", name
        )
    if len(class_names) != num_classes:
        raise DataError(f"{name}: {len(class_names)} class names for {num_classes} classes", name)
    if palette.shape != (num_classes, 3):
        raise DataError(f"{name}: palette must have shape ({num_classes}, 3), got {palette.shape}", name)
    if not splits:
        raise DataError(f"{name}: no splits to write", name)
    for split, samples in splits.items():
        if not samples:
            raise DataError(f"{name}: split {split!r} has no examples", name)
        seen: dict[str, Sample] = {}
        for s in samples:
            if s.file_name in seen:
                raise DataError(
                    f"{s.image_name()}: file name {s.file_name!r} occurs twice in split "
                    f"{split!r} (also {seen[s.file_name].image_name()})",
                    s.image_name(),
                )
            seen[s.file_name] = s


def _builder_class(name: str):
    import tensorflow_datasets as tfds

    class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """A prepared fcn_jax segmentation dataset (see fcn_jax.data.builder)."""

        VERSION = tfds.core.Version(DATASET_VERSION)
        RELEASE_NOTES = {DATASET_VERSION: "fcn_jax segmentation format: image, label, file_name."}
        spec: dict = {}
        # No checksums file to look up; this also avoids tfds' code_path lookup, which needs
        # the `importlib_resources` backport for builders defined in a package.
        code_path = None

        def _info(self):
            s = self.spec
            info = tfds.core.DatasetInfo(
                builder=self,
                description=s["description"],
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                        "label": tfds.features.Image(
                            shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
                        ),
                        "file_name": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage=s.get("homepage"),
                citation=s.get("citation"),
                metadata=tfds.core.MetadataDict(s["metadata"]),
                disable_shuffling=True,
            )
            # For a dataset not yet on disk tfds looks for pre-computed info in its GCS
            # bucket and leaks an empty temporary directory each time; a local dataset
            # has nothing there to find.
            info.initialize_from_bucket = lambda: None
            return info

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self.spec["splits"]}

        def _generate_examples(self, split):
            samples, checked = self.spec["splits"][split], self.spec["checked"][split]
            enc = lambda i: _encode(samples[i], checked[i])
            for i, ex in enumerate(_ordered_map(enc, list(range(len(samples))), self.spec["workers"])):
                yield samples[i].file_name, ex

    SegmentationBuilder.name = name
    SegmentationBuilder.__name__ = SegmentationBuilder.__qualname__ = f"{name}_builder"
    return SegmentationBuilder


def _class_stats(checked: list[_Checked], num_classes: int, ignore_index: int) -> dict:
    counts = np.zeros(256, np.int64)
    present_pixels = np.zeros(num_classes, np.int64)
    for c in checked:
        counts += c.counts
        labelled = int(c.counts[:num_classes].sum())
        present_pixels[c.counts[:num_classes] > 0] += labelled
    return {
        "num_images": len(checked),
        "pixels": counts[:num_classes].tolist(),
        "ignored": int(counts[ignore_index]),
        "labelled_pixels_of_images_with_class": present_pixels.tolist(),
    }


def write_dataset(
    name: str,
    out,
    splits: dict[str, list[Sample]],
    *,
    num_classes: int,
    ignore_index: int,
    class_names: list[str] | None = None,
    palette: np.ndarray | None = None,
    ignore_color=(0, 0, 0),
    description: str = "",
    homepage: str | None = None,
    citation: str | None = None,
    source: str = "",
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    extra_metadata: Callable[[], dict] | None = None,
) -> Path:
    """Check and write `splits` to `<out>/<name>/<VERSION>`; returns that directory.

    extra_metadata: called after every example has been checked (so it can report what the
    check found, e.g. colours mapped to the ignore value); its entries join metadata.json.
    """
    from fcn_jax.data.meta import default_palette

    class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    palette = default_palette(num_classes) if palette is None else np.asarray(palette, np.uint8)
    _validate_args(name, splits, num_classes, ignore_index, class_names, palette)
    out = Path(out).expanduser().resolve()
    target = out / name / DATASET_VERSION
    if target.exists() and not overwrite:
        raise DataError(
            f"{target}: already prepared; pass overwrite=True (--overwrite) to replace it", target
        )

    checked = check_samples(splits, num_classes, ignore_index, workers, progress)

    cls = _builder_class(name)
    cls.spec = {
        "description": description or f"{name}: semantic segmentation, {num_classes} classes.",
        "homepage": homepage,
        "citation": citation,
        "metadata": {
            "fcn_jax_format": FORMAT_VERSION,
            "num_classes": num_classes,
            "ignore_index": ignore_index,
            "class_names": class_names,
            "palette": palette.tolist(),
            "ignore_color": [int(v) for v in ignore_color],
            "source": source,
            **(extra_metadata() if extra_metadata is not None else {}),
        },
        "splits": splits,
        "checked": checked,
        "workers": _workers(workers),
    }
    index = {"format": FORMAT_VERSION, "splits": {}}
    for split, samples in splits.items():
        index["splits"][split] = {
            "file_names": [s.file_name for s in samples],
            "shapes": [list(c.shape) for c in checked[split]],
        }
    stats = {
        "format": FORMAT_VERSION,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "class_names": class_names,
        "splits": {s: _class_stats(c, num_classes, ignore_index) for s, c in checked.items()},
    }

    # Everything is built in a staging directory beside the target and swapped in only when
    # complete, so a failure, a full disk or an interrupt leaves any existing copy as it was.
    # The dataset sits at <out>/<name>/.<version>.*.partial/<name>/<version>, deeper than
    # `resolve_dataset_dir` looks from <out> or <out>/<name> and not a version directory to
    # TFDS, so a staging copy left behind by a hard kill is never mistaken for a dataset.
    created = _missing_parents(target.parent)
    staging = None
    try:
        try:
            check_writable_dir(target.parent, "dataset directory")
        except OSError as e:
            raise DataError(str(e), target.parent) from None
        staging = Path(tempfile.mkdtemp(prefix=f".{DATASET_VERSION}.", suffix=".partial", dir=target.parent))
        builder = _build(cls, staging, progress)
        built = Path(builder.data_dir)  # <staging>/<name>/<version>
        _check_record_order(builder, index)
        atomic_write_json(built / INDEX_FILE, index, indent=None)
        atomic_write_json(built / STATS_FILE, stats, indent=1)
        _fsync_tree(built)
        _swap_in(built, target, staging, overwrite)
    except OSError as e:
        raise DataError(
            f"{target}: writing the dataset failed ({type(e).__name__}: {e}); "
            + ("the existing copy is unchanged" if target.exists() else "nothing was written"),
            target,
        ) from e
    finally:
        if staging is not None:
            # Only the staging directory made above: after a swap it holds the old copy.
            shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            for d in reversed(created):  # directories this call created, if still empty
                with contextlib.suppress(OSError):
                    d.rmdir()
    return target


def _missing_parents(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _build(cls, staging: Path, progress: bool):
    """Run the TFDS builder with `staging` as its data_dir; returns the builder."""
    import tensorflow_datasets as tfds

    if not progress:
        tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="fcn_jax_dl_") as dl:
        builder = cls(data_dir=str(staging), file_format="array_record")
        builder.download_and_prepare(download_dir=dl)
    return builder


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root`, so that after the rename a crash cannot
    leave a dataset whose shards are still empty in the page cache."""
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(d))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE).

    Returns False where that is unavailable (another OS, an old libc or kernel, a file system
    that does not support it); the caller then falls back to two renames.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(built: Path, target: Path, staging: Path, overwrite: bool) -> None:
    """Put the finished dataset `built` at `target`; an old copy ends up inside `staging`.

    With an old copy the two are exchanged atomically where the OS allows; otherwise the old
    copy is renamed into `staging` first and put back if the second rename fails. Either way
    there is no moment at which `target` holds a partial dataset.
    """
    if not target.exists():
        built.rename(target)
    elif not overwrite:
        raise DataError(f"{target}: already prepared (appeared while writing); nothing replaced", target)
    elif not _exchange(built, target):
        aside = staging / "previous"
        target.rename(aside)
        try:
            built.rename(target)
        except BaseException:
            aside.rename(target)
            raise
    fsync_dir(target.parent)


def _check_record_order(builder, index: dict) -> None:
    """Read back the file names (images not decoded) to confirm record order = index order."""
    import tensorflow_datasets as tfds

    skip = {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}
    for split, entry in index["splits"].items():
        src = builder.as_data_source(split, decoders=skip)
        names = [_text(src[i]["file_name"]) for i in range(len(src))]
        if names != entry["file_names"]:  # not expected with disable_shuffling; reorder if so
            pos = {n: i for i, n in enumerate(entry["file_names"])}
            order = [pos[n] for n in names]
            entry["file_names"] = names
            entry["shapes"] = [entry["shapes"][i] for i in order]


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def iter_pairs(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Non-empty, non-comment lines of a list file, split on whitespace, with line numbers."""
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield n, line.split()
