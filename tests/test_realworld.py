"""Real-world data and inference: colour-coded masks, tiles for large images, test-time scales,
per-image errors in `fcn-jax eval` and the worst images in `fcn-jax report`.

Kept fast (the whole suite is long on two cores): one model, FCN-32s with XLA's convolutions
(about 2 s per compile here, against 6-7 s with Winograd), one module-scoped `Segmenter` at
batch size 1, so that every test reuses its compiled programs (one per bucket and output),
and crops of 64x96 whose 0.75 scale and tiles fall in the same 65x97 bucket.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from test_predict import camvid_crops, camvid_meta, random_params, write_run

from fcn_jax import cli, data, visualize
from fcn_jax.data.camvid import CLASS_NAMES
from fcn_jax.models import FCN
from fcn_jax.ops import OpSet
from fcn_jax.predict import Segmenter, tile_starts, tile_weights

IGNORE = 11  # CamVid's void


def _palette(camvid_dir: Path) -> np.ndarray:
    """camvid11_palette.png as (256, 3): entry i is the colour of mask value i (11: void)."""
    return np.asarray(Image.open(camvid_dir / "camvid11_palette.png").convert("RGB")).reshape(-1, 3)


def _labels(prepared: Path, split: str) -> dict[str, np.ndarray]:
    """file name -> stored label of every example (images not decoded)."""
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(str(prepared)).as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    return {_name(source[i]): source[i]["label"][..., 0] for i in range(len(source))}


# -- colour-coded masks -----------------------------------------------------------------------


def test_camvid_val_recoloured_with_its_palette_prepares_to_the_index_masks_labels(camvid_dir, tmp_path):
    """All 101 val masks drawn in camvid11_palette.png's colours (void in entry 11's black) and
    converted back by `--color-map` give the labels of the dataset prepared from the index masks."""
    palette = _palette(camvid_dir)
    root = tmp_path / "src"
    for sub in ("images", "index", "colour"):
        (root / sub).mkdir(parents=True)
    lines = (camvid_dir / "val.txt").read_text().split()
    for img, lab in zip(lines[0::2], lines[1::2]):
        name = Path(img).name
        (root / "images" / name).symlink_to(camvid_dir / img)
        (root / "index" / name).symlink_to(camvid_dir / lab)
        Image.fromarray(palette[np.asarray(Image.open(camvid_dir / lab))]).save(
            root / "colour" / name, compress_level=1
        )
    with Image.open(root / "colour" / name) as im:
        assert im.mode == "RGB"  # really colour-coded
    common = dict(num_classes=11, ignore_index=IGNORE, splits={"val": 1.0}, progress=False)
    by_colour = data.prepare_folder(
        root / "images",
        root / "colour",
        tmp_path / "out",
        name="by_colour",
        color_map=camvid_dir / "camvid11_palette.png",
        **common,
    )
    by_index = data.prepare_folder(
        root / "images", root / "index", tmp_path / "out", name="by_index", **common
    )
    a, b = _labels(by_colour, "val"), _labels(by_index, "val")
    assert len(a) == 101 and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert sum(int((v == IGNORE).sum()) for v in a.values()) > 0  # void went through the map too
    meta = data.load_meta(by_colour)
    np.testing.assert_array_equal(meta.palette, palette[:11])  # display colours from the map
    recorded = json.loads((by_colour / "metadata.json").read_text())["color_map"]
    assert recorded["ignore_colors"] == [[0, 0, 0]] and recorded["files_with_unknown_colors"] == {}


@pytest.fixture(scope="module")
def colour_crops(tmp_path_factory, camvid_dir):
    """Three 64x96 val crops with their index masks and the same masks in CamVid's colours."""
    palette = _palette(camvid_dir)
    root = tmp_path_factory.mktemp("colour_crops")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    truth = {}
    for k, (stem, img, lab) in enumerate(camvid_crops(camvid_dir, "val", 3)):
        name = f"{stem}_{k}"
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(palette[lab]).save(root / "masks" / f"{name}.png")
        truth[f"{name}.png"] = lab
    return root, truth


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unknown_colours_are_refused_per_file_or_mapped_to_ignore_and_reported(
    colour_crops, camvid_dir, tmp_path, capsys
):
    src, truth = colour_crops
    root = _copy(src, tmp_path / "src")
    names = list(truth)
    # A stray brush colour in one mask: 37 + 5 pixels.
    bad = np.asarray(Image.open(root / "masks" / names[0])).copy()
    bad[0, :37] = (255, 0, 255)
    bad[-1, -5:] = (250, 1, 1)
    Image.fromarray(bad).save(root / "masks" / names[0])
    # Another mask saved as JPEG: flat colours drift a few levels, class edges blend.
    jpeg = Path(names[2]).stem + ".jpg"
    with Image.open(root / "masks" / names[2]) as im:
        im.save(root / "masks" / jpeg, quality=90)
    (root / "masks" / names[2]).unlink()
    palette = str(camvid_dir / "camvid11_palette.png")
    args = ["prepare", "folder", "--images", str(root / "images"), "--masks", str(root / "masks")]
    args += ["--num-classes", "11", "--ignore-index", "11", "--color-map", palette, "--split", "val=1"]
    args += ["--out", str(tmp_path / "out"), "--quiet"]

    assert cli.main(args) == 2
    err = capsys.readouterr().err
    lines = [l.strip() for l in err.splitlines() if "not in the colour map" in l]
    assert len(lines) == 2, err  # one line per bad file, naming it, with counts
    first = next(l for l in lines if names[0] in l)
    assert "42 pixels (0.68 %) of 2 colours: (255, 0, 255) 37 px, (250, 1, 1) 5 px" in first
    assert "--unknown-colors ignore" in first
    assert any(jpeg in l for l in lines)
    assert not (tmp_path / "out" / "folder").exists()

    ignored = [*args, "--unknown-colors", "ignore", "--color-tolerance", "24"]
    assert cli.main(ignored) == 0
    err = capsys.readouterr().err
    warnings = [l for l in err.splitlines() if l.startswith("fcn-jax prepare: warning:")]
    assert len(warnings) == 2 and any("42 pixels" in w and "ignore value 11" in w for w in warnings), err
    labels = _labels(data.resolve_dataset_dir(tmp_path / "out"), "val")
    stray = np.all(bad == (255, 0, 255), -1) | np.all(bad == (250, 1, 1), -1)
    np.testing.assert_array_equal(labels[names[0]], np.where(stray, IGNORE, truth[names[0]]))
    np.testing.assert_array_equal(labels[names[1]], truth[names[1]])
    recorded = json.loads((data.resolve_dataset_dir(tmp_path / "out") / "metadata.json").read_text())
    files = recorded["color_map"]["files_with_unknown_colors"]
    assert recorded["color_map"]["unknown_colors"] == "ignore" and len(files) == 2
    assert recorded["color_map"]["tolerance"] == 24
    assert next(v for k, v in files.items() if k.endswith(names[0]))["pixels"] == 42
    # The JPEG mask: drifted colours taken within the tolerance, the blended edges ignored.
    lab, true = labels[names[2]], truth[names[2]]  # named by its image
    unknown = next(v for k, v in files.items() if k.endswith(jpeg))["pixels"]
    assert 0 < unknown <= (lab == IGNORE).sum() < 0.3 * lab.size
    assert ((lab != true) & (lab != IGNORE)).mean() < 0.01


