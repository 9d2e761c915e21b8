"""Experiment configs: python files with `get_config()` returning an ml_collections ConfigDict.

`base_config()` lists every key with its default; experiment files in
`experiments/` start from it and change what they need. On the command line,
`--config path.py[:arg]` picks the file and `--config.key=value` overrides any
key, keeping its type (`--config.optimizer.learning_rate=3e-4`).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "camvid"  # camvid | folder (already prepared) | any prepared TFDS directory
    c.data.source = ""  # raw CamVid folder; default: $FCN_JAX_CAMVID or ../shared/camvid
    c.data.data_dir = ""  # prepared dataset; default: $FCN_JAX_DATA/<name> or ~/.cache/fcn_jax/<name>
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.crop_size = (360, 480)  # random crop (padded with the ignore value where needed)
    c.data.scale_range = (0.75, 1.25)  # random rescale before the crop; None: no rescale
    c.data.flip = True
    c.data.num_threads = 0  # 0: automatic
    c.data.cache = False  # keep decoded training images in memory (CamVid: ~250 MB); for fast accelerators

    c.model = ml_collections.ConfigDict()
    c.model.variant = "8s"
    c.model.dropout_rate = 0.5
    c.model.trainable_upsampling = True
    c.model.dtype = "float32"  # bfloat16 on accelerators
    c.model.winograd = True  # CPU float32 only: faster steps, longer compile (models.FCN)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adamw
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 5e-4
    c.optimizer.bias_lr_mult = 2.0  # Caffe FCN: biases learn 2x faster, without weight decay
    c.optimizer.schedule = "poly"  # constant | poly | cosine
    c.optimizer.poly_power = 0.9
    c.optimizer.warmup_steps = 0
    c.optimizer.accumulate_steps = 1  # optax.MultiSteps: the paper accumulates 20 batches
    c.optimizer.clip_grad_norm = 0.0  # 0: no clipping

    c.loss = ml_collections.ConfigDict()
    c.loss.class_weighting = "median_frequency"  # none | median_frequency

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # batches (micro-steps when accumulating)
    c.train.batch_size = 8  # global, over all devices and processes
    c.train.log_every = 10
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    c.train.eval_every = 500  # 0: only at the end
    c.train.eval_batch_size = 4
    c.train.num_pictures = 4  # val images drawn at each evaluation
    c.train.nan_at_step = -1  # fault injection for tests: poison the batch at this step

    # Weights to start from: "" (random), a file written by `fcn-jax convert` (AlexNet,
    # conv1-fc7 are transplanted) or a run directory of another FCN (staged training:
    # every layer of the same name and shape is copied, e.g. 32s -> 16s -> 8s).
    c.init_from = ""
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path.py` or `path.py:arg`: calls the file's get_config([arg])."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"fcn_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str, current):
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool) and isinstance(value, str):
        value = {"true": True, "false": False}.get(value.lower(), value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings, checking that each key exists."""
    for item in overrides:
        if not item.startswith("--config."):
            raise ValueError(f"unrecognised argument {item!r} (overrides look like --config.train.steps=100)")
        key, sep, text = item[len("--config.") :].partition("=")
        if not sep:
            raise ValueError(f"override {item!r} needs a value: --config.{key}=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            if p not in node:
                raise ValueError(f"unknown config key {key!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"unknown config key {key!r}")
        value = _parse_value(text, node[leaf])
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"--config.{key}: {e}") from None
    return config
