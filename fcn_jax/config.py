"""Experiment configs: python files with `get_config()` returning an ml_collections ConfigDict.

`base_config()` lists every key with its default; experiment files in
`experiments/` start from it and change what they need. On the command line,
`--config path.py[:arg]` picks the file and `--config.key=value` overrides any
key, keeping its type (`--config.optimizer.learning_rate=3e-4`).
"""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import ml_collections

from fcn_jax.ops import OpSet


def base_config() -> ml_collections.ConfigDict:
    from fcn_jax.models import FC_CHANNELS

    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "camvid"  # camvid | folder (already prepared) | any prepared TFDS directory
    c.data.source = ""  # raw CamVid folder; default: $FCN_JAX_CAMVID or ../shared/camvid
    c.data.data_dir = ""  # prepared dataset; default: $FCN_JAX_DATA/<name> or ~/.cache/fcn_jax/<name>
    c.data.train_split = "train"
    c.data.eval_split = "val"  # evaluated during training; best/ keeps the best mIoU on it
    c.data.extra_eval_splits = ()  # also evaluated and logged at each evaluation (e.g. ("val",))
    c.data.crop_size = (360, 480)  # random crop (padded with the ignore value where needed)
    c.data.scale_range = (0.75, 1.25)  # random rescale before the crop; None: no rescale
    # Fill the zero padding the FCN puts around each training crop (geometry.plan: over a
    # hundred pixels a side) with what surrounds the crop in the scaled frame, so the crop's
    # scores see the context they would inside a whole frame. The network's work is the same;
    # the input path resamples the larger window (benchmarks/input_pipeline.py --augment).
    c.data.crop_context = False
    c.data.flip = True
    # Colour jitter (brightness, contrast, saturation, hue), on either input path: factors in
    # [1 - x, 1 + x] for the first three, a hue rotation in [-x, x] of a turn; 0: off.
    c.data.color_jitter = (0.0, 0.0, 0.0, 0.0)
    c.data.num_threads = 0  # 0: automatic
    # The train split on the devices, batches built inside the jitted step (data.device):
    # auto = when the decoded split fits device_cache_mb per device (CamVid: 254 MB).
    c.data.device_cache = "auto"  # auto | on | off
    c.data.device_cache_mb = 4096
    c.data.cache = False  # host path: keep decoded training images in host memory after first use

    c.model = ml_collections.ConfigDict()
    c.model.variant = "8s"
    c.model.backbone = "alexnet"  # alexnet | vgg16 (init_from: fcn-jax convert --arch vgg16)
    c.model.dropout_rate = 0.5
    # fc6 and fc7 outputs: the classifiers' width, which init_from a classifier needs; from
    # scratch a narrower one trains faster on CPU (docs/experiments.md).
    c.model.fc_channels = FC_CHANNELS
    # After each backbone convolution: none (the classifiers', which init_from needs) | group.
    c.model.norm = "none"
    c.model.trainable_upsampling = True
    c.model.dtype = "float32"  # bfloat16 on accelerators
    # Which formulation of each costly layer runs (fcn_jax.ops.OpSet; its defaults).
    # conv="xla" turns off Winograd (CPU float32 only: faster steps, longer compiles).
    c.model.ops = ml_collections.ConfigDict(OpSet().to_dict())

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
    c.loss.class_weighting = "median_frequency"  # none | median_frequency | sqrt_median_frequency
    c.loss.focal_gamma = 0.0  # > 0: focal cross-entropy, (1 - p)^gamma per pixel
    c.loss.lovasz_weight = 0.0  # > 0: + this times the Lovasz-softmax (an IoU surrogate)

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

    # Test-time augmentation `fcn-jax eval` runs on this run beside the plain evaluation
    # (its --scales/--flip override it): the probabilities of the image resized by each scale,
    # and of their mirror images, averaged at full size. Training's evaluations stay plain.
    c.inference = ml_collections.ConfigDict()
    c.inference.scales = (1.0,)
    c.inference.flip = False

    # Weights to start from: "" (random), a file written by `fcn-jax convert` (the classifier
    # of model.backbone: its convolutions, fc6 and fc7 are transplanted) or a run directory
    # of another FCN (staged training: every layer of the same name and shape is copied,
    # e.g. 32s -> 16s -> 8s).
    c.init_from = ""
    return c


