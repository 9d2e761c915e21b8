"""The training loop: data, jitted steps over a device mesh, checkpoints, logs.

The pure parts (loss, optimizer, steps) live in `fcn_jax.training`; the run
directory's layout and records in `fcn_jax.run`; this module does the IO around
them. A run directory resumes by itself: start the same command again and it
continues from the newest intact checkpoint, with the data iterator exactly where
it was, so a killed run ends with the same parameters as an uninterrupted one.

What is refused or recovered, and where:
- every config value is checked before anything runs (`config.check`, `_check_data`);
- one process trains in a run directory at a time (`run.RunLock`);
- a config that cannot continue the saved run is refused before anything is written
  (`run.check_resumable`); `restart=True` moves the old run aside first;
- damaged, half-written or diverged checkpoints are set aside, never deleted, and the
  newest intact one is resumed (`run.CheckpointStore`);
- no state is saved unless every step since the last save kept it finite; a
  non-finite step stops the run (NonFiniteLoss) within one logging interval;
- SIGINT / SIGTERM save the current step, then stop (Interrupted); a second signal
  stops at once without saving (StoppedAtOnce).
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fcn_jax import config as config_lib
from fcn_jax import fsutil, geometry, training
from fcn_jax import run as run_lib
from fcn_jax.data import device as device_data
from fcn_jax.data import transforms
from fcn_jax.models import FCN, ModelSpec


class NonFiniteLoss(RuntimeError):
    """The run diverged; the message names the step and the last good checkpoint."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the current step was saved and the run stopped."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        import signal

        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; saved {checkpoint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM arrived while the first was waiting to save: the run
    stopped without saving; it resumes from its last checkpoint."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# -- setup ------------------------------------------------------------------------


def initialize_distributed(
    coordinator: str, num_processes: int, process_id: int, timeout_s: int = 120
) -> None:
    """`jax.distributed.initialize`, with a watchdog: a peer that never joins makes
    JAX abort from C++ after the timeout; the watchdog says why first and exits."""
    if num_processes <= 1:
        return
    print(
        f"process {process_id}/{num_processes}: joining {coordinator} (waiting up to {timeout_s}s for peers)",
        flush=True,
    )
    done = threading.Event()

    def watchdog():
        if not done.wait(timeout_s + 15):
            print(
                f"error: process {process_id}: not all {num_processes} processes joined {coordinator} "
                f"within {timeout_s}s; exiting",
                file=sys.stderr,
                flush=True,
            )
            os._exit(4)

    threading.Thread(target=watchdog, daemon=True).start()
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s)
    done.set()


def resolve_data_dir(config: ml_collections.ConfigDict) -> Path:
    """The prepared dataset; CamVid is prepared on first use from its source folder."""
    from fcn_jax import data

    if config.data.data_dir:
        return data.resolve_dataset_dir(config.data.data_dir)
    from fcn_jax.data.builder import default_out

    root = default_out() / config.data.name
    try:
        return data.resolve_dataset_dir(root)
    except data.DataError:
        if config.data.name != "camvid":
            raise
    if jax.process_index() == 0:
        print(f"preparing CamVid into {default_out()} (once)", flush=True)
        data.prepare_camvid(config.data.source or None, default_out())
    _sync("prepared")
    return data.resolve_dataset_dir(root)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def crop_margin(config: ml_collections.ConfigDict) -> tuple[tuple[int, int], tuple[int, int]]:
    """The context each training crop's image carries around it: with `data.crop_context`,
    the padding the model adds around an image of the crop's size (`geometry.plan`), which
    is then filled from the scaled frame instead of with zeros; else none."""
    if not config.data.crop_context:
        return transforms.NO_MARGIN
    m = config.model
    return geometry.plan(*config.data.crop_size, m.variant, m.backbone).pads


