"""What the user already has survives bad input and failed writes; refusals are one clear line.

Covers: `prepare --overwrite` building beside the old dataset and swapping it in only when
complete; one image reader for prepare and predict (16-bit RGB refused, EXIF applied);
predict output names that never collide; `convert` of training-checkpoint wrappers and of
values that are not tensors; `export --platforms` and unwritable `--out`; atomic rewrites of
list files and of the class statistics cache. Failures are injected by replacing a low-level
writer or the per-example encoder, never the code under test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import CAMVID, make_camvid_subset, needs_camvid, require_camvid
from PIL import Image

from fcn_jax import data
from fcn_jax.cli import main as cli_main
from fcn_jax.commands.predict import _output_names
from fcn_jax.data import DataError, builder, imageio


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (hidden files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def disk_full_after_half(monkeypatch, only=lambda path: True):
    """Path.write_bytes / write_text write half their data, then fail as a full disk does."""

    def half(original):
        def write(self, content, *args, **kwargs):
            if not only(self):
                return original(self, content, *args, **kwargs)
            original(self, content[: len(content) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))

        return write

    monkeypatch.setattr(Path, "write_bytes", half(Path.write_bytes))
    monkeypatch.setattr(Path, "write_text", half(Path.write_text))


def png_bytes(array: np.ndarray, bit_depth: int) -> bytes:
    """A PNG written by hand: colour type 2 (RGB), 8 or 16 bits per channel, no filtering.
    PIL cannot write 16-bit RGB, which is why this exists."""
    h, w, _ = array.shape
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def camvid_crop(index: int = 0, size=(48, 64)):
    """(image uint8 (h, w, 3), label uint8 (h, w)): a crop of a real CamVid train pair."""
    img_rel, lab_rel = (CAMVID / "train.txt").read_text().split("\n")[index].split()
    img = np.asarray(Image.open(CAMVID / img_rel).convert("RGB"))
    lab = np.asarray(Image.open(CAMVID / lab_rel))
    h, w = size
    top, left = 150, 40 + 70 * index
    return img[top : top + h, left : left + w].copy(), lab[top : top + h, left : left + w].copy()


def sixteen_bit_rgb(index: int = 0) -> tuple[bytes, np.ndarray]:
    """A real 48-bit RGB PNG made from a CamVid crop, whose low bytes carry information, and
    the 16-bit array it holds."""
    img, _ = camvid_crop(index)
    rng = np.random.default_rng(index)
    deep = img.astype(np.uint16) * 256 + rng.integers(0, 256, img.shape, dtype=np.uint16)
    return png_bytes(deep, 16), deep


# -- 1. prepare --overwrite -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two real CamVid subsets: the dataset first prepared and the one replacing it."""
    require_camvid()
    tmp = tmp_path_factory.mktemp("io_safety_src")
    return make_camvid_subset(tmp / "old", {"train": 3, "val": 2}), make_camvid_subset(
        tmp / "new", {"train": 4, "val": 2}
    )


def prepare_cli(src: Path, out: Path, *extra: str) -> int:
    return cli_main(["prepare", "camvid", "--source", str(src), "--out", str(out), "--quiet", *extra])


def assert_readable(out: Path, src: Path, splits: dict[str, int]) -> None:
    """load_meta, open_source and plain tfds.builder_from_directory all read the dataset at
    its final path, with the source's first validation image."""
    import tensorflow_datasets as tfds

    target = out / "camvid" / "1.0.0"
    meta = data.load_meta(out)
    assert meta.data_dir == target and meta.splits == splits
    ex = data.open_source(out, "val")[0]
    name = ex["file_name"].decode()
    np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(src / "val" / name)))
    b = tfds.builder_from_directory(str(target))
    assert {k: v.num_examples for k, v in b.info.splits.items()} == splits
    assert b.as_data_source("train")[len(b.as_data_source("train")) - 1]["image"].shape == (360, 480, 3)
    assert data.load_index(out, "train")["file_names"][0] == "0001TP_006690.png"
    # nothing left but the dataset: no staging directory, no old copy, no temporary file
    assert sorted(p.name for p in (out / "camvid").iterdir()) == ["1.0.0"]
    assert not [p for p in target.iterdir() if p.name.startswith(".")]
    # the recorded files name no temporary directory (TFDS could have written absolute paths)
    for p in target.glob("*.json"):
        assert ".partial" not in p.read_text() and "incomplete" not in p.read_text(), p


class Boom(Exception):
    """An unexpected error (a bug, say) inside the TFDS writer."""


