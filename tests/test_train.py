"""Training: learning, device/process equivalence, exact resume after SIGKILL,
damaged checkpoints, NaN stop. Runs the real `fcn-jax train` CLI on real CamVid crops."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from training_helpers import STEPS, assert_trees, params_at, steps_in, train_cmd, tree_digest
from training_helpers import env as run_env
from training_helpers import run as run_cmd

from fcn_jax import checkpoints, training
from fcn_jax import run as run_lib
from fcn_jax.config import optimizer_config
from fcn_jax.models import FCN
from fcn_jax.ops import OpSet


def test_a_few_steps_lower_the_loss_in_float32_and_in_bfloat16(camvid_small):
    """The mixed-precision recipe: float32 parameters and optimizer state, bfloat16
    compute, float32 loss. It must learn as float32 does: on one fixed batch the loss
    falls by 10 % in 6 steps in both, and the bfloat16 curve stays within 5 % of float32's."""
    import jax.numpy as jnp

    from fcn_jax import data

    cfg = optimizer_config(name="adamw", learning_rate=1e-4, schedule="constant")
    tx, _ = training.make_optimizer(cfg, decay_steps=10)
    loader = data.TrainLoader(
        camvid_small, global_batch_size=2, crop_size=(64, 96), process_index=0, process_count=1
    )
    batch = next(loader)  # one fixed batch: the loss on it must fall
    curves = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = FCN(11, "32s", dtype=dtype, ops=OpSet(conv="xla"))  # bf16 runs XLA's convolutions
        state = training.init_state(model, tx, jax.random.PRNGKey(0))
        train_step, _ = training.compile_steps(training.data_mesh(jax.devices()[:1]), model, tx, 11)
        losses = []
        for _ in range(6):
            state, metrics = train_step(state, batch)
            losses.append(float(metrics["loss"]))
            assert bool(metrics["finite"]) and metrics["loss"].dtype == jnp.float32
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((state.params, state.opt_state)) if a.ndim)
        assert losses[-1] < 0.9 * losses[0], (dtype, losses)
        curves[jnp.dtype(dtype).name] = np.asarray(losses)
    gap = np.abs(curves["bfloat16"] - curves["float32"]) / curves["float32"]
    assert gap.max() < 0.05, curves


def test_a_step_that_overflows_the_parameters_is_not_finite_though_its_loss_is(camvid_small):
    """The loss is computed before the update: only the step's finite flag (loss, gradient
    and new parameters) tells that the state it returns must not be kept."""
    from fcn_jax import data

    model = FCN(11, "32s", ops=OpSet(conv="xla"))
    tx, _ = training.make_optimizer(optimizer_config(learning_rate=1e38, schedule="constant"), decay_steps=1)
    state = training.init_state(model, tx, jax.random.PRNGKey(0))
    step, _ = training.compile_steps(training.data_mesh(jax.devices()[:1]), model, tx, 11)
    loader = data.TrainLoader(
        camvid_small, global_batch_size=2, crop_size=(48, 64), process_index=0, process_count=1
    )
    health = training.healthy()
    state, metrics = step(state, next(loader))
    health = training.track_health(health, metrics, state.step)
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["finite"])
    assert not bool(health.ok) and int(health.first_bad_step) == 1


def test_metrics_log_and_records_of_a_run(reference_run):
    lines = [json.loads(l) for l in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, STEPS + 1))
    assert all(np.isfinite(l["loss"]) and l["learning_rate"] > 0 for l in lines)
    assert steps_in(reference_run / "checkpoints") == [2, 4, 6]
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*"))
    # The model spec is recorded apart from the user's config, which holds no derived facts.
    spec = run_lib.Run(reference_run).spec()
    assert (spec.num_classes, spec.variant, spec.ops.conv) == (11, "8s", "xla")
    config = json.loads((reference_run / "config.json").read_text())
    assert "num_classes" not in config["model"] and config["model"]["ops"]["conv"] == "xla"
    for step in (2, 4, 6):
        assert checkpoints.verify(reference_run / "checkpoints" / str(step))  # checksums present
    # The split is small: the device-resident input path, whose host work per step is tiny.
    assert checkpoints.read_meta(reference_run / "checkpoints" / "6")["data_state"]["path"] == "device"
    assert all(0 < l["host_us_per_step"] < 1e5 for l in lines)


def test_sigkill_then_resume_gives_bitwise_equal_parameters(reference_run, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(workdir, camvid_small),
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not (workdir / "checkpoints" / "2").is_dir():  # a step dir is renamed when complete
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)  # kill somewhere inside step 3 or 4
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # The killed process's lock file is still there: it must not block the next run.
    assert (workdir / ".lock").is_file()
    r = run_cmd(train_cmd(workdir, camvid_small))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    assert_trees(params_at(workdir), params_at(reference_run))