def test_text_colour_maps_name_the_classes_and_ambiguous_maps_are_refused(colour_crops, camvid_dir, tmp_path):
    src, truth = colour_crops
    palette = _palette(camvid_dir)
    text = "# CamVid, SegNet colours\n" + "".join(
        f"{r} {g} {b} {name}\n" for (r, g, b), name in zip(palette[:11], CLASS_NAMES)
    )
    cmap = tmp_path / "camvid.txt"
    cmap.write_text(text + "0 0 0 ignore\n")
    out = data.prepare_folder(
        src / "images", src / "masks", tmp_path / "out", ignore_index=IGNORE, splits={"val": 1.0},
        color_map=cmap, progress=False,
    )  # fmt: skip
    meta = data.load_meta(out)
    assert meta.num_classes == 11 and meta.class_names == CLASS_NAMES  # from the map
    for name, label in _labels(out, "val").items():
        np.testing.assert_array_equal(label, truth[name])

    def refused(map_text: str, match: str, **kwargs):
        cmap.write_text(map_text)
        with pytest.raises(data.DataError, match=match):
            data.load_color_map(cmap, ignore_index=IGNORE, **kwargs)

    twice = text.replace("0 128 192 Bicyclist", "64 64 0 Bicyclist")  # Pedestrian's colour
    refused(twice, r"colour \(64, 64, 0\) is given to both class 9 'Pedestrian' \(line 11\) and "
            r"class 10 'Bicyclist' \(line 12\)")  # fmt: skip
    refused(text + "128 128 128 ignore\n", r"class 0 'Sky' \(line 2\) and the ignore value \(line 13\)")
    refused(text + "1 2 ignore\n", r"camvid.txt:13: expected 'R G B name'")
    refused(text + "1 2 300 x\n", r"camvid.txt:13: expected a colour R,G,B with values 0..255")
    refused(text, "names 11 classes, but --num-classes is 12", num_classes=12)
    # A palette whose ignore entry repeats a class colour: say so, and how to give it instead.
    pal = tmp_path / "pal.png"
    Image.fromarray(np.concatenate([palette[:11], palette[:1]])[None]).save(pal)
    with pytest.raises(data.DataError, match=r"palette entry 11.*--ignore-color"):
        data.load_color_map(pal, 11, IGNORE)
    assert data.load_color_map(pal, 11, IGNORE, ignore_colors=["0,0,0"]).ignore_colors == [(0, 0, 0)]


