"""Validation on a drive never seen in training: CamVid's `heldout` / `train_seen` splits,
selection on the held-out drive with val reported beside it (training log, eval, report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require_camvid
from training_helpers import run, train_cmd

from fcn_jax import checkpoints, cli, config, data
from fcn_jax.data import camvid


@pytest.fixture(scope="module")
def two_drives(tmp_path_factory) -> Path:
    """Real CamVid frames: 3 train frames of drive 0001TP, 2 of 0006R0, 1 val frame."""
    src = require_camvid()
    root = tmp_path_factory.mktemp("two_drives")
    lines = (src / "train.txt").read_text().splitlines()
    picked = {"train": lines[:3] + lines[62:64], "val": (src / "val.txt").read_text().splitlines()[:1]}
    for split, chosen in picked.items():
        for rel in " ".join(chosen).split():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, root / rel)
        (root / f"{split}.txt").write_text("\n".join(chosen) + "\n")
    return data.prepare_camvid(root, root / "prepared", progress=False)


def test_prepare_writes_the_heldout_drive_splits(two_drives, tmp_path):
    meta = data.load_meta(two_drives)
    assert meta.splits == {"train": 5, "val": 1, "train_seen": 3, "heldout": 2}
    heldout = data.load_index(two_drives, "heldout")["file_names"]
    seen = data.load_index(two_drives, "train_seen")["file_names"]
    assert all(camvid.drive_of(n) == "0006R0" for n in heldout)
    assert all(camvid.drive_of(n) == "0001TP" for n in seen)
    assert sorted(heldout + seen) == sorted(data.load_index(two_drives, "train")["file_names"])
    # The switch off: only the standard splits.
    src = two_drives.parents[2]
    plain = data.prepare_camvid(src, tmp_path / "plain", progress=False, heldout_drive="")
    assert set(data.load_meta(plain).splits) == {"train", "val"}
    with pytest.raises(data.DataError, match="no train frame comes from drive 'XXXXXX'"):
        camvid.with_heldout_drive(camvid.camvid_samples(src), "XXXXXX")


def test_class_weights_come_from_the_split_trained_on(two_drives):
    """Training on `train_seen` weighs classes by `train_seen`'s frequencies: the held-out
    drive's pixels must not shape the loss either."""
    seen = data.class_weights(two_drives, "train_seen")
    assert not np.allclose(seen, data.class_weights(two_drives, "train"))
    s = data.class_stats(two_drives, "train_seen")
    np.testing.assert_array_equal(
        seen, data.median_frequency_weights(s["pixels"], s["labelled_pixels_of_images_with_class"])
    )
    # The milder weighting is the square root: a class 100x rarer weighs 10x, not 100x.
    milder = data.class_weights(two_drives, "train_seen", "sqrt_median_frequency")
    np.testing.assert_allclose(milder, np.sqrt(seen), rtol=1e-6)
    assert milder.dtype == np.float32 and np.ptp(milder) < np.ptp(seen)
    assert data.class_weights(two_drives, "train_seen", "none") is None


def test_training_selects_on_the_heldout_drive_and_reports_val_beside(two_drives, tmp_path, capsys):
    c = config.heldout_drive(config.base_config())
    assert (c.data.train_split, c.data.eval_split, c.data.extra_eval_splits) == (
        "train_seen",
        "heldout",
        ("val",),
    )
    workdir = tmp_path / "run"
    held = [
        "--config.data.train_split=train_seen",
        "--config.data.eval_split=heldout",
        "--config.data.extra_eval_splits=('val',)",
        "--config.train.steps=2",
        "--config.train.eval_batch_size=1",
        "--config.train.batch_size=1",
        "--config.train.num_pictures=1",
    ]
    r = run(train_cmd(workdir, two_drives, *held))
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluated = {r["split"]: r for r in records if r["split"] != "train"}
    assert (
        set(evaluated) == {"heldout", "val"} and evaluated["heldout"]["step"] == evaluated["val"]["step"] == 2
    )
    best = checkpoints.read_meta(workdir / "best" / "2")
    assert best["miou"] == evaluated["heldout"]["miou"]  # selected on the held-out drive
    # fcn-jax eval evaluates the splits the run was validated on, side by side.
    assert cli.main(["eval", "--workdir", str(workdir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mIoU %: heldout" in out and "| val" in out
    assert (workdir / "eval_heldout.json").is_file() and (workdir / "eval_val.json").is_file()
    # The report shows both.
    assert (
        cli.main(["report", "--workdir", str(workdir), "--quiet", "--split", "heldout", "--num-images", "1"])
        == 0
    )
    readme = (workdir / "report" / "README.md").read_text()
    assert "eval_miou.png" in readme and "| heldout | 2 |" in readme and "| val | 2 |" in readme