FAILURES = {
    "disk full while encoding": OSError(errno.ENOSPC, "No space left on device"),
    "bad file found while encoding": DataError("src/train/x.png: changed since it was checked", "x.png"),
    "interrupt (Ctrl-C)": KeyboardInterrupt(),
    "bug in the writer": Boom("unexpected"),
}


@needs_camvid
@pytest.mark.parametrize("failure", list(FAILURES), ids=list(FAILURES))
def test_failed_overwrite_leaves_the_old_dataset_then_a_good_one_replaces_it(
    failure, sources, tmp_path, monkeypatch, capsys
):
    old_src, new_src = sources
    out = tmp_path / "out"
    assert prepare_cli(old_src, out) == 0
    before = tree_hashes(out)
    capsys.readouterr()

    encode, calls = builder._encode, []

    def encode_failing_on_third(sample, checked):
        calls.append(sample.file_name)
        if len(calls) == 3:
            raise FAILURES[failure]
        return encode(sample, checked)

    monkeypatch.setattr(builder, "_encode", encode_failing_on_third)
    if failure == "disk full while encoding":
        # via the CLI: one line naming the dataset, exit 2
        assert prepare_cli(new_src, out, "--overwrite", "--workers", "1") == 2
        err = one_line_error(capsys)
        assert str(out / "camvid" / "1.0.0") in err and "No space left" in err and "unchanged" in err
    elif failure == "interrupt (Ctrl-C)":
        # via the CLI: one line, no traceback, the shell's exit code for SIGINT
        assert prepare_cli(new_src, out, "--overwrite", "--workers", "1") == 130
        assert one_line_error(capsys) == "fcn-jax prepare: interrupted"
    else:
        expected = type(FAILURES[failure])
        with pytest.raises(expected):
            data.prepare_camvid(new_src, out, overwrite=True, workers=1, progress=False)
    assert len(calls) >= 3  # the failure really happened part-way through writing
    assert tree_hashes(out) == before
    assert_readable(out, old_src, {"train": 3, "val": 2})

    monkeypatch.setattr(builder, "_encode", encode)
    assert prepare_cli(new_src, out) == 2  # without --overwrite: refused, nothing touched
    assert "already prepared" in one_line_error(capsys)
    assert tree_hashes(out) == before

    assert prepare_cli(new_src, out, "--overwrite") == 0
    assert tree_hashes(out) != before
    assert_readable(out, new_src, {"train": 4, "val": 2})


@needs_camvid
def test_failed_index_write_and_failed_final_rename_leave_the_old_dataset(sources, tmp_path, monkeypatch):
    old_src, new_src = sources
    out = tmp_path / "out"
    data.prepare_camvid(old_src, out, progress=False)
    before = tree_hashes(out)

    # a full disk while writing fcn_jax_index.json, after every record was written
    disk_full_after_half(monkeypatch, only=lambda p: builder.INDEX_FILE in p.name)
    with pytest.raises(DataError, match="No space left"):
        data.prepare_camvid(new_src, out, overwrite=True, progress=False)
    assert tree_hashes(out) == before
    monkeypatch.undo()

    # where the atomic exchange is not available the old copy is moved aside first; if the
    # new one then cannot be moved in, the old one is put back
    monkeypatch.setattr(builder, "_exchange", lambda a, b: False)
    rename = Path.rename

    def rename_failing_for_new(self, dest):
        if self.name == "1.0.0" and ".partial" in str(self) and Path(dest) == out / "camvid" / "1.0.0":
            raise OSError(errno.EIO, "Input/output error", str(self))
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename_failing_for_new)
    with pytest.raises(DataError, match="Input/output error"):
        data.prepare_camvid(new_src, out, overwrite=True, progress=False)
    assert tree_hashes(out) == before
    assert_readable(out, old_src, {"train": 3, "val": 2})

    monkeypatch.setattr(Path, "rename", rename)  # the two-rename fallback on its own
    data.prepare_camvid(new_src, out, overwrite=True, progress=False)
    assert_readable(out, new_src, {"train": 4, "val": 2})


@needs_camvid
def test_failed_first_prepare_leaves_nothing(sources, tmp_path, monkeypatch):
    old_src, _ = sources
    out = tmp_path / "out"

    def encode_disk_full(sample, checked):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builder, "_encode", encode_disk_full)
    with pytest.raises(DataError, match="nothing was written"):
        data.prepare_camvid(old_src, out, progress=False)
    assert not out.exists()  # not even an empty out/camvid/ that looks half-prepared