# -- tiles ------------------------------------------------------------------------------------


def test_tile_plan_covers_evenly_and_the_weights_cross_fade():
    assert tile_starts(480, 480, 64) == [0]  # one window covers the axis
    assert tile_starts(100, 64, 16) == [0, 36]
    starts = tile_starts(4000, 480, 64)
    gaps = np.diff(starts)
    assert starts[0] == 0 and starts[-1] == 4000 - 480 and len(starts) == 10
    assert gaps.max() - gaps.min() <= 1 and 480 - gaps.max() >= 64  # even, each overlap >= 64
    assert len(tile_starts(4000, 480, 64)) == np.ceil((4000 - 64) / (480 - 64))  # the fewest
    # Two windows overlapping by exactly the ramp length: weights sum to 1 across the seam.
    n, t, r = 2 * 96 - 16, 96, 16
    total = np.zeros(n, np.float32)
    for s in tile_starts(n, t, r):
        total[s : s + t] += tile_weights(s, t, n, r)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    w = tile_weights(0, t, n, r)
    assert w[0] == 1.0 and w[-1] == pytest.approx(1 / 17)  # image border: no ramp; inner edge: low


@pytest.fixture(scope="module")
def model():
    return FCN(11, "32s", ops=OpSet(conv="xla"))


@pytest.fixture(scope="module")
def params(model):
    return random_params(model, seed=3)


@pytest.fixture(scope="module")
def seg(model, params):
    return Segmenter(model, params, camvid_meta(), batch_size=1)


@pytest.fixture(scope="module")
def crops(camvid_dir):
    return camvid_crops(camvid_dir, "val", 3)


@pytest.fixture(scope="module")
def street(camvid_dir):
    """A 100x150 crop of a real val frame: larger than a 64x96 tile in both directions."""
    return camvid_crops(camvid_dir, "val", 1, size=(100, 150), top=140)[0][1]


def test_one_tile_covering_the_image_is_whole_image_inference_bit_for_bit(seg, crops):
    img = crops[0][1]  # 64x96
    plain = seg.predict_proba(img)
    for tile in ((64, 96), (100, 200), (361, 481)):  # exactly the image, and larger: no padding up
        np.testing.assert_array_equal(seg.predict_proba(img, tile=tile, overlap=8), plain)
    labels = seg.predict(img, tile=(64, 96), overlap=8)
    np.testing.assert_array_equal(labels, seg.predict(img))
    np.testing.assert_array_equal(labels, plain.argmax(-1))


def test_overlapping_tiles_average_the_window_logits(seg, street, tmp_path, monkeypatch, capsys):
    tiled = seg.predict_logits(street, tile=(64, 96), overlap=16)
    # By hand: every window's own logits (plain inference of the crop), weighted and averaged.
    acc, wsum = np.zeros((100, 150, 11)), np.zeros((100, 150, 1))
    for y in tile_starts(100, 64, 16):
        for x in tile_starts(150, 96, 16):
            w = (tile_weights(y, 64, 100, 16)[:, None] * tile_weights(x, 96, 150, 16)[None])[..., None]
            acc[y : y + 64, x : x + 96] += w * seg.predict_logits(street[y : y + 64, x : x + 96])
            wsum[y : y + 64, x : x + 96] += w
    np.testing.assert_allclose(tiled, acc / wsum, atol=2e-5)
    labels = seg.predict(street, tile=(64, 96), overlap=16)
    np.testing.assert_array_equal(labels, tiled.argmax(-1))

    # `fcn-jax predict --tile --overlap` passes them to the segmenter (loading is tested elsewhere).
    def from_checkpoint(path, **kwargs):
        assert kwargs == {"batch_size": 1, "flip": False, "scales": (1.0,), "tile": (64, 96), "overlap": 16}
        clone = copy.copy(seg)  # shares the compiled programs
        clone.tile, clone.overlap = kwargs["tile"], kwargs["overlap"]
        return clone

    monkeypatch.setattr(Segmenter, "from_checkpoint", staticmethod(from_checkpoint))
    Image.fromarray(street).save(tmp_path / "street.png")
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", "x", str(tmp_path / "street.png"), "--out", str(out), "--quiet"]
    assert cli.main([*argv, "--tile", "64,96", "--overlap", "16", "--batch-size", "1"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "labels" / "street.png")), labels)
    assert cli.main([*argv, "--tile", "64,96", "--overlap", "64"]) == 2
    assert "overlap must be in 0..63" in capsys.readouterr().err


