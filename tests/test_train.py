"""Training: learning, device/process equivalence, exact resume after SIGKILL,
damaged checkpoints, NaN stop. Runs the real `fcn-jax train` CLI on real CamVid crops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fcn_jax import checkpoints, training
from fcn_jax.models import FCN

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
    # is split over processes or devices, which the equivalence tests below check to
    # 1e-5. (With Winograd, rounding breaks the exact ties of the constant padded
    # border differently, and max-pool routes gradient to another tap.) Winograd
    # training is covered by test_a_few_steps_lower_the_loss and tests/test_perf.py.
    "--config.model.winograd=False",
]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _train_cmd(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fcn_jax",
        "train",
        "--config",
        str(REPO / "experiments/camvid_smoke.py"),
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *TINY,
        *extra,
    ]


def _run(cmd, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _params(workdir: Path, step: int = STEPS) -> dict:
    params, _, restored = checkpoints.load_params(workdir / "checkpoints" / str(step))
    assert restored == step
    return jax.tree.map(np.asarray, params)


def _assert_trees(a, b, rtol=0.0):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        if rtol == 0.0:
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
        else:
            scale = max(np.abs(y).max(), 1e-12)
            assert np.abs(x - y).max() <= rtol * scale, (
                jax.tree_util.keystr(path),
                np.abs(x - y).max() / scale,
            )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, camvid_small):
    """An uninterrupted run: the baseline every other run is compared with."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    r = _run(_train_cmd(workdir, camvid_small))
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


def test_a_few_steps_lower_the_loss(camvid_small):
    from fcn_jax import data

    model = FCN(11, "32s")
    tx, _ = training.make_optimizer(
        {"name": "adamw", "learning_rate": 1e-4, "decay_steps": 10, "schedule": "constant"}
    )
    state = training.init_state(model, tx, jax.random.PRNGKey(0))
    train_step, _ = training.compile_steps(training.data_mesh(jax.devices()[:1]), model, tx, 11)
    loader = data.TrainLoader(
        camvid_small, global_batch_size=2, crop_size=(64, 96), process_index=0, process_count=1
    )
    batch = next(loader)  # one fixed batch: the loss on it must fall
    losses = []
    for _ in range(6):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_metrics_log_and_checkpoints_of_a_run(reference):
    import json

    lines = [json.loads(l) for l in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, STEPS + 1))
    assert all(np.isfinite(l["loss"]) and l["learning_rate"] > 0 for l in lines)
    assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((reference / "config.json").read_text())
    assert config["model"]["num_classes"] == 11


def test_sigkill_then_resume_gives_bitwise_equal_parameters(reference, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(workdir, camvid_small),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not (workdir / "checkpoints" / "2").is_dir():  # orbax renames a step dir when complete
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)  # kill somewhere inside step 3 or 4
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    r = _run(_train_cmd(workdir, camvid_small))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    _assert_trees(_params(workdir), _params(reference))


def test_resume_skips_a_damaged_latest_checkpoint(reference, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    # Damage step 4: truncate every data file of its state.
    for f in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    r = _run(_train_cmd(workdir, camvid_small))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping damaged checkpoint" in r.stdout + r.stderr
    assert "checkpoints/2" in r.stdout  # resumed from the step before the damaged one
    _assert_trees(_params(workdir), _params(reference))


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(camvid_small, tmp_path):
    workdir = tmp_path / "run"
    r = _run(_train_cmd(workdir, camvid_small, "--config.train.nan_at_step=2"))
    assert r.returncode == 3, r.stderr[-3000:]
    assert "loss is nan at step 3" in r.stderr
    assert "checkpoints/2" in r.stderr
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]
    params = _params(workdir, 2)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process(reference, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    procs = [
        subprocess.Popen(
            _train_cmd(
                workdir,
                camvid_small,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--init-timeout",
                "60",
            ),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process run did not finish in 300 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    # Each process holds one device and half of every global batch; the all-reduce
    # order differs from one process's, so equality is up to float32 rounding.
    _assert_trees(_params(workdir), _params(reference), rtol=1e-5)


def test_a_peer_that_never_joins_ends_the_process_with_a_message(camvid_small, tmp_path):
    cmd = _train_cmd(
        tmp_path / "run",
        camvid_small,
        "--coordinator",
        f"127.0.0.1:{_free_port()}",
        "--num-processes",
        "2",
        "--process-id",
        "0",
        "--init-timeout",
        "5",
    )
    t0 = time.time()
    r = _run(cmd, timeout=120)
    assert r.returncode != 0
    assert time.time() - t0 < 90
    assert "joining" in r.stdout


EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np
    from fcn_jax import training, data
    from fcn_jax.models import FCN
    assert jax.device_count() == 8
    model = FCN(11, "16s")
    tx, _ = training.make_optimizer(
        {"name": "sgd", "learning_rate": 1e-3, "decay_steps": 3, "bias_lr_mult": 2.0}
    )
    loader = data.TrainLoader(DATA, global_batch_size=8, crop_size=(48, 64), process_index=0, process_count=1)
    batches = [next(loader) for _ in range(3)]
    init = training.init_state(model, tx, jax.random.PRNGKey(0))
    # Score layers start at zero: make them non-zero so every layer's update is compared.
    init = init.replace(params={**init.params, **{k: jax.tree.map(lambda a: a + 0.01, v)
                        for k, v in init.params.items() if k.startswith("score_")}})
    init = jax.tree.map(np.asarray, init)  # host copy: each run donates its own device buffers
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = training.data_mesh(devices)
        step, _ = training.compile_steps(mesh, model, tx, 11)
        state = jax.device_put(init, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        for b in batches:
            state, m = step(state, data.to_global(b, mesh))
        results.append(jax.tree.map(np.asarray, state.params))
    # Biases start at zero and move by sums with heavy cancellation, so compare
    # absolutely: weights are O(1e-2), a reduction-order difference is O(1e-9).
    def max_diff(x, y):
        return max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))

    worst = max_diff(results[1], results[0])
    moved = max_diff(results[0], init.params)
    print("max absolute difference", worst, "largest update", moved)
    assert worst < 1e-6 and worst < 1e-3 * moved, (worst, moved)
    """
)


def test_eight_cpu_devices_match_one_device(camvid_small):
    code = f"DATA = {str(camvid_small)!r}\n" + EIGHT_DEVICES
    r = _run([sys.executable, "-c", code], XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "max absolute difference" in r.stdout
