"""Bad input fails at prepare time with one DataError whose message names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_jax import data
from fcn_jax.cli import main as cli_main
from fcn_jax.data import DataError


def _pair(root: Path, stem: str, size=(16, 20), mode="RGB", label=None):
    rng = np.random.default_rng(len(stem))
    img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(img).convert(mode).save(root / "images" / f"{stem}.png")
    lab = rng.integers(0, 3, size, dtype=np.uint8) if label is None else label
    Image.fromarray(lab).save(root / "masks" / f"{stem}.png")


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        _pair(tmp_path, f"ok{i}")
    return tmp_path


def prepare(root: Path, **kw):
    return data.prepare_folder(
        root / "images", root / "masks", root / "out", kw.pop("num_classes", 3), progress=False, **kw
    )


def raises_naming(path: Path, match: str, fn, *args, **kw) -> DataError:
    with pytest.raises(DataError, match=match) as e:
        fn(*args, **kw)
    assert str(path) in str(e.value), str(e.value)
    return e.value


def test_truncated_png(folder):
    p = folder / "images" / "ok1.png"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    raises_naming(p, "cannot decode image", prepare, folder)
    assert not (folder / "out" / "folder").exists()  # nothing written


def test_corrupt_label_png(folder):
    p = folder / "masks" / "ok2.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    raises_naming(p, "cannot decode label", prepare, folder)


def test_rgba_with_transparency_is_refused(folder):
    p = folder / "images" / "ok0.png"
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, "RGBA").save(p)
    raises_naming(p, "transparent", prepare, folder)


def test_opaque_rgba_and_grayscale_are_converted(folder):
    rgba = np.random.default_rng(0).integers(0, 256, (16, 20, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "images" / "ok0.png")
    gray = np.random.default_rng(1).integers(0, 256, (16, 20), dtype=np.uint8)
    Image.fromarray(gray, "L").save(folder / "images" / "ok1.png")
    out = prepare(folder, splits={"train": 1.0})
    ds = data.open_source(out, "train")
    got = {ds[i]["file_name"].decode(): ds[i]["image"] for i in range(len(ds))}
    np.testing.assert_array_equal(got["ok0.png"], rgba[..., :3])
    np.testing.assert_array_equal(got["ok1.png"], np.repeat(gray[..., None], 3, -1))


def test_label_size_differs_from_image(folder):
    p = folder / "masks" / "ok3.png"
    Image.fromarray(np.zeros((16, 21), np.uint8)).save(p)
    e = raises_naming(p, "differs from its image", prepare, folder)
    assert "ok3.png" in str(e) and "21x16" in str(e)


def test_label_value_out_of_range(folder):
    lab = np.zeros((16, 20), np.uint8)
    lab[3, 4] = 7
    lab[5, 5] = 255  # the ignore value is fine
    _pair(folder, "ok1", label=lab)
    e = raises_naming(folder / "masks" / "ok1.png", "outside 0..2", prepare, folder)
    assert "7 (1 px)" in str(e) and "255" not in str(e).split("ignore value")[1].split(":")[1]


def test_colour_mask_is_refused(folder):
    p = folder / "masks" / "ok0.png"
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(p)
    raises_naming(p, "single-channel", prepare, folder)


def test_missing_label_and_missing_image(folder):
    (folder / "masks" / "ok2.png").unlink()
    raises_naming(folder / "images" / "ok2.png", "no mask", prepare, folder)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "masks" / "orphan.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "masks" / "ok2.png")
    raises_naming(folder / "masks" / "orphan.png", "no image", prepare, folder)


def test_empty_directory(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    raises_naming(tmp_path / "images", "empty", prepare, tmp_path)


def test_list_file_names_missing_file(folder):
    lst = folder / "train.txt"
    lst.write_text("images/ok0.png masks/ok0.png\nimages/nope.png masks/ok1.png\n")
    e = raises_naming(folder / "images" / "nope.png", "does not exist", prepare, folder, list_file=lst)
    assert f"{lst}:2" in str(e)


def test_camvid_list_naming_missing_file(tmp_path):
    (tmp_path / "train.txt").write_text("train/a.png trainannot/a.png\n")
    (tmp_path / "val.txt").write_text("val/b.png valannot/b.png\n")
    with pytest.raises(DataError, match="does not exist") as e:
        data.prepare_camvid(tmp_path, tmp_path / "out", progress=False)
    assert str(tmp_path / "train" / "a.png") in str(e.value)


def test_several_bad_files_are_all_named(folder):
    for stem in ("ok0", "ok2"):
        (folder / "images" / f"{stem}.png").write_bytes(b"not a png")
    e = raises_naming(folder / "images" / "ok0.png", "2 bad files", prepare, folder)
    assert str(folder / "images" / "ok2.png") in str(e)


def test_bad_arguments(folder):
    with pytest.raises(DataError, match="ignore value"):
        prepare(folder, ignore_index=1)
    with pytest.raises(DataError, match="class names"):
        prepare(folder, class_names=["a", "b"])


def test_cli_reports_error_without_traceback(folder, capsys):
    (folder / "images" / "ok1.png").write_bytes(b"broken")
    rc = cli_main(
        [
            "prepare",
            "folder",
            "--images",
            str(folder / "images"),
            "--masks",
            str(folder / "masks"),
            "--num-classes",
            "3",
            "--out",
            str(folder / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(folder / "images" / "ok1.png") in err and "Traceback" not in err