# Stated bound: tiled inference with a 360x480 tile at batch size 1 needs at most the
# parameters plus this much device memory, whatever the image size (measured: 19.1 MiB).
TILE_ACTIVATION_BOUND = 32 << 20


def test_a_large_image_runs_in_one_tile_program_within_a_memory_bound(seg, camvid_dir):
    """Device memory is bounded by the tile, not the image: a 1080x1440 photo (a val frame
    upscaled 3x) runs as 16 windows of 360x480 through one compiled program, and that
    program's footprint, by XLA's memory analysis (on CPU `Device.memory_stats()` is None),
    is the parameters plus less than TILE_ACTIVATION_BOUND. Its float32 logits alone would
    take 1080 * 1440 * 11 * 4 B = 65 MiB on the device run whole.

    The issue's 4000x3000 photo takes the same one program (90 windows), too long for the
    suite on two cores: benchmarks/tiled_inference.py measures it (numbers in docs/inference.md)."""
    line = (camvid_dir / "val.txt").read_text().split()[0]
    frame = Image.open(camvid_dir / line).convert("RGB")
    big = np.asarray(frame.resize((1440, 1080), Image.BICUBIC))
    traces, tiles = seg.num_traces, seg.num_tiles
    labels = seg.predict(big, tile=(360, 480), overlap=32)
    assert labels.shape == (1080, 1440) and len(np.unique(labels)) > 1
    assert seg.num_tiles - tiles == len(tile_starts(1080, 360, 32)) * len(tile_starts(1440, 480, 32)) == 16
    assert seg.num_traces - traces == 1  # one program for all 16 windows
    shape = [1, *seg.bucket(360, 480), 3]  # 385x481: the model pads 360 rows to the same tensor
    tile_programs = [p for p in seg.memory_stats()["programs"] if p["batch_shape"] == shape]
    assert len(tile_programs) == 1
    program = tile_programs[0]
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(seg.params))
    assert param_bytes < program["argument_bytes"] < param_bytes + (1 << 20)  # + the uint8 batch
    activations = program["total_bytes"] - param_bytes
    assert 0 < activations < TILE_ACTIVATION_BOUND < 1080 * 1440 * 11 * 4
    print(f"\ntile program: parameters {param_bytes / 2**20:.1f} MiB + {activations / 2**20:.1f} MiB")


# -- test-time augmentation -------------------------------------------------------------------


def _resize(a: np.ndarray, size_hw) -> np.ndarray:
    """PIL bilinear, per channel in float32 for probabilities: the documented behaviour."""
    h, w = size_hw
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
    chans = [Image.fromarray(a[..., c], mode="F").resize((w, h), Image.BILINEAR) for c in range(a.shape[-1])]
    return np.stack([np.asarray(c) for c in chans], -1)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_scales_and_flips_average_probabilities_at_the_original_size(seg, crops):
    img = crops[1][1]
    plain = seg.predict_proba(img)
    np.testing.assert_array_equal(seg.predict_proba(img, scales=(1.0,), flip=False), plain)
    np.testing.assert_array_equal(seg.predict(img, scales=[1], flip=False), seg.predict(img))
    scales = (0.75, 1.0, 1.25)
    tta = seg.predict_proba(img, scales=scales, flip=True)
    expect = []
    for s in scales:
        scaled = _resize(img, (round(64 * s), round(96 * s)))
        for mirror in (False, True):
            p = _softmax(seg.predict_logits(scaled[:, ::-1] if mirror else scaled))
            expect.append(_resize(np.ascontiguousarray(p[:, ::-1] if mirror else p, np.float32), (64, 96)))
    np.testing.assert_allclose(tta, np.mean(expect, 0), atol=1e-5)
    np.testing.assert_allclose(tta.sum(-1), 1.0, atol=1e-5)
    assert tta.shape == plain.shape and np.abs(tta - plain).max() > 1e-2
    np.testing.assert_array_equal(seg.predict(img, scales=scales, flip=True), tta.argmax(-1))
    with pytest.raises(ValueError, match="scales"):
        seg.predict(img, scales=(0.0, 1.0))


