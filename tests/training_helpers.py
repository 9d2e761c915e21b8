"""What the training tests share: the tiny real-CamVid recipe, running the real
`fcn-jax train` command in a subprocess, and comparing the parameters runs end with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from fcn_jax import run as run_lib

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
TINY = [
    f"--config.train.steps={STEPS}",
    "--config.train.checkpoint_every=2",
    "--config.train.keep_checkpoints=3",
    "--config.train.log_every=1",
    "--config.data.crop_size=(48,64)",
    "--config.data.eval_split=",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=1e-3",
    # XLA's direct convolution: per-example results then do not depend on how a batch
    # is split over processes or devices, which the equivalence tests check to 1e-5.
    # (With Winograd, rounding breaks the exact ties of the constant padded border
    # differently, and max-pool routes gradient to another tap.) Winograd training is
    # covered by test_a_few_steps_lower_the_loss and tests/test_perf.py.
    "--config.model.ops.conv=xla",
]


def env(**extra) -> dict:
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONUNBUFFERED"] = "1"
    e.update(extra)
    return e


def train_cmd(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    config = str(REPO / "experiments/camvid_smoke.py")
    return [
        sys.executable,
        "-m",
        "fcn_jax",
        "train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *TINY,
        *extra,
    ]


def run(cmd, timeout=300, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


def params_at(workdir: Path, step: int = STEPS, kind: str = "checkpoints") -> dict:
    """The parameters of one step of a run, read as everything reads a run (fcn_jax.run)."""
    return jax.tree.map(np.asarray, run_lib.load_trained(workdir / kind / str(step)).params)


def assert_trees(a, b, atol=0.0) -> None:
    """Bitwise equal (atol=0), or within `atol` absolutely: biases start at zero and move by
    sums with heavy cancellation, so a relative bound would measure noise."""
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        if atol == 0.0:
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
        else:
            assert np.abs(x - y).max() <= atol, (jax.tree_util.keystr(path), np.abs(x - y).max())


def steps_in(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: to prove a directory was not touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
