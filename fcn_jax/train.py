"""The training loop: data, jitted steps over a device mesh, checkpoints, logs.

The pure parts (loss, optimizer, steps) live in `fcn_jax.training`; this module
does the IO around them. A run directory resumes by itself: start the same
command again and it continues from the newest intact checkpoint, with the data
iterator exactly where it was, so a killed run ends with the same parameters as
an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fcn_jax import checkpoints, training
from fcn_jax.models import FCN


class NonFiniteLoss(RuntimeError):
    pass


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


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> FCN:
    m = config.model
    return FCN(
        num_classes,
        m.variant,
        dropout_rate=m.dropout_rate,
        trainable_upsampling=m.trainable_upsampling,
        dtype=jnp.dtype(m.dtype),
        winograd=m.get("winograd", True),
    )


def initial_params(config: ml_collections.ConfigDict, model: FCN, rng: jax.Array) -> dict:
    """Fresh params, with whatever `config.init_from` provides transplanted in."""
    from fcn_jax import convert
    from fcn_jax.models import init_params

    params = jax.tree.map(np.asarray, init_params(model, rng))
    source = config.init_from
    if not source:
        return params
    path = Path(source)
    if path.is_file():  # converted AlexNet weights
        alexnet = convert.load_params(path)
        return convert.fcn_from_alexnet(
            alexnet, model.num_classes, model.variant, rng, trainable_upsampling=model.trainable_upsampling
        )
    if path.is_dir():  # an earlier stage (e.g. FCN-32s for FCN-16s)
        src, _, step = checkpoints.load_params(path)
        copied = []
        for name, layer in src.items():
            if name in params and all(np.shape(layer[k]) == np.shape(params[name].get(k)) for k in layer):
                params[name] = {k: np.asarray(v, np.float32) for k, v in layer.items()}
                copied.append(name)
        if jax.process_index() == 0:
            print(f"init_from {path} (step {step}): copied {', '.join(copied)}")
        return params
    raise FileNotFoundError(
        f"config.init_from: {source} is neither a converted weights file nor a run directory"
    )


class MetricLog:
    """metrics.jsonl plus TensorBoard events; only process 0 writes."""

    def __init__(self, workdir: Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.enabled:
            return
        if self.path.exists():  # drop what was logged after the checkpoint we resume from
            kept = [
                l
                for l in self.path.read_text().splitlines()
                if l.strip() and json.loads(l)["step"] <= resume_step
            ]
            self.path.write_text("".join(l + "\n" for l in kept))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(
            str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
        )

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


# -- the loop ---------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train (resuming if `workdir` has checkpoints); returns the last metrics."""
    from tqdm import tqdm

    from fcn_jax import data

    workdir = Path(workdir).absolute()
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    _sync("workdir")
    data_dir = resolve_data_dir(config)
    meta = data.load_meta(data_dir)
    model = build_model(config, meta.num_classes)

    config = ml_collections.ConfigDict(config.to_dict())
    config.model.num_classes = meta.num_classes
    config.data.data_dir = str(data_dir)
    if primary:
        checkpoints.write_json(workdir / "config.json", json.loads(config.to_json()))
        checkpoints.write_json(workdir / "dataset.json", checkpoints.meta_to_json(meta))

    steps, accumulate = int(config.train.steps), int(config.optimizer.accumulate_steps)
    tx, schedule = training.make_optimizer(
        {**config.optimizer.to_dict(), "decay_steps": max(steps // accumulate, 1)}
    )
    class_weights = None
    if config.loss.class_weighting == "median_frequency":
        class_weights = data.class_weights(data_dir)
    elif config.loss.class_weighting != "none":
        raise ValueError(
            f"loss.class_weighting must be none or median_frequency, got {config.loss.class_weighting!r}"
        )

    mesh = training.data_mesh()
    replicated = NamedSharding(mesh, P())
    train_step, _ = training.compile_steps(mesh, model, tx, meta.ignore_index, class_weights)
    loader = data.TrainLoader(
        data_dir,
        split=config.data.train_split,
        global_batch_size=config.train.batch_size,
        crop_size=tuple(config.data.crop_size) if config.data.crop_size else None,
        scale_range=tuple(config.data.scale_range) if config.data.scale_range else None,
        flip=config.data.flip,
        seed=config.seed,
        num_threads=config.data.num_threads or None,
        cache=config.data.cache,
        normalize=False,  # uint8 to the device, normalised inside the jitted step
    )

    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(lambda: training.init_state(model, tx, rng))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
    ckpt = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    restored = ckpt.restore_latest(abstract)
    if restored is not None:
        state, ckpt_meta, start = restored
        loader.set_state(ckpt_meta["data_state"])
        if primary:
            print(f"resuming from {workdir}/checkpoints/{start}")
    else:
        params = initial_params(config, model, jax.random.fold_in(rng, 1))
        state = jax.jit(lambda p: training.init_state(model, tx, rng, p), out_shardings=replicated)(params)
        start = 0

    log = MetricLog(workdir, start)
    last_eval: dict = {}
    bar = tqdm(total=steps, initial=start, disable=not primary, desc="train", unit="step", dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    try:
        for step in range(start, steps):
            batch = next(loader)
            if step == config.train.nan_at_step:
                batch["image"] = batch["image"] * np.float32("nan")
            state, metrics = train_step(state, data.to_global(batch, mesh))
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                good = ckpt.latest.latest_step()
                raise NonFiniteLoss(
                    f"loss is {loss} at step {step + 1}; stopping. The last good checkpoint is "
                    + (
                        f"{workdir}/checkpoints/{good}"
                        if good is not None
                        else "none (no checkpoint was saved yet)"
                    )
                    + ". Lower optimizer.learning_rate or set optimizer.clip_grad_norm."
                )
            done = step + 1
            seen += config.train.batch_size
            if done % config.train.log_every == 0 or done == steps:
                lr = float(schedule((done - 1) // accumulate))
                rate = seen / (time.perf_counter() - t0)
                log.write(
                    done,
                    "train",
                    {
                        "loss": loss,
                        "learning_rate": lr,
                        "grad_norm": float(metrics["grad_norm"]),
                        "images_per_s": rate,
                    },
                )
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.2f}")
                t0, seen = time.perf_counter(), 0
            bar.update(1)
            is_eval = done == steps or (config.train.eval_every and done % config.train.eval_every == 0)
            if is_eval and config.data.eval_split:
                last_eval = evaluate_and_draw(
                    config, workdir, model, state.params, data_dir, meta, mesh, done
                )
                log.write(done, config.data.eval_split, last_eval)
                ckpt.save_best(
                    done, state, {"data_state": loader.get_state(), "step": done}, last_eval["miou"]
                )
                t0, seen = time.perf_counter(), 0
            if done % config.train.checkpoint_every == 0 or done == steps:
                ckpt.save(done, state, {"data_state": loader.get_state(), "step": done})
    finally:
        bar.close()
        ckpt.wait()
        ckpt.close()
        log.close()
    return last_eval


def evaluate_and_draw(
    config, workdir: Path, model: FCN, params: Any, data_dir: Path, meta, mesh, step: int
) -> dict:
    """Val metrics, and a picture of a few val predictions under workdir/pictures."""
    from fcn_jax import evaluate

    result = evaluate.evaluate(
        model, params, data_dir, config.data.eval_split, config.train.eval_batch_size, mesh=mesh
    )
    summary = result.to_dict()
    if jax.process_index() == 0 and config.train.num_pictures:
        draw_predictions(
            model,
            params,
            data_dir,
            meta,
            config.data.eval_split,
            config.train.num_pictures,
            workdir / "pictures" / f"step_{step:06d}.png",
        )
    print(
        f"step {step}: {config.data.eval_split} mIoU {summary['miou']:.4f}, "
        f"pixel accuracy {summary['pixel_accuracy']:.4f}",
        flush=True,
    )
    return summary


def draw_predictions(
    model: FCN, params: Any, data_dir: Path, meta, split: str, count: int, path: Path
) -> None:
    """image | truth | prediction for `count` examples spread over the split."""
    from PIL import Image

    from fcn_jax import visualize
    from fcn_jax.predict import Segmenter
    from fcn_jax.report import read_examples

    # This process's replica of the (replicated, possibly multi-host) parameters.
    local = jax.tree.map(lambda a: a.addressable_data(0), params)
    segmenter = _segmenters.get(model)
    if segmenter is None:  # one per model: its compiled programs serve every evaluation
        segmenter = _segmenters[model] = Segmenter(model, local, meta, batch_size=count)
    else:
        segmenter.set_params(local)
    examples = read_examples(data_dir, split, count)
    preds = segmenter.predict([image for _, image, _ in examples])
    grid = visualize.prediction_grid(
        [e[1] for e in examples], [e[2] for e in examples], preds, meta.palette, meta.ignore_index
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


_segmenters: dict = {}
