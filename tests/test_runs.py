"""What a run directory survives: changed configs, a second trainer, SIGINT/SIGTERM, bad
config values, damaged checkpoints in every command that reads one. (Kill -9, damaged
checkpoints on resume and divergence are in test_train.py.) Real training runs on real
CamVid crops, real orbax checkpoints on disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_camvid_subset
from PIL import Image
from test_predict import camvid_crops, random_params, write_run
from training_helpers import (
    STEPS,
    assert_trees,
    env,
    params_at,
    run,
    steps_in,
    train_cmd,
    tree_digest,
)

from fcn_jax import checkpoints, cli, data, train
from fcn_jax import run as run_lib
from fcn_jax.models import FCN


def _untouched(root: Path) -> dict:
    """Every file of a run but the lock (whose content names the last process to take it)."""
    return {k: v for k, v in tree_digest(root).items() if k != ".lock"}


def _train(workdir, data_dir, *extra) -> int:
    """`fcn-jax train` in this process (for refusals, which happen before any compile)."""
    return cli.main(train_cmd(workdir, data_dir, *extra)[3:])


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fcn-jax")]


# -- a changed config ---------------------------------------------------------------------


def test_an_incompatible_config_is_refused_before_anything_is_touched(
    reference_run, camvid_small, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = _untouched(workdir)
    assert _train(workdir, camvid_small, "--config.model.variant=16s", "--config.train.steps=5") == 2
    err = capsys.readouterr().err
    assert "model.variant: saved '8s', this config '16s'" in err and "--restart" in err
    assert _untouched(workdir) == before
    # Other data order (batch size, seed) and another optimizer are refused the same way.
    assert _train(workdir, camvid_small, "--config.train.batch_size=1", "--config.seed=3") == 2
    err = capsys.readouterr().err
    assert "train.batch_size: saved 2, this config 1" in err and "seed: saved 0, this config 3" in err
    assert _train(workdir, camvid_small, "--config.optimizer.name=adamw") == 2
    assert "optimizer.name: saved 'sgd', this config 'adamw'" in capsys.readouterr().err
    # Other examples under the same dataset name (another subset of CamVid).
    other = data.prepare_camvid(
        make_camvid_subset(tmp_path / "other", {"train": 7, "val": 1}), tmp_path / "prep", progress=False
    )
    assert _train(workdir, other) == 2
    assert "the train split's examples differ" in capsys.readouterr().err
    assert _untouched(workdir) == before


def test_restart_moves_the_old_run_aside_and_starts_a_new_one(reference_run, camvid_small, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = _untouched(workdir)
    r = run(
        train_cmd(workdir, camvid_small, "--restart", "--config.model.variant=32s", "--config.train.steps=1")
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (old,) = tmp_path.glob("run.old-*")
    assert f"moved the previous run to {old}" in r.stdout
    assert _untouched(old) == before
    assert run_lib.Run(workdir).spec().variant == "32s" and steps_in(workdir / "checkpoints") == [1]


def test_a_run_that_is_already_done_trains_nothing(reference_run, camvid_small, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = tree_digest(workdir / "checkpoints")
    assert _train(workdir, camvid_small, "--config.train.steps=4") == 0
    assert "nothing to train" in capsys.readouterr().out
    assert tree_digest(workdir / "checkpoints") == before


# -- one trainer per directory; signals ----------------------------------------------------------


def _start(workdir, data_dir, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        train_cmd(workdir, data_dir, *extra),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before {path} appeared: {proc.communicate()[1][-3000:]}")
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)


def test_a_second_trainer_is_refused_and_sigterm_saves_the_current_step(camvid_small, tmp_path, capsys):
    workdir = tmp_path / "run"
    proc = _start(workdir, camvid_small, "--config.train.steps=1000", "--config.train.checkpoint_every=2")
    try:
        _wait_for(workdir / "checkpoints" / "2", proc)
        t = time.time()
        assert _train(workdir, camvid_small) == 2
        (line,) = _error_lines(capsys.readouterr().err)
        assert f"pid {proc.pid}" in line and "another fcn-jax train" in line and time.time() - t < 30
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    saved = int(err.split("after step ")[1].split(";")[0])
    assert saved >= 2 and saved in steps_in(workdir / "checkpoints"), err[-2000:]
    assert checkpoints.verify(workdir / "checkpoints" / str(saved))
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == saved  # logged every step, up to the one saved


def test_ctrl_c_saves_and_the_resumed_run_is_bitwise_equal(reference_run_host, camvid_small, tmp_path):
    """On the host input path (grain, batches prefetched two steps ahead): the saved data
    state is that of the last batch taken, not of the ones waiting on the devices."""
    workdir = tmp_path / "run"
    host = "--config.data.device_cache=off"
    proc = _start(workdir, camvid_small, host)
    try:
        _wait_for(workdir / "checkpoints" / "2", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "SIGINT: saving a checkpoint after this step" in err
    saved = steps_in(workdir / "checkpoints")[-1]
    assert 2 < saved < STEPS, "stopped at a step the schedule does not save"
    r = run(train_cmd(workdir, camvid_small, host))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoints/{saved}" in r.stdout
    assert_trees(params_at(workdir), params_at(reference_run_host))


def test_a_second_signal_stops_at_once_with_one_line_and_the_run_resumes(camvid_small, tmp_path):
    """A second signal while the first waits for its step and save: no traceback, the
    second signal's exit code, and the next run continues from a checkpoint that is whole.
    (Two different signals: two of one kind sent together would arrive as one.)"""
    workdir = tmp_path / "run"
    proc = _start(workdir, camvid_small, "--config.train.steps=1000", "--config.train.checkpoint_every=2")
    try:
        _wait_for(workdir / "checkpoints" / "2", proc)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "SIGINT: saving a checkpoint after this step" in err, err[-3000:]
    (line,) = _error_lines(err)
    newest = steps_in(workdir / "checkpoints")[-1]
    assert line == (
        f"fcn-jax train: stopped at once by a second signal (SIGTERM), without saving; "
        f"the same command continues from step {newest}"
    )
    cut_short = [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()]
    r = run(train_cmd(workdir, camvid_small, f"--config.train.steps={newest + 2}"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoints/{newest}" in r.stdout
    assert [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()] == []
    aside = [p.name for p in (workdir / "set_aside").glob("*")] if cut_short else []
    assert all(any(a.startswith(f"checkpoints_{name}_incomplete") for a in aside) for name in cut_short)
    assert steps_in(workdir / "checkpoints")[-1] == newest + 2


def test_a_second_signal_raises_stopped_at_once_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train.StoppedAtOnce) as stopped:
        with train.StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # Python runs the handler in this thread, between bytecodes
            assert signals.requested(is_log_step=False) == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            pytest.fail("the second SIGTERM did not stop at once")
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_host_stays_at_most_two_steps_ahead_of_the_devices():
    """Unpaced, jax returns before a step has run and XLA:CPU queues many: the progress
    bar would count steps not done, and a stop request would wait for all of them."""
    slow = jax.jit(lambda x: jax.lax.fori_loop(0, 30, lambda _, y: jnp.tanh(y @ y), x))
    x = jnp.full((384, 384), 1e-3)
    unpaced = [slow(x)]
    for _ in range(3):
        unpaced.append(slow(unpaced[-1]))
    assert not unpaced[0].is_ready(), "dispatch did not run ahead: this test could not fail"
    jax.block_until_ready(unpaced)
    pacer, outputs = train.StepPacer(ahead=2), [x]
    for _ in range(5):
        outputs.append(slow(outputs[-1]))
        pacer.push(outputs[-1])
        assert all(o.is_ready() for o in outputs[:-2])


# -- config values checked before the first step -----------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.data.eval_split=vall", "config.data.eval_split = 'vall': "),
        ("--config.train.steps=0", "config.train.steps = 0: must be an integer >= 1"),
        ("--config.train.log_every=0", "config.train.log_every = 0: must be an integer >= 1"),
        ("--config.train.checkpoint_every=-1", "config.train.checkpoint_every = -1"),
        ("--config.model.ops.conv=fast", "ops.conv must be one of winograd, xla"),
        ("--config.optimizer.schedule=linear", "config.optimizer.schedule = 'linear'"),
        ("--config.train.batch_size=9", "more than the 8 examples"),
        ("--config.loss.class_weighting=sqrt", "class_weighting = 'sqrt': must be one of none, median_"),
    ],
)
def test_bad_config_values_are_refused_before_training(camvid_small, tmp_path, capsys, override, message):
    workdir = tmp_path / "run"
    assert _train(workdir, camvid_small, "--config.data.eval_split=val", override) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (workdir / "model.json").exists() and not (workdir / "checkpoints").exists()


def test_batch_size_must_divide_over_the_devices(camvid_small, tmp_path):
    r = run(
        train_cmd(tmp_path / "run", camvid_small, "--config.train.batch_size=3"),
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert r.returncode == 2
    assert "config.train.batch_size = 3: must be a multiple of the device count (2)" in r.stderr


def test_init_from_must_cover_the_backbone(camvid_small, tmp_path, capsys):
    from fcn_jax import convert

    params = random_params(FCN(11, "8s"))
    alexnet = {k: v for k, v in params.items() if k in convert.TRANSPLANTED and k != "fc7"}
    convert.save_params(alexnet, tmp_path / "partial.msgpack")
    assert _train(tmp_path / "run", camvid_small, f"--config.init_from={tmp_path / 'partial.msgpack'}") == 2
    err = capsys.readouterr().err
    assert "config.init_from" in err and "fc7" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.json").exists()

    # Every layer, at the classifier's width: a narrower fc6 and fc7 cannot take it.
    convert.save_params({k: params[k] for k in convert.TRANSPLANTED}, tmp_path / "alexnet.msgpack")
    narrow = ("--config.model.fc_channels=64", f"--config.init_from={tmp_path / 'alexnet.msgpack'}")
    assert _train(tmp_path / "run", camvid_small, *narrow) == 2
    err = capsys.readouterr().err
    assert "fc6 (" in err and "(6, 6, 256, 4096)} vs" in err and "(6, 6, 256, 64)}" in err
    assert "fc7 (" in err and "(1, 1, 4096, 4096)} vs" in err and "Traceback" not in err
    assert "conv5" not in err and not (tmp_path / "run" / "model.json").exists()

    # The whole classifier, but the model normalises after each convolution: nothing to load there.
    grouped = ("--config.model.norm=group", f"--config.init_from={tmp_path / 'alexnet.msgpack'}")
    assert _train(tmp_path / "run", camvid_small, *grouped) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "config.init_from" in line and "config.model.norm = 'group'" in line
    assert not (tmp_path / "run" / "model.json").exists()


def test_an_unwritable_workdir_is_one_line(camvid_small, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _train(tmp_path / "file" / "run", camvid_small) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "--workdir" in line and "not writable" in line


def test_a_folder_of_other_files_is_not_taken_for_a_run(camvid_small, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert _train(tmp_path, camvid_small) == 2
    assert "holds files but no run" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "model.json").exists()


# -- reading a run: one model builder, one line for every kind of damage ---------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, camvid_small) -> Path:
    """A run whose model uses XLA's convolution (not the default Winograd)."""
    params = random_params(FCN(11, "8s"), seed=1)
    root = tmp_path_factory.mktemp("small") / "run"
    return write_run(root, params, data.load_meta(camvid_small), str(camvid_small), conv="xla")


