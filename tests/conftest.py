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