def heldout_drive(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate on a drive never seen in training (CamVid: see data.camvid.HELDOUT_DRIVE):
    train on `train_seen`, select checkpoints on `heldout`, and report `val` beside it.
    The prepared CamVid dataset carries both splits (`fcn-jax prepare camvid`)."""
    from fcn_jax.data.camvid import HELDOUT, TRAIN_SEEN

    c.data.train_split, c.data.eval_split, c.data.extra_eval_splits = TRAIN_SEEN, HELDOUT, ("val",)
    return c


def optimizer_config(**changes) -> dict:
    """The `optimizer` section of `base_config()` with `changes` applied (each key must
    exist): what `training.make_optimizer` takes outside an experiment config."""
    cfg = base_config().optimizer.to_dict()
    unknown = sorted(set(changes) - set(cfg))
    if unknown:
        raise KeyError(f"unknown optimizer keys: {', '.join(unknown)}")
    return {**cfg, **changes}


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


class ConfigError(ValueError):
    """One or more config values are invalid; the message names every key (one per line)."""


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v)


def check(config: ml_collections.ConfigDict) -> None:
    """Every value that can be checked without the data or the devices, before anything
    runs: a typo found at the first evaluation would cost everything trained until then.
    Raises ConfigError listing every bad key."""
    from fcn_jax.data.stats import WEIGHTINGS
    from fcn_jax.models import ModelSpec
    from fcn_jax.predict import check_scales

    c, errors = config, []

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            value = c
            for part in key.split("."):
                value = value[part]
            errors.append(f"config.{key} = {value!r}: {what}")

    for key in (
        "train.steps",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.batch_size",
        "train.eval_batch_size",
        "optimizer.accumulate_steps",
    ):
        section, name = key.split(".")
        need(_positive_int(c[section][name]), key, "must be an integer >= 1")
    for key in ("train.eval_every", "train.num_pictures", "optimizer.warmup_steps"):
        section, name = key.split(".")
        v = c[section][name]
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, key, "must be an integer >= 0")
    o = c.optimizer
    need(o.name in ("sgd", "adamw"), "optimizer.name", "must be sgd or adamw")
    need(
        o.schedule in ("constant", "poly", "cosine"), "optimizer.schedule", "must be constant, poly or cosine"
    )
    need(_non_negative(o.learning_rate) and o.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
    for name in ("weight_decay", "clip_grad_norm", "poly_power"):
        need(_non_negative(o[name]), f"optimizer.{name}", "must be a finite number >= 0")
    need(_non_negative(o.bias_lr_mult) and o.bias_lr_mult > 0, "optimizer.bias_lr_mult", "must be > 0")
    for name in ("momentum", "b1", "b2"):
        need(_non_negative(o[name]) and o[name] < 1, f"optimizer.{name}", "must be in [0, 1)")
    need(
        c.loss.class_weighting in WEIGHTINGS,
        "loss.class_weighting",
        f"must be one of {', '.join(WEIGHTINGS)}",
    )
    for name in ("focal_gamma", "lovasz_weight"):
        need(_non_negative(c.loss[name]), f"loss.{name}", "must be a finite number >= 0")
    crop = c.data.crop_size
    need(
        crop is None or (isinstance(crop, tuple) and len(crop) == 2 and all(_positive_int(v) for v in crop)),
        "data.crop_size",
        "must be (height, width) with both >= 1, or None for whole images",
    )
    need(
        isinstance(c.data.crop_context, bool) and (crop is not None or not c.data.crop_context),
        "data.crop_context",
        "must be True or False, and True needs a data.crop_size",
    )
    scale = c.data.scale_range
    need(
        scale is None
        or (
            isinstance(scale, tuple)
            and len(scale) == 2
            and all(_non_negative(v) for v in scale)
            and 0 < scale[0] <= scale[1]
        ),
        "data.scale_range",
        "must be (low, high) with 0 < low <= high, or None",
    )
    need(bool(c.data.train_split), "data.train_split", "must name a split")
    jit = c.data.color_jitter
    need(
        isinstance(jit, tuple)
        and len(jit) == 4
        and all(_non_negative(v) for v in jit)
        and max(jit[:3]) < 1
        and jit[3] <= 0.5,
        "data.color_jitter",
        "must be (brightness, contrast, saturation, hue), the first three in [0, 1), hue in [0, 0.5]",
    )
    extra = c.data.extra_eval_splits
    need(
        isinstance(extra, tuple)
        and all(isinstance(s, str) and s for s in extra)
        and len(set(extra)) == len(extra),
        "data.extra_eval_splits",
        "must be a tuple of distinct split names, e.g. ('val',)",
    )
    need(c.data.device_cache in ("auto", "on", "off"), "data.device_cache", "must be auto, on or off")
    need(_non_negative(c.data.device_cache_mb), "data.device_cache_mb", "must be a number of MB >= 0")
    need(
        _non_negative(c.data.num_threads) and isinstance(c.data.num_threads, int),
        "data.num_threads",
        "must be an integer >= 0 (0: automatic)",
    )
    scales = c.inference.scales
    try:
        ok = isinstance(scales, tuple) and not any(isinstance(v, (bool, str)) for v in scales)
        ok = ok and bool(check_scales(scales))
    except (TypeError, ValueError):
        ok = False
    need(ok, "inference.scales", "must be a tuple of distinct numbers in (0, 16], e.g. (0.75, 1.0, 1.25)")
    need(isinstance(c.inference.flip, bool), "inference.flip", "must be True or False")
    try:
        ModelSpec.from_config(c.model, 1)
    except (ValueError, TypeError) as e:
        errors.append(f"config.model: {e}")
    if c.init_from and not Path(c.init_from).exists():
        errors.append(f"config.init_from = {c.init_from!r}: no such file or run directory")
    if errors:
        raise ConfigError("\n".join(errors))