def test_inference_builds_the_model_the_run_recorded(small_run):
    from fcn_jax.predict import Segmenter

    trained = run_lib.load_trained(small_run)
    assert trained.model.ops.conv == "xla" and trained.model == run_lib.Run(small_run).spec().build()
    assert Segmenter.from_checkpoint(small_run).model.ops.conv == "xla"
    assert trained.step_dir == small_run / "best" / "8"
    assert run_lib.load_trained(small_run / "best" / "8").step == 8
    # Parameters only: the optimizer state is not read.
    assert set(trained.params) == set(
        FCN(11, "8s").init(jax.random.key(0), np.zeros((1, 64, 64, 3)))["params"]
    )


def _commands(run_dir: Path, tmp: Path, camvid_small: Path) -> dict[str, list[str]]:
    image = tmp / "photo.png"
    Image.fromarray(camvid_crops(camvid_small.parents[2], "val", 1)[0][1]).save(image)
    return {
        "eval": ["eval", "--workdir", str(run_dir), "--quiet"],
        "predict": [
            "predict",
            "--checkpoint",
            str(run_dir),
            str(image),
            "--out",
            str(tmp / "pred"),
            "--quiet",
        ],
        "export": [
            "export",
            "--checkpoint",
            str(run_dir),
            "--out",
            str(tmp / "m.jaxexport"),
            "--height",
            "33",
        ],
        "report": ["report", "--workdir", str(run_dir), "--quiet", "--num-images", "1"],
    }