@needs_camvid
def test_dataset_in_an_unwritable_place_is_one_line(sources, tmp_path, capsys):
    old_src, _ = sources
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    assert prepare_cli(old_src, blocker / "out") == 2
    assert str(blocker / "out") in one_line_error(capsys)
    assert blocker.read_text() == "a file where the output folder should be"


# -- 2. one image reader; 16-bit RGB refused ---------------------------------------------------


@needs_camvid
def test_sixteen_bit_rgb_png_is_refused_by_prepare_naming_the_file(tmp_path, capsys):
    encoded, deep = sixteen_bit_rgb()
    # what makes it dangerous: PIL opens it as plain 8-bit RGB, the low bytes silently dropped
    (tmp_path / "probe.png").write_bytes(encoded)
    with Image.open(tmp_path / "probe.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), (deep >> 8).astype(np.uint8))

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for k in range(3):
        img, lab = camvid_crop(k)
        Image.fromarray(img).save(images / f"c{k}.png")
        Image.fromarray(lab).save(masks / f"c{k}.png")
    # a 16-bit *label* (grey, values that fit 8 bits) stays accepted
    lab16 = np.asarray(Image.open(masks / "c2.png")).astype(np.uint16)
    Image.fromarray(lab16).save(masks / "c2.png")
    assert Image.open(masks / "c2.png").mode.startswith("I;16")
    out = data.prepare_folder(images, masks, tmp_path / "ok", 11, 11, splits={"train": 1.0}, progress=False)
    assert data.load_meta(out).splits == {"train": 3}

    bad = images / "c1.png"
    bad.write_bytes(encoded)
    argv = ["prepare", "folder", "--images", str(images), "--masks", str(masks), "--num-classes", "11"]
    argv += ["--ignore-index", "11", "--split", "train=1", "--out", str(tmp_path / "out"), "--quiet"]
    assert cli_main(argv) == 2
    err = one_line_error(capsys)
    assert str(bad) in err and "8 bits per channel" in err and "RGB;16B" in err
    assert not (tmp_path / "out" / "folder").exists()


@needs_camvid
def test_predict_reader_is_the_prepare_reader(tmp_path):
    img, _ = camvid_crop(1)
    encoded, _ = sixteen_bit_rgb(1)
    cases = {"deep.png": encoded}
    h, w = 6, 5  # a 16-bit PPM (maximum value 65535), which PIL would scale to 8 bits
    cases["deep.ppm"] = b"P6\n%d %d\n65535\n" % (w, h) + img[:h, :w].astype(">u2").tobytes()
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="8 bits per channel") as e:
            imageio.read_rgb(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)
    # the same refusals as prepare, with the same words
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "holes.png")
    with pytest.raises(DataError, match="transparent"):
        imageio.read_rgb(tmp_path / "holes.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: image file is empty"):
        imageio.read_rgb(tmp_path / "empty.png")
    # EXIF orientation 6 (rotate 90 degrees clockwise) is applied for predict
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "turned.png", exif=exif)
    np.testing.assert_array_equal(imageio.read_rgb(tmp_path / "turned.png"), np.rot90(img, -1))
    # an 8-bit PNG of the same kind (written by the same hand-made encoder) is read exactly
    (tmp_path / "plain.png").write_bytes(png_bytes(img, 8))
    np.testing.assert_array_equal(imageio.read_rgb(tmp_path / "plain.png"), img)


# -- 3. predict output names -----------------------------------------------------------------


def test_output_names_are_unique_and_keep_real_stems():
    files = [Path("a.png"), Path("a.jpg"), Path("a_1.png")]
    names = _output_names(files)
    assert names == ["a", "a_2", "a_1"]  # a_1.png keeps its own name; a.jpg skips it
    assert _output_names(files) == names
    names = _output_names(
        [Path("x/a.png"), Path("y/a.png"), Path("a_1.jpg"), Path("a_2.bmp"), Path("z/a.png")]
    )
    assert names == ["a", "a_3", "a_1", "a_2", "a_4"]
    # names differing only in case would share files on macOS / Windows
    names = _output_names([Path("A.png"), Path("a.png"), Path("A_1.png")])
    assert len({n.casefold() for n in names}) == 3 and names[0] == "A" and names[2] == "A_1"


