"""Shared test setup: paths to the real CamVid copy and the PyTorch twins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "camvid"
sys.path.insert(0, str(REPO / "benchmarks"))  # torch_twin: PyTorch references


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID}")
    return CAMVID


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