# -- per-image errors: eval and report ----------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, colour_crops, camvid_dir, params):
    """The three colour-mask crops prepared as a dataset, a run on it, and `fcn-jax eval` with
    --scales 0.75,1,1.25 --flip: (run directory, printed output, eval_val.json)."""
    src, _ = colour_crops
    dataset = data.prepare_folder(
        src / "images", src / "masks", tmp_path_factory.mktemp("data"), num_classes=11, ignore_index=IGNORE,
        class_names=CLASS_NAMES, splits={"val": 1.0}, color_map=camvid_dir / "camvid11_palette.png",
        progress=False,
    )  # fmt: skip
    run = write_run(
        tmp_path_factory.mktemp("run") / "run", params, data.load_meta(dataset), str(dataset), variant="32s",
        conv="xla",
    )  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(
            ["eval", "--workdir", str(run), "--split", "val", "--scales", "0.75,1,1.25", "--flip", "--quiet"]
        )
    assert code == 0
    return run, printed.getvalue(), json.loads((run / "eval_val.json").read_text())


def test_eval_writes_per_image_records_and_plain_beside_augmented(evaluated, seg):
    run, printed, saved = evaluated
    dataset = Path(saved["data_dir"])
    source = data.open_source(dataset, "val")
    records = {r["file_name"]: r for r in saved["images"]}
    assert len(records) == 3 == len(source)
    total = np.zeros((11, 11), np.int64)
    for i in range(len(source)):
        ex = source[i]
        label = ex["label"][..., 0].astype(np.int64)
        pred = seg.predict(ex["image"])  # the same parameters, plain
        keep = label != IGNORE
        hist = np.bincount(label[keep] * 11 + pred[keep], minlength=121).reshape(11, 11)
        total += hist
        rec = records[_name(ex)]
        assert rec["pixel_accuracy"] == pytest.approx(np.trace(hist) / keep.sum())
        present = (hist.sum(0) + hist.sum(1)) > 0
        iou = np.diag(hist)[present] / (hist.sum(0) + hist.sum(1) - np.diag(hist))[present]
        assert rec["miou"] == pytest.approx(iou.mean())
        assert set(rec["per_class_iou"]) == {CLASS_NAMES[c] for c in np.flatnonzero(present)}
        assert rec["class_pixels"] == {CLASS_NAMES[c]: int(hist[c].sum()) for c in range(11) if hist[c].sum()}
    np.testing.assert_array_equal(np.asarray(saved["confusion"]), total)  # per image adds up to the split
    aug = saved["augmented"]
    assert aug["inference"] == {"scales": [0.75, 1.0, 1.25], "flip": True, "tile": None, "overlap": None}
    assert [r["file_name"] for r in aug["images"]] == [r["file_name"] for r in saved["images"]]
    assert aug["confusion"] != saved["confusion"] and np.sum(aug["confusion"]) == np.sum(saved["confusion"])
    # The side-by-side table: both mIoUs and their difference, per class and overall.
    row = re.search(r"^mean IoU\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)$", printed, re.M)
    assert row, printed
    assert float(row[1]) == pytest.approx(100 * saved["miou"], abs=0.006)
    assert float(row[2]) == pytest.approx(100 * aug["miou"], abs=0.006)
    assert "plain vs scales 0.75,1,1.25 + flip, whole images" in printed
    assert "images with the lowest mean IoU" in printed