@needs_camvid
def test_cli_predict_gives_every_input_its_own_outputs(tmp_path, capsys):
    """Needs a run directory in the training loop's format: made by tests/test_predict.py's
    write_run, which follows that format as it changes."""
    from test_predict import camvid_meta, random_params, write_run

    from fcn_jax import visualize
    from fcn_jax.models import FCN

    run = write_run(tmp_path / "run", random_params(FCN(11, "8s")), camvid_meta())
    src = tmp_path / "in"
    src.mkdir()
    crops = [camvid_crop(k)[0] for k in range(3)]
    Image.fromarray(crops[0]).save(src / "a.png")
    Image.fromarray(crops[1]).save(src / "a.jpg", quality=95)
    Image.fromarray(crops[2]).save(src / "a_1.png")
    deep, _ = sixteen_bit_rgb(0)
    (src / "deep.png").write_bytes(deep)
    out = tmp_path / "out"
    code = cli_main(["predict", "--checkpoint", str(run), str(src), "--out", str(out), "--quiet"])
    assert code == 1  # deep.png is refused, the others are written
    err = capsys.readouterr().err
    assert str(src / "deep.png") in err and "8 bits per channel" in err
    for sub in ("color", "overlay", "labels"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png", "a_1.png", "a_2.png"]
    # each output belongs to its own input: the overlay is that input blended with its labels
    palette = camvid_meta().palette
    # inputs in sorted order a.jpg, a.png, a_1.png: a.jpg keeps "a", a.png skips a_1.png's name
    for name, path in (("a", src / "a.jpg"), ("a_2", src / "a.png"), ("a_1", src / "a_1.png")):
        labels = np.asarray(Image.open(out / "labels" / f"{name}.png"))
        expect = visualize.overlay(imageio.read_rgb(path), labels, palette, 0.5)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "overlay" / f"{name}.png")), expect)


# -- 4. convert: checkpoint wrappers, values that are not tensors -----------------------------


@pytest.fixture(scope="module")
def torch_state_dict():
    import torch
    from torch_twin import TorchAlexNet

    torch.manual_seed(0)
    return TorchAlexNet().state_dict()


def test_convert_unwraps_a_training_checkpoint(torch_state_dict, tmp_path, capsys):
    import torch

    plain, wrapped = tmp_path / "plain.pth", tmp_path / "ckpt.pth"
    torch.save(torch_state_dict, plain)
    torch.save({"epoch": 90, "state_dict": torch_state_dict, "optimizer": {"lr": 0.01}}, wrapped)
    assert cli_main(["convert", str(plain), str(tmp_path / "plain.msgpack")]) == 0
    assert "using the state_dict" not in capsys.readouterr().out
    assert cli_main(["convert", str(wrapped), str(tmp_path / "wrapped.msgpack")]) == 0
    printed = capsys.readouterr().out
    notes = [l for l in printed.splitlines() if "using the state_dict stored under 'state_dict'" in l]
    assert len(notes) == 1 and str(wrapped) in notes[0]
    assert (tmp_path / "wrapped.msgpack").read_bytes() == (tmp_path / "plain.msgpack").read_bytes()


@pytest.mark.parametrize("key", ["model_state_dict", "model"])
def test_other_wrapper_keys_are_unwrapped(key, tmp_path):
    import torch

    from fcn_jax import convert

    inner = {"features.0.weight": torch.ones(2, 3), "features.0.bias": torch.zeros(2)}
    torch.save({key: inner, "epoch": 3, "best_miou": 0.5}, tmp_path / "c.pth")
    notes = []
    sd = convert.load_torch_state_dict(tmp_path / "c.pth", note=notes.append)
    assert set(sd) == set(inner) and len(notes) == 1 and repr(key) in notes[0]
    # a real state_dict whose parameter happens to be called "model" is left alone
    torch.save({"model": torch.ones(2), "other": torch.ones(1)}, tmp_path / "p.pth")
    assert set(convert.load_torch_state_dict(tmp_path / "p.pth", note=notes.append)) == {"model", "other"}
    assert len(notes) == 1


@pytest.mark.parametrize("value", [3, "relu", None], ids=["int", "str", "None"])
def test_convert_names_a_value_that_is_not_a_tensor(value, tmp_path, capsys):
    import torch

    sd = {"features.0.weight": torch.ones(64, 3, 11, 11), "features.3.weight": value}
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, bad)  # also inside a wrapper
    assert cli_main(["convert", str(bad), str(tmp_path / "o.msgpack")]) == 2
    err = one_line_error(capsys)
    assert "'features.3.weight'" in err and type(value).__name__ in err and str(bad) in err
    assert not (tmp_path / "o.msgpack").exists()


def test_convert_to_an_unwritable_place_is_one_line(torch_state_dict, tmp_path, capsys):
    import torch

    torch.save(torch_state_dict, tmp_path / "a.pth")
    (tmp_path / "file").write_text("x")
    assert cli_main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "file" / "o.msgpack")]) == 2
    err = one_line_error(capsys)
    assert "OUT directory" in err and str(tmp_path / "file") in err
    assert cli_main(["convert", str(tmp_path / "a.pth"), str(tmp_path)]) == 2  # a directory
    assert "is a directory" in one_line_error(capsys)