def make_loader(config: ml_collections.ConfigDict, data_dir: Path, mesh):
    """The training input path `config.data.device_cache` selects: the train split on the
    devices, batches built inside the step (`data.device.DeviceLoader`), when it fits
    `device_cache_mb` ("auto") or when asked ("on"); else the grain pipeline on the host."""
    from fcn_jax import data

    d = config.data
    common = dict(
        split=d.train_split,
        global_batch_size=config.train.batch_size,
        crop_size=tuple(d.crop_size) if d.crop_size else None,
        scale_range=tuple(d.scale_range) if d.scale_range else None,
        flip=d.flip,
        seed=config.seed,
        jitter=tuple(d.color_jitter),
        margin=crop_margin(config),
    )
    size = device_data.cache_bytes(data_dir, d.train_split)
    if d.device_cache == "on" or (d.device_cache == "auto" and size <= d.device_cache_mb * 2**20):
        return device_data.DeviceLoader(
            data_dir, mesh, **common, nan_at_batch=config.train.nan_at_step, progress=jax.process_index() == 0
        )
    return data.TrainLoader(
        data_dir,
        **common,
        num_threads=d.num_threads or None,
        cache=d.cache,
        normalize=False,  # uint8 to the device, normalised inside the jitted step
    )


def _check_data(config: ml_collections.ConfigDict, meta) -> None:
    """What can only be checked once the dataset and the devices are known."""
    errors = []
    splits = ", ".join(f"{k} ({n})" for k, n in meta.splits.items())
    for key in ("train_split", "eval_split"):
        split = config.data[key]
        if split and split not in meta.splits:
            errors.append(
                f"config.data.{key} = {split!r}: {meta.data_dir} has no such split (it has {splits})"
            )
    missing = [s for s in config.data.extra_eval_splits if s not in meta.splits]
    if missing:
        again = (
            "; prepare CamVid again (--overwrite) for the held-out drive's splits"
            if meta.name == "camvid"
            else ""
        )
        errors.append(
            f"config.data.extra_eval_splits: {meta.data_dir} has no split {', '.join(map(repr, missing))} "
            f"(it has {splits}){again}"
        )
    devices, processes = jax.device_count(), jax.process_count()
    for key in ("batch_size", "eval_batch_size"):
        b = config.train[key]
        if b % devices or b % processes:
            errors.append(
                f"config.train.{key} = {b}: must be a multiple of the device count ({devices}) "
                f"and of the process count ({processes})"
            )
    train = meta.splits.get(config.data.train_split, 0)
    if train and config.train.batch_size > train:
        errors.append(
            f"config.train.batch_size = {config.train.batch_size}: more than the "
            f"{train} examples of split {config.data.train_split!r}"
        )
    if errors:
        raise config_lib.ConfigError("\n".join(errors))


