"""Shared test setup: paths to the real CamVid copy and the PyTorch twins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "camvid"
sys.path.insert(0, str(REPO / "benchmarks"))  # torch_twin: PyTorch references


def require_camvid() -> Path:
    """CamVid's directory; a missing copy skips the test on a developer's machine and
    fails it under CI=true, where a skip would hide that nothing was tested."""
    if not (CAMVID / "train.txt").is_file():
        message = f"CamVid not found at {CAMVID} (the tests read real CamVid images there)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; under CI=true a missing dataset is a failure, not a skip")
        pytest.skip(message)
    return CAMVID


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    return require_camvid()


# For tests that read CAMVID directly.
needs_camvid = pytest.mark.usefixtures("camvid_dir")


def make_camvid_subset(root: Path, counts: dict[str, int]) -> Path:
    """Copy the first few real CamVid pairs of each split, with their list files."""
    import shutil

    for split, n in counts.items():
        lines = [l for l in (CAMVID / f"{split}.txt").read_text().splitlines() if l.strip()][:n]
        for rel in " ".join(lines).split():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CAMVID / rel, root / rel)
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    shutil.copyfile(CAMVID / "camvid11_palette.png", root / "camvid11_palette.png")
    return root


@pytest.fixture(scope="session")
def camvid_small(tmp_path_factory, camvid_dir) -> Path:
    """8 train + 3 val real CamVid pairs, prepared as a TFDS directory."""
    from fcn_jax import data

    src = make_camvid_subset(tmp_path_factory.mktemp("camvid_src"), {"train": 8, "val": 3})
    return data.prepare_camvid(src, src / "prepared", progress=False)


def _reference(tmp_path_factory, camvid_small, *extra) -> Path:
    from training_helpers import run, train_cmd

    workdir = tmp_path_factory.mktemp("reference") / "run"
    r = run(train_cmd(workdir, camvid_small, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, camvid_small) -> Path:
    """An uninterrupted tiny training run (training_helpers.TINY; the split is small, so
    the device-resident input path): the baseline that interrupted, resumed and
    multi-process runs are compared with, bit for bit."""
    return _reference(tmp_path_factory, camvid_small)


@pytest.fixture(scope="session")
def reference_run_host(tmp_path_factory, camvid_small) -> Path:
    """The same run through the host (grain) input path."""
    return _reference(tmp_path_factory, camvid_small, "--config.data.device_cache=off")