# -- 5. export ---------------------------------------------------------------------------------


def test_export_refuses_an_unknown_platform_naming_the_argument(tmp_path, capsys):
    from fcn_jax import export

    argv = ["export", "--checkpoint", str(tmp_path / "no_run"), "--out", str(tmp_path / "m.jaxexport")]
    assert cli_main([*argv, "--platforms", "cpu,tpux"]) == 2
    err = one_line_error(capsys)
    assert "--platforms cpu,tpux" in err and "'tpux'" in err and "allowed: cpu, cuda, rocm, tpu" in err
    assert cli_main([*argv, "--platforms", " , "]) == 2
    assert "--platforms" in one_line_error(capsys)
    with pytest.raises(
        ValueError, match=r"platforms: unknown platform 'gpu' \(allowed: cpu, cuda, rocm, tpu\)"
    ):
        export.export_model(None, {}, None, tmp_path / "m.jaxexport", 8, 8, platforms=("cpu", "gpu"))
    assert list(tmp_path.iterdir()) == []


def test_export_to_an_unwritable_place_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for out in (tmp_path / "file" / "m.jaxexport", tmp_path / "dir"):
        argv = ["export", "--checkpoint", str(tmp_path / "no_run"), "--out", str(out)]
        assert cli_main(argv) == 2
        err = one_line_error(capsys)
        assert err.startswith("fcn-jax export: --out") and str(out.parent if out.suffix else out) in err


def test_failed_export_leaves_the_previous_export(tmp_path, monkeypatch):
    from test_predict import camvid_meta, random_params

    from fcn_jax import export
    from fcn_jax.models import FCN

    model = FCN(11, "32s")
    path = tmp_path / "m.jaxexport"
    export.export_model(model, random_params(model, 1), camvid_meta(), path, 32, 48, platforms=("cpu",))
    before = tree_hashes(tmp_path)
    assert sorted(before) == ["m.jaxexport", "m.jaxexport.json", "m.jaxexport.weights.npz"]

    savez = np.savez

    def savez_disk_full(file, **arrays):
        savez(file, **arrays)
        if isinstance(file, (str, Path)):  # given a file name rather than an open file
            file = open(str(file) if str(file).endswith(".npz") else f"{file}.npz", "rb+")
        file.seek(0, 2)
        file.truncate(file.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export_model(model, random_params(model, 2), camvid_meta(), path, 32, 48, platforms=("cpu",))
    assert tree_hashes(tmp_path) == before  # all three as they were, no temporary left
    monkeypatch.undo()
    new = export.export_model(model, random_params(model, 2), camvid_meta(), path, 32, 48, platforms=("cpu",))
    assert tree_hashes(tmp_path)["m.jaxexport.weights.npz"] != before["m.jaxexport.weights.npz"]
    assert export.load(path).meta["weights_sha256"] == new["weights_sha256"]


# -- 6. other files written in place -----------------------------------------------------------


@needs_camvid
def test_class_stats_cache_is_never_left_truncated(sources, tmp_path, monkeypatch):
    out = data.prepare_camvid(sources[0], tmp_path / "out", progress=False)
    stats = out / "class_stats.json"
    saved = json.loads(stats.read_text())
    del saved["splits"]["val"]  # as if prepared before val stats were cached
    stats.write_text(json.dumps(saved))
    before = stats.read_bytes()
    disk_full_after_half(monkeypatch)
    counts = data.class_counts(out, "val")  # computed; caching fails on the full disk
    assert counts.sum() > 0
    assert stats.read_bytes() == before  # not half a file
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    np.testing.assert_array_equal(data.class_counts(out, "val"), counts)
    assert "val" in json.loads(stats.read_text())["splits"]


@needs_camvid
def test_downloaded_list_files_are_never_left_truncated(sources, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    shutil.copytree(sources[0], remote)
    dest = tmp_path / "dl"
    disk_full_after_half(monkeypatch, only=lambda p: p.name.endswith("train.txt") or ".train.txt" in p.name)
    with pytest.raises(DataError, match="train.txt"):
        data.download_camvid(dest, base_url=remote.as_uri(), progress=False)
    assert not (dest / "train.txt").exists()  # a truncated list would silently drop examples
    monkeypatch.undo()
    data.download_camvid(dest, base_url=remote.as_uri(), progress=False)
    assert (dest / "train.txt").read_text() == (remote / "train.txt").read_text()
