"""evaluate() against a brute-force numpy evaluation, `fcn-jax eval`, `fcn-jax report`, the grid."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from test_predict import VARIANT, camvid_crops, random_params, write_run

from fcn_jax import cli, data, evaluate, metrics, visualize
from fcn_jax.models import FCN

# val: three crops; with batch 2 the second batch holds one padding example that must not count
TOPS = {"train": 140, "val": 150, "test": 190}
SPLITS = {"train": ((64, 96),) * 2, "val": ((64, 96),) * 3, "test": ((64, 96),) * 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, camvid_dir) -> Path:
    """Real CamVid crops in CamVid's layout (train/val/test), prepared with `prepare_camvid`."""
    src = tmp_path_factory.mktemp("camvid_crops")
    shutil.copyfile(camvid_dir / "camvid11_palette.png", src / "camvid11_palette.png")
    for split, sizes in SPLITS.items():
        (src / split).mkdir()
        (src / f"{split}annot").mkdir()
        lines = []
        source_split = "val" if split == "test" else split  # the test split is held out here
        for k, (stem, img, lab) in enumerate(
            camvid_crops(camvid_dir, source_split, len(sizes), top=TOPS[split])
        ):
            h, w = sizes[k]
            name = f"{stem}_{split}{k}.png"
            Image.fromarray(img[:h, :w]).save(src / split / name)
            Image.fromarray(lab[:h, :w]).save(src / f"{split}annot" / name)
            lines.append(f"{split}/{name} {split}annot/{name}")
        (src / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return data.prepare_camvid(src, src / "out", progress=False)


@pytest.fixture(scope="module")
def model():
    return FCN(11, VARIANT)


@pytest.fixture(scope="module")
def params(model):
    return random_params(model, seed=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, params, dataset) -> Path:
    run = write_run(tmp_path_factory.mktemp("run") / "run", params, data.load_meta(dataset), str(dataset))
    rng = np.random.default_rng(0)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 9):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "split": "train",
                        "loss": 2.4 / step**0.5,
                        "learning_rate": 1e-3 * (1 - step / 9) ** 0.9,
                        "images_per_s": 3.0,
                    }
                )
                + "\n"
            )
            if step % 4 == 0:
                hist = rng.integers(0, 50, (11, 11)) + np.diag(rng.integers(100, 400, 11) * step)
                hist[10] = 0  # Bicyclist absent from truth ...
                hist[:, 10] = 0  # ... and prediction
                rec = metrics.compute_metrics(hist, data.load_meta(dataset).class_names).to_dict()
                f.write(json.dumps({"step": step, "split": "val", **rec}) + "\n")
    return run


def brute_force_confusion(model, params, dataset, split):
    """Every image on its own, numpy bincount, void (11) dropped."""
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x).argmax(-1))
    hist = np.zeros((11, 11), np.int64)
    source = data.open_source(dataset, split)
    for i in range(len(source)):
        ex = source[i]
        label = ex["label"][..., 0].astype(np.int64)
        pred = np.asarray(fn(params, data.normalize(ex["image"])[None]))[0]
        keep = label != 11
        hist += np.bincount(label[keep] * 11 + pred[keep], minlength=121).reshape(11, 11)
    return hist


def test_evaluate_equals_per_image_brute_force(model, params, dataset):
    result = evaluate.evaluate(model, params, dataset, "val", batch_size=2, progress=False)
    expect = brute_force_confusion(model, params, dataset, "val")
    np.testing.assert_array_equal(np.asarray(result.confusion), expect)
    assert result.num_pixels == expect.sum() > 0
    assert result == metrics.compute_metrics(expect, data.load_meta(dataset).class_names)
    assert 0 < result.miou < 1
    assert evaluate.num_batches(dataset, "val", 2) == 2