def test_damaged_newest_checkpoint_is_set_aside_and_saved_anew(reference_run, camvid_small, tmp_path):
    """64 flipped bytes in step 6 (sizes unchanged: orbax alone restores them silently) and
    a metrics line cut short by a kill: the run resumes from step 4, saves step 6 again
    with keep_checkpoints=2 (so the intact step 4 must not be the one deleted), and keeps
    the damaged copy under set_aside/. keep_checkpoints 3 -> 2 is a compatible change: the
    run resumes, and the config it replaces is kept under configs/."""
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    data_file = max((workdir / "checkpoints" / "6" / "state").rglob("*"), key=lambda f: f.stat().st_size)
    raw = bytearray(data_file.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    data_file.write_bytes(bytes(raw))
    damaged = tree_digest(workdir / "checkpoints" / "6")
    old_config = json.loads((workdir / "config.json").read_text())
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "split": "tr')
    r = run_cmd(train_cmd(workdir, camvid_small, "--config.train.keep_checkpoints=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoints/6 is damaged" in r.stderr and "does not match its checksum" in r.stderr
    assert "last line is cut short" in r.stderr
    assert "WARNING:absl" not in r.stderr and "OpenCV" not in r.stderr  # library notices stay quiet
    assert "resuming from" in r.stdout and "checkpoints/4" in r.stdout
    assert "train.keep_checkpoints: 3 -> 2" in r.stdout
    (kept,) = (workdir / "configs").iterdir()
    assert json.loads(kept.read_text()) == old_config
    assert json.loads((workdir / "config.json").read_text())["train"]["keep_checkpoints"] == 2
    assert steps_in(workdir / "checkpoints") == [4, 6]
    assert_trees(params_at(workdir), params_at(reference_run))
    (aside,) = (workdir / "set_aside").iterdir()
    assert aside.name.startswith("checkpoints_6_damaged") and tree_digest(aside) == damaged
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, STEPS + 1))


def test_divergence_stops_without_saving_and_a_sane_rerun_continues(reference_run, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    r = run_cmd(train_cmd(workdir, camvid_small, "--config.train.nan_at_step=2"))
    assert r.returncode == 3, r.stderr[-3000:]
    assert "loss is nan at step 3" in r.stderr
    assert "checkpoints/2" in r.stderr
    assert steps_in(workdir / "checkpoints") == [2]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params_at(workdir, 2)))
    # Without the fault the same run continues from step 2 and ends where the reference does.
    r = run_cmd(train_cmd(workdir, camvid_small))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_trees(params_at(workdir), params_at(reference_run))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process(reference_run, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    procs = [
        subprocess.Popen(
            train_cmd(
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
            env=run_env(),
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
    # order differs from one process's, so equality is up to float32 rounding (weights are
    # O(1e-2); the eight-device test below uses the same bound).
    assert_trees(params_at(workdir), params_at(reference_run), atol=1e-6)


def test_a_peer_that_never_joins_ends_the_process_with_a_message(camvid_small, tmp_path):
    cmd = train_cmd(
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
    r = run_cmd(cmd, timeout=120)
    assert r.returncode != 0
    assert time.time() - t0 < 90
    assert "joining" in r.stdout


EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np
    from fcn_jax import training, data
    from fcn_jax.config import optimizer_config
    from fcn_jax.data import device
    from fcn_jax.models import FCN
    from fcn_jax.ops import OpSet
    assert jax.device_count() == 8
    model = FCN(11, "16s")
    tx, _ = training.make_optimizer(optimizer_config(name="sgd", learning_rate=1e-3), decay_steps=3)
    loader = data.TrainLoader(DATA, global_batch_size=8, crop_size=(48, 64), process_index=0, process_count=1)
    batches = [next(loader) for _ in range(3)]
    init = training.init_state(model, tx, jax.random.PRNGKey(0))
    # Score layers start at zero: make them non-zero so every layer's update is compared.
    init = init.replace(params={**init.params, **{k: jax.tree.map(lambda a: a + 0.01, v)
                        for k, v in init.params.items() if k.startswith("score_")}})
    init = jax.tree.map(np.asarray, init)  # host copy: each run donates its own device buffers

    def max_diff(x, y):
        return max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))

    for path in ("host", "device"):
        results = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = training.data_mesh(devices)
            state = jax.device_put(init, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
            if path == "host":
                step, _ = training.compile_steps(mesh, model, tx, 11)
                for b in batches:
                    state, m = step(state, data.to_global(b, mesh))
            else:  # the split on the devices, batches built inside the step (XLA's convolutions:
                # what is compared here is the data, and Winograd doubles the compile)
                dl = device.DeviceLoader(DATA, mesh, global_batch_size=8, crop_size=(48, 64))
                xla = model.clone(ops=OpSet(conv="xla"))
                step, _ = training.compile_steps(mesh, xla, tx, 11, device_data=dl.aug)
                for _ in range(3):
                    state, m = step(state, dl.cache, next(dl))
            results.append(jax.tree.map(np.asarray, state.params))
        # Biases start at zero and move by sums with heavy cancellation, so compare
        # absolutely: weights are O(1e-2), a reduction-order difference is O(1e-9).
        worst = max_diff(results[1], results[0])
        moved = max_diff(results[0], init.params)
        print(path, "path: max absolute difference", worst, "largest update", moved)
        assert worst < 1e-6 and worst < 1e-3 * moved, (path, worst, moved)
    """
)


def test_eight_cpu_devices_match_one_device(camvid_small):
    code = f"DATA = {str(camvid_small)!r}\n" + EIGHT_DEVICES
    # Eight devices on two cores compile and run four programs: minutes, and far more
    # when other work shares the cores. The timeout only guards against a hang.
    r = run_cmd(
        [sys.executable, "-c", code], timeout=900, XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "host path: max absolute difference" in r.stdout and "device path: max absolute" in r.stdout