def initial_params(config: ml_collections.ConfigDict, model: FCN, rng: jax.Array) -> dict:
    """Fresh params, with whatever `config.init_from` provides transplanted in.

    A converted classifier file (`fcn-jax convert --arch` the model's backbone) must provide
    every layer that is transplanted (`convert.transplanted`: conv1-fc7 for AlexNet);
    a run directory (an earlier stage, e.g. FCN-32s for FCN-16s) must provide at least
    those too, with the same shapes; every other layer of the same name and shape is
    copied as well. Anything less is a ConfigError naming what is missing.
    """
    from fcn_jax import convert
    from fcn_jax.models import init_params

    params = jax.tree.map(np.asarray, init_params(model, rng))
    source = config.init_from
    if not source:
        return params
    path = Path(source)
    need = convert.transplanted(model.backbone)
    arch = convert.ARCH_NAMES[model.backbone]
    if path.is_file():  # converted classifier weights (fcn-jax convert --arch model.backbone)
        if model.norm != "none":
            raise config_lib.ConfigError(
                f"config.init_from = {source!r}: a classifier has no normalisation layers for "
                f"config.model.norm = {model.norm!r}; train from scratch or set it to 'none'"
            )
        try:
            classifier = convert.load_params(path)
        except (OSError, ValueError) as e:
            raise config_lib.ConfigError(f"config.init_from = {source!r}: {e}") from None
        missing = [
            f"{k} ({_shapes(classifier.get(k))} vs {_shapes(params[k])})"
            for k in need
            if _shapes(classifier.get(k)) != _shapes(params[k])
        ]
        if missing:
            raise config_lib.ConfigError(
                f"config.init_from = {source!r}: not {arch} weights this FCN can use "
                f"(config.model.backbone = {model.backbone!r}); "
                f"missing or of another shape: {', '.join(missing)}"
            )
        return convert.fcn_from_classifier(
            classifier,
            model.num_classes,
            model.variant,
            rng,
            trainable_upsampling=model.trainable_upsampling,
            backbone=model.backbone,
        )
    if path.is_dir():
        try:
            src = run_lib.load_trained(path)
        except run_lib.RunError as e:
            raise config_lib.ConfigError(f"config.init_from = {source!r}: {e}") from None
        copied = [
            k for k, layer in src.params.items() if k in params and _shapes(layer) == _shapes(params[k])
        ]
        missing = [k for k in need if k not in copied]
        if missing:
            raise config_lib.ConfigError(
                f"config.init_from = {source!r}: its {', '.join(missing)} do not fit this model "
                "(another backbone or layer sizes)"
            )
        for k in copied:
            params[k] = {n: np.asarray(v, np.float32) for n, v in src.params[k].items()}
        if jax.process_index() == 0:
            print(f"init_from {src.step_dir}: copied {', '.join(copied)}")
        return params
    raise config_lib.ConfigError(
        f"config.init_from = {source!r}: neither a converted weights file nor a run directory"
    )


def _shapes(layer) -> dict | None:
    return None if layer is None else {k: tuple(np.shape(v)) for k, v in layer.items()}