def test_eval_takes_the_augmentation_the_run_config_asks_for(evaluated, params, tmp_path):
    """A run whose config asks for test-time augmentation (as experiments/camvid_cpu.py does;
    here scales 0.75,1,1.25 + flip) is evaluated with it without flags, to the same numbers as
    the flags give; `--scales 1 --no-flip` is plain; a bad value in config.json is one line
    naming the file and key."""
    _, _, flagged = evaluated
    dataset = Path(flagged["data_dir"])
    run = write_run(
        tmp_path / "run", params, data.load_meta(dataset), str(dataset), variant="32s", conv="xla",
        inference={"scales": (0.75, 1.0, 1.25), "flip": True},
    )  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["eval", "--workdir", str(run), "--split", "val", "--quiet"]) == 0
    saved = json.loads((run / "eval_val.json").read_text())
    assert saved["augmented"]["inference"] == flagged["augmented"]["inference"]
    assert saved["augmented"]["miou"] == pytest.approx(flagged["augmented"]["miou"], abs=1e-6)
    assert saved["miou"] == pytest.approx(flagged["miou"], abs=1e-6)
    assert "plain vs scales 0.75,1,1.25 + flip, whole images" in printed.getvalue()
    # Flags override the config: a plain evaluation writes no augmented record.
    out = tmp_path / "plain.json"
    args = ["eval", "--workdir", str(run), "--split", "val", "--scales", "1", "--no-flip", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*args, "--out", str(out)]) == 0
    plain = json.loads(out.read_text())
    assert "augmented" not in plain and plain["miou"] == pytest.approx(flagged["miou"], abs=1e-6)
    # Only the flip from the flags, the scales from the config.
    args = ["eval", "--workdir", str(run), "--split", "val", "--no-flip", "--quiet", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(args) == 0
    assert json.loads(out.read_text())["augmented"]["inference"]["flip"] is False
    config = json.loads((run / "config.json").read_text())
    config["inference"]["scales"] = [0.0, 1.0]
    (run / "config.json").write_text(json.dumps(config))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["eval", "--workdir", str(run), "--split", "val", "--quiet"])
    assert code == 2
    line = err.getvalue()
    assert line.count("\n") == 1 and "config.json: inference.scales" in line, line


def test_report_shows_the_worst_images_with_error_maps(evaluated, seg):
    run, _, saved = evaluated
    assert cli.main(["report", "--workdir", str(run), "--num-images", "0", "--worst", "2", "--quiet"]) == 0
    readme = (run / "report" / "README.md").read_text()
    worst = sorted(saved["images"], key=lambda r: r["miou"])[:2]
    rows = re.findall(r"^\| (\d) \| (\S+) \| ([\d.]+) \|", readme, re.M)
    assert [(r[0], r[1]) for r in rows] == [("1", worst[0]["file_name"]), ("2", worst[1]["file_name"])]
    assert "![worst](worst_val.png)" in readme
    held = {c for r in saved["images"] for c in r["class_pixels"]}
    per_class = re.findall(r"^\| (\w+) \| (\d+) \| [\d.]+ \|", readme.split("Per class")[1], re.M)
    assert {c for c, _ in per_class} == held
    assert all(int(n) == sum(c in r["class_pixels"] for r in saved["images"]) for c, n in per_class)
    grid = np.asarray(Image.open(run / "report" / "worst_val.png").convert("RGB"))
    g, head = visualize.GAP, 20
    assert grid.shape == (head + 2 * 64 + 4 * g, 4 * 96 + 5 * g, 3)
    # The error map of the worst image: red exactly where the prediction is wrong, grey on void.
    source = data.open_source(Path(saved["data_dir"]), "val")
    ex = next(source[i] for i in range(len(source)) if _name(source[i]) == worst[0]["file_name"])
    label = ex["label"][..., 0]
    y, cols = 2 * g + head, [g + c * (96 + g) for c in range(4)]
    np.testing.assert_array_equal(grid[y : y + 64, cols[0] : cols[0] + 96], ex["image"])
    pred = seg.predict(ex["image"])
    palette = data.load_meta(Path(saved["data_dir"])).palette
    np.testing.assert_array_equal(grid[y : y + 64, cols[2] : cols[2] + 96], palette[pred])
    errors = grid[y : y + 64, cols[3] : cols[3] + 96]
    np.testing.assert_array_equal(errors, visualize.error_map(ex["image"], label, pred, 11, IGNORE))
    red = np.all(errors == visualize.ERROR_COLOR, -1)
    np.testing.assert_array_equal(red, (pred != label) & (label != IGNORE))
    assert red.sum() / (label != IGNORE).sum() == pytest.approx(1 - worst[0]["pixel_accuracy"])
    np.testing.assert_array_equal(np.all(errors == visualize.VOID_COLOR, -1), label == IGNORE)


def _name(ex) -> str:
    name = ex["file_name"]
    return name.decode() if isinstance(name, bytes) else str(name)