def test_eval_command_on_test_split_and_missing_split(run_dir, capsys):
    assert (
        cli.main(["eval", "--workdir", str(run_dir), "--split", "test", "--batch-size", "2", "--quiet"]) == 0
    )
    printed = capsys.readouterr().out
    saved = json.loads((run_dir / "eval_test.json").read_text())
    assert saved["split"] == "test" and saved["num_images"] == 2
    assert saved["checkpoint"].endswith("best/8")
    assert f"{100 * saved['miou']:.2f}" in printed and "Sky" in printed

    # Several splits side by side (a held-out drive beside val), one JSON each.
    assert cli.main(["eval", "--workdir", str(run_dir), "--split", "test,val", "--quiet"]) == 0
    printed = capsys.readouterr().out
    val = json.loads((run_dir / "eval_val.json").read_text())
    assert f"mIoU %: test {100 * saved['miou']:.1f} | val {100 * val['miou']:.1f}" in printed
    assert cli.main(["eval", "--workdir", str(run_dir), "--split", "test,val", "--out", "x.json"]) == 2
    assert "--out names one file" in capsys.readouterr().err

    assert cli.main(["eval", "--workdir", str(run_dir), "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no split 'nope'" in err and "train (2 images)" in err and "test (2 images)" in err
    assert cli.main(["eval", "--workdir", str(run_dir), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert cli.main(["eval", "--workdir", str(run_dir / "missing")]) == 2


def test_report_command(run_dir, capsys):
    assert cli.main(["report", "--workdir", str(run_dir), "--num-images", "3", "--quiet"]) == 0
    out = run_dir / "report"
    readme = (out / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert set(links) == {
        "loss.png",
        "learning_rate.png",
        "val_metrics.png",
        "confusion_val.png",
        "predictions_val.png",
        "legend.png",
        "worst_val.png",  # eval_val.json, written above, holds per-image records
    }
    for link in links:
        with Image.open(out / link) as im:
            assert im.size[0] > 100 and im.size[1] > 30, link
    last = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"step {last['step']}" in readme and f"| mean IoU | {100 * last['miou']:.2f} |" in readme
    assert "| Sky |" in readme and "Bicyclist" in readme.split("Left out of the means")[1]
    assert "## Skipped" not in readme
    # grid: a title row and 3 rows (64 px) of image | truth | prediction (96 px wide)
    g = visualize.GAP
    with Image.open(out / "predictions_val.png") as im:
        assert im.size == (3 * 96 + 4 * g, 20 + 3 * 64 + 5 * g)


def test_report_of_an_empty_run_says_what_is_missing(tmp_path, capsys):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"variant": "32s"}, "data": {}}))
    assert cli.main(["report", "--workdir", str(run)]) == 0
    readme = (run / "report" / "README.md").read_text()
    assert "no curves" in readme and "no confusion matrix" in readme and "no prediction grid" in readme
    assert "## Skipped" in capsys.readouterr().err
    assert cli.main(["report", "--workdir", str(tmp_path / "nothing")]) == 2


def test_prediction_grid_layout_and_colours():
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    images = np.full((2, 10, 12, 3), 200, np.uint8)
    labels = np.zeros((2, 10, 12), np.int64)
    labels[:, :, 6:] = 9  # void
    preds = np.ones((2, 10, 12), np.int64)
    preds[1] = 2
    grid = visualize.prediction_grid(images, labels, preds, palette, ignore_index=9)
    g, head = visualize.GAP, 20
    assert grid.dtype == np.uint8 and grid.shape == (head + 2 * 10 + 4 * g, 3 * 12 + 4 * g, 3)
    y1, y2 = g + head + g, g + head + g + 10 + g  # first pixel rows of the two examples
    x_img, x_gt, x_pred = g, 2 * g + 12, 3 * g + 24
    np.testing.assert_array_equal(grid[y1, x_img], [200, 200, 200])
    np.testing.assert_array_equal(grid[y1, x_gt], [255, 0, 0])  # truth class 0
    np.testing.assert_array_equal(grid[y1, x_gt + 6], [0, 0, 0])  # void
    np.testing.assert_array_equal(grid[y1, x_pred], [0, 255, 0])
    np.testing.assert_array_equal(grid[y2 + 9, x_pred + 11], [0, 0, 255])
    assert (grid[:head] != 255).any()  # column titles drawn
    with pytest.raises(ValueError, match="differ in size"):
        visualize.prediction_grid(images, labels[:, :5], preds, palette, 9)
    over = visualize.overlay(images[0], labels[0], palette, alpha=0.25, ignore_index=9)
    np.testing.assert_array_equal(over[0, 0], np.rint(0.75 * 200 + 0.25 * np.array([255, 0, 0])))
    np.testing.assert_array_equal(over[0, 11], [200, 200, 200])  # void: the image