class MetricLog:
    """metrics.jsonl plus TensorBoard events; only process 0 writes.

    On resume, records after the checkpoint resumed from are dropped (they will be
    logged again), and so is a line cut short by a kill or a full disk, with a warning;
    the file is rewritten atomically, and only if something was dropped."""

    def __init__(self, path: Path, tensorboard_dir: Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = path
        if not self.enabled:
            return
        if self.path.exists():
            text = self.path.read_text(errors="replace")
            kept = []
            lines = text.splitlines()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    step = int(record["step"])
                except (ValueError, KeyError, TypeError):
                    where = "its last line is cut short" if n == len(lines) else f"line {n} is not a record"
                    run_lib.warn(f"{self.path}: {where}; dropped it")
                    continue
                if step <= resume_step:
                    kept.append(line)
            new = "".join(line + "\n" for line in kept)
            if new != text:
                fsutil.atomic_write_text(self.path, new)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{split}/{k}", v, step)
            elif isinstance(v, dict):
                for name, x in v.items():
                    if isinstance(x, (int, float)) and x == x:
                        self.tb.add_scalar(f"{split}/{k}/{name}", x, step)
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


class StopSignals:
    """SIGINT and SIGTERM ask the loop to save the current step and stop; a second
    signal stops at once (StoppedAtOnce). Installed only in the main thread."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        import signal

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        if self.signum is not None:
            raise StoppedAtOnce(signum)
        self.signum = signum
        if jax.process_index() == 0:
            print(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                "(send it again to stop at once, without saving)",
                file=sys.stderr,
                flush=True,
            )

    def requested(self, is_log_step: bool) -> int | None:
        """The signal to stop for, agreed by all processes (which check at logging steps)."""
        if jax.process_count() == 1:
            return self.signum
        if not is_log_step:
            return None
        from jax.experimental import multihost_utils

        seen = multihost_utils.process_allgather(np.int32(self.signum or 0))
        return int(np.max(seen)) or None

    def __exit__(self, *exc) -> None:
        import signal

        for s, handler in self._previous.items():
            signal.signal(s, handler)


class StepPacer:
    """Keeps the host at most `ahead` steps in front of the devices.

    JAX dispatches a step and returns before it has run, and XLA:CPU queues many such
    steps. Unbounded, the progress bar counts steps dispatched rather than done, and a
    stop request (a signal) must wait for every queued step before it can save: tens
    of seconds on a slow host, long enough for a user to press Ctrl-C again and lose
    the step. Two steps ahead still keep an accelerator busy: the next step is queued
    while the current one runs.
    """

    def __init__(self, ahead: int = 2):
        self.ahead = ahead
        self._queue: collections.deque = collections.deque()

    def push(self, output: jax.Array) -> None:
        """Note a step's output; wait until the one `ahead` steps before it is done."""
        self._queue.append(output)
        while len(self._queue) > self.ahead:
            self._queue.popleft().block_until_ready()


# -- the loop ---------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, restart: bool = False) -> dict:
    """Train, resuming if `workdir` holds a run; returns the last eval metrics.

    `restart=True` moves a run already in `workdir` aside (to `<workdir>.old-<time>`)
    and starts a new one. Raises config.ConfigError, run.RunError (and its
    RunLocked / IncompatibleRun), data.DataError, NonFiniteLoss, Interrupted or
    StoppedAtOnce.
    """
    config_lib.check(config)
    root = Path(workdir).absolute()
    primary = jax.process_index() == 0
    lock = None
    try:
        if primary:
            lock = run_lib.RunLock(root).acquire()
            if restart and run_lib.Run(root).exists():
                moved = run_lib.move_aside(run_lib.Run(root))
                new_lock = run_lib.RunLock(root).acquire()
                lock.release()
                lock = new_lock
                print(f"moved the previous run to {moved}", flush=True)
        _sync("fcn_jax_locked")
        if not primary:
            lock = run_lib.RunLock(root, jax.process_index()).acquire()
        return _train(config, run_lib.Run(root))
    finally:
        if lock is not None:
            lock.release()


def _train(config: ml_collections.ConfigDict, run: run_lib.Run) -> dict:
    from tqdm import tqdm

    from fcn_jax import data

    primary = jax.process_index() == 0
    data_dir = resolve_data_dir(config)
    meta = data.load_meta(data_dir)
    _check_data(config, meta)
    spec = ModelSpec.from_config(config.model, meta.num_classes)
    model = spec.build()
    steps, accumulate = int(config.train.steps), int(config.optimizer.accumulate_steps)
    tx, schedule = training.make_optimizer(config.optimizer, decay_steps=max(steps // accumulate, 1))
    mesh = training.data_mesh()
    replicated = NamedSharding(mesh, P())
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(lambda: training.init_state(model, tx, rng))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)

    # -- is this a new run, or one this config may continue? (nothing is written before) --
    user_config = json.loads(config.to_json())
    dataset = run_lib.dataset_record(meta, config.data.train_split)
    started = run.has_checkpoints()  # records without a checkpoint: a start cut short, begun again
    if started:
        problems = run_lib.check_resumable(run, user_config, spec, dataset, abstract)
        if problems:
            raise run_lib.IncompatibleRun(
                f"{run.root} holds a run that this config cannot continue:\n  "
                + "\n  ".join(problems)
                + f"\nTrain in another --workdir, or pass --restart to move the saved run aside to "
                f"{run.root.name}.old-<time> (nothing is deleted)."
            )
    elif not run.exists():
        others = [p.name for p in run.root.iterdir() if not p.name.startswith(run_lib.LOCK)]
        if others:
            raise run_lib.RunError(
                f"{run.root}: holds files but no run ({', '.join(sorted(others)[:5])}); "
                "pass an empty or new --workdir"
            )
    fresh = None
    if not run.steps(run_lib.LATEST):  # init_from is checked before anything is written
        fresh = initial_params(config, model, jax.random.fold_in(rng, 1))
    if primary:
        changes = run_lib.write_records(
            run, user_config, spec, dataset, (run.steps(run_lib.LATEST) or [0])[-1]
        )
        if changes:
            print("resuming with a changed config (the previous one is kept in configs/):", flush=True)
            for line in changes:
                print(f"  {line}", flush=True)
    _sync("fcn_jax_records")

    # From the split it trains on: a held-out drive's class frequencies stay unseen too.
    class_weights = data.class_weights(data_dir, config.data.train_split, config.loss.class_weighting)
    loader = make_loader(config, data_dir, mesh)
    on_device = loader.path == device_data.PATH
    train_step, _ = training.compile_steps(
        mesh,
        model,
        tx,
        meta.ignore_index,
        class_weights,
        device_data=loader.aug if on_device else None,
        focal_gamma=config.loss.focal_gamma,
        lovasz_weight=config.loss.lovasz_weight,
        context=config.data.crop_context,
    )
    store = run_lib.CheckpointStore(run, keep=config.train.keep_checkpoints)
    restored = store.restore_latest(abstract)
    if restored is not None:
        state, ckpt_meta, start = restored
        try:
            loader.set_state(ckpt_meta["data_state"])
        except ValueError as e:
            raise run_lib.IncompatibleRun(f"{run.latest_dir / str(start)}: {e}") from None
        if primary:
            print(f"resuming from {run.latest_dir / str(start)}", flush=True)
    else:
        if fresh is None:  # every checkpoint was set aside
            fresh = initial_params(config, model, jax.random.fold_in(rng, 1))
        state = jax.jit(lambda p: training.init_state(model, tx, rng, p), out_shardings=replicated)(fresh)
        start = 0
    if start >= steps:
        if primary:
            print(f"{run.root} is at step {start}, train.steps is {steps}: nothing to train", flush=True)
        return {}

    log = MetricLog(run.metrics_file, run.root / "tensorboard", start)
    segmenters: dict = {}  # one per model: its compiled programs draw every evaluation's pictures
    health = training.healthy()
    last_eval: dict = {}
    bar = tqdm(total=steps, initial=start, disable=not primary, desc="train", unit="step", dynamic_ncols=True)
    if not on_device:  # batches cross to the devices two steps ahead of their use
        loader = data.Prefetcher(loader, mesh, size=2)
    t0, seen, host_s = time.perf_counter(), 0, 0.0
    pacer = StepPacer()
    try:
        with StopSignals() as signals:
            for step in range(start, steps):
                t_host = time.perf_counter()
                if on_device:
                    inputs = (loader.cache, next(loader))
                else:
                    batch = next(loader)
                    if step == config.train.nan_at_step:
                        batch = {**batch, "image": batch["image"] * np.float32("nan")}
                    inputs = (batch,)
                host_s += time.perf_counter() - t_host  # the host's share; the call below is the device's
                state, metrics = train_step(state, *inputs)
                health = training.track_health(health, metrics, state.step)
                pacer.push(metrics["loss"])
                done = step + 1
                seen += config.train.batch_size
                bar.update(1)
                is_log = done % config.train.log_every == 0 or done == steps
                is_eval = bool(config.data.eval_split) and (
                    done == steps or bool(config.train.eval_every and done % config.train.eval_every == 0)
                )
                is_save = done % config.train.checkpoint_every == 0 or done == steps
                stop = signals.requested(is_log)
                if not (is_log or is_eval or is_save or stop):
                    continue  # no device-to-host read: the host runs ahead of the device
                _check_health(health, store, run)
                if is_log:
                    loss = float(metrics["loss"])
                    lr = float(schedule((done - 1) // accumulate))
                    rate = seen / (time.perf_counter() - t0)
                    record = {
                        "loss": loss,
                        "learning_rate": lr,
                        "grad_norm": float(metrics["grad_norm"]),
                        "images_per_s": rate,
                        "host_us_per_step": 1e6 * host_s / (seen // config.train.batch_size),
                    }
                    log.write(done, "train", record)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.2f}")
                    t0, seen, host_s = time.perf_counter(), 0, 0.0
                ckpt_meta = {"data_state": loader.get_state(), "step": done}
                if is_eval:
                    last_eval = evaluate_and_draw(
                        config, run.root, model, state.params, data_dir, meta, mesh, done, segmenters
                    )
                    log.write(done, config.data.eval_split, last_eval)
                    for split in config.data.extra_eval_splits:  # reported beside, not selected on
                        log.write(
                            done,
                            split,
                            evaluate_split(config, model, state.params, data_dir, mesh, split, done),
                        )
                    store.save_best(done, state, ckpt_meta, last_eval["miou"])
                    t0, seen, host_s = time.perf_counter(), 0, 0.0
                if is_save or stop:
                    saved = store.save(done, state, ckpt_meta)
                if stop:
                    raise Interrupted(stop, done, saved)
    finally:
        bar.close()
        log.close()
    return last_eval


def _check_health(health: training.Health, store: run_lib.CheckpointStore, run: run_lib.Run) -> None:
    """Raise NonFiniteLoss if any step since the start diverged; nothing is saved then."""
    ok, bad_step, bad_loss = (np.asarray(x) for x in health)
    if bool(ok):
        return
    good = store.latest_step()
    where = f"{run.latest_dir / str(good)}" if good is not None else "none (no checkpoint was saved yet)"
    what = (
        f"loss is {float(bad_loss)}"
        if not math.isfinite(float(bad_loss))
        else (f"parameters or gradients became non-finite (loss {float(bad_loss):.4g})")
    )
    raise NonFiniteLoss(
        f"{what} at step {int(bad_step)}; stopping without saving it. The last good checkpoint is "
        f"{where}. Lower optimizer.learning_rate or set optimizer.clip_grad_norm, then run again: "
        "it resumes from there."
    )


def evaluate_and_draw(
    config, workdir: Path, model: FCN, params: Any, data_dir: Path, meta, mesh, step: int, segmenters: dict
) -> dict:
    """Metrics on the selection split, and a picture of a few of its predictions under
    workdir/pictures."""
    summary = evaluate_split(config, model, params, data_dir, mesh, config.data.eval_split, step)
    if jax.process_index() == 0 and config.train.num_pictures:
        draw_predictions(
            model,
            params,
            data_dir,
            meta,
            config.data.eval_split,
            config.train.num_pictures,
            workdir / "pictures" / f"step_{step:06d}.png",
            segmenters,
        )
    return summary


def evaluate_split(config, model: FCN, params: Any, data_dir: Path, mesh, split: str, step: int) -> dict:
    from fcn_jax import evaluate

    summary = evaluate.evaluate(
        model, params, data_dir, split, config.train.eval_batch_size, mesh=mesh
    ).to_dict()
    if jax.process_index() == 0:
        print(
            f"step {step}: {split} mIoU {summary['miou']:.4f}, "
            f"pixel accuracy {summary['pixel_accuracy']:.4f}",
            flush=True,
        )
    return summary


def draw_predictions(
    model: FCN, params: Any, data_dir: Path, meta, split: str, count: int, path: Path, segmenters: dict
) -> None:
    """image | truth | prediction for `count` examples spread over the split."""
    from PIL import Image

    from fcn_jax import visualize
    from fcn_jax.predict import Segmenter
    from fcn_jax.report import read_examples

    # This process's replica of the (replicated, possibly multi-host) parameters.
    local = jax.tree.map(lambda a: a.addressable_data(0), params)
    segmenter = segmenters.get(model)
    if segmenter is None:  # one per model: its compiled programs serve every evaluation
        segmenter = segmenters[model] = Segmenter(model, local, meta, batch_size=count)
    else:
        segmenter.set_params(local)
    examples = read_examples(data_dir, split, count)
    preds = segmenter.predict([image for _, image, _ in examples])
    grid = visualize.prediction_grid(
        [e[1] for e in examples], [e[2] for e in examples], preds, meta.palette, meta.ignore_index
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsutil.atomic_output(path) as tmp:
        Image.fromarray(grid).save(tmp)