@pytest.mark.parametrize("command", ["eval", "predict", "export", "report"])
def test_a_corrupted_checkpoint_is_one_line_naming_its_step_directory(
    small_run, camvid_small, tmp_path, capsys, command
):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    step_dir = run_dir / "best" / "8"
    target = max((step_dir / "state").rglob("*"), key=lambda f: f.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[100:164] = bytes(64)  # same size: only the checksum can tell
    target.write_bytes(bytes(raw))
    args = _commands(run_dir, tmp_path, camvid_small)[command]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert str(step_dir) in line and "does not match its checksum" in line


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_an_empty_or_invalid_record_is_one_line_naming_the_file(
    small_run, camvid_small, tmp_path, capsys, content
):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    (run_dir / "model.json").write_text(content)
    assert cli.main(["eval", "--workdir", str(run_dir), "--quiet"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(run_dir / "model.json") in line
    (run_dir / "config.json").write_text(content)
    shutil.copy(small_run / "model.json", run_dir / "model.json")
    assert _train(run_dir, camvid_small) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(run_dir / "config.json") in line


def test_an_unwritable_out_is_one_line(small_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["eval", "--workdir", str(small_run), "--out", str(blocker / "x.json"), "--quiet"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "--out" in line and str(blocker) in line


def test_a_start_cut_short_before_its_first_checkpoint_is_begun_again(camvid_small, tmp_path):
    """Records but no checkpoint: nothing to continue, so another config may start there;
    an unreadable config.json of such a run is replaced, not refused."""
    from fcn_jax import config as config_lib
    from fcn_jax.models import ModelSpec

    c = config_lib.base_config()
    meta = data.load_meta(camvid_small)
    run_dir = run_lib.Run(tmp_path / "run")
    run_dir.root.mkdir()
    run_lib.write_records(
        run_dir,
        json.loads(c.to_json()),
        ModelSpec.from_config(c.model, 11),
        run_lib.dataset_record(meta, "train"),
        0,
    )
    (run_dir.root / "config.json").write_text("{cut")
    c.model.variant = "16s"
    spec = ModelSpec.from_config(c.model, 11)
    run_lib.write_records(run_dir, json.loads(c.to_json()), spec, run_lib.dataset_record(meta, "train"), 0)
    assert run_dir.spec() == spec and run_dir.config()["model"]["variant"] == "16s"
    assert not run_dir.has_checkpoints()
