"""The pure core of training: optimizer, loss, train step, eval step.

Nothing here does IO. `train_step(state, batch) -> (state, metrics)` and
`eval_step(params, batch) -> confusion` are plain functions of arrays; the loop in
`fcn_jax.train` jits them once over a device mesh (batch sharded on "data",
everything else replicated), which is what `pmap` + `pmean` used to do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer micro-steps taken (one per batch)
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key; dropout at step s uses fold_in(rng, s)


# -- optimizer ------------------------------------------------------------------


def make_schedule(cfg: Mapping, decay_steps: int) -> optax.Schedule:
    """The learning rate per optimizer update. `cfg`: the `optimizer` section of an
    experiment config (every key; defaults in `fcn_jax.config.base_config`);
    `decay_steps`: optimizer updates in the whole run, warmup included."""
    lr, warmup = float(cfg["learning_rate"]), int(cfg["warmup_steps"])
    decay = max(int(decay_steps) - warmup, 1)
    name = cfg["schedule"]
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "poly":  # (1 - t/T)^0.9, as torchvision's segmentation references
        main = optax.polynomial_schedule(lr, 0.0, float(cfg["poly_power"]), decay)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(lr, decay)
    else:
        raise ValueError(f"optimizer.schedule must be constant, poly or cosine, got {name!r}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _is_bias(path: tuple, _) -> str:
    return "bias" if getattr(path[-1], "key", None) == "bias" else "weight"


def make_optimizer(cfg: Mapping, decay_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD with momentum (the FCN recipe) or AdamW. Biases get `bias_lr_mult` x the
    learning rate and no weight decay, as in the Caffe solvers; `accumulate_steps`
    > 1 averages gradients over that many batches (optax.MultiSteps). `cfg` is the
    `optimizer` section of an experiment config, every key present
    (`fcn_jax.config.optimizer_config(**changes)` builds one from the defaults)."""
    schedule = make_schedule(cfg, decay_steps)
    wd, mult = float(cfg["weight_decay"]), float(cfg["bias_lr_mult"])

    def build(scale: float, decay: float) -> optax.GradientTransformation:
        sched = (lambda s: scale * schedule(s)) if scale != 1.0 else schedule
        name = cfg["name"]
        if name == "sgd":
            parts = [optax.add_decayed_weights(decay)] if decay else []
            return optax.chain(*parts, optax.sgd(sched, momentum=float(cfg["momentum"])))
        if name == "adamw":
            return optax.adamw(sched, b1=float(cfg["b1"]), b2=float(cfg["b2"]), weight_decay=decay)
        raise ValueError(f"optimizer.name must be sgd or adamw, got {name!r}")

    tx = optax.multi_transform(
        {"weight": build(1.0, wd), "bias": build(mult, 0.0)},
        lambda params: jax.tree_util.tree_map_with_path(_is_bias, params),
    )
    if cfg["clip_grad_norm"]:
        tx = optax.chain(optax.clip_by_global_norm(float(cfg["clip_grad_norm"])), tx)
    k = int(cfg["accumulate_steps"])
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k)
    return tx, schedule


# -- loss -----------------------------------------------------------------------


def _labelled(labels: jax.Array, ignore_index: int, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(int32 labels, mask of the pixels that count): `ignore_index`, or any value outside
    0..C-1, counts for nothing."""
    labels = labels.astype(jnp.int32)  # uint8 on the wire
    return labels, (labels != ignore_index) & (labels >= 0) & (labels < num_classes)


def pixel_loss(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int,
    class_weights: jax.Array | None = None,
    focal_gamma: float = 0.0,
) -> jax.Array:
    """Per-pixel softmax cross-entropy, averaged over labelled pixels.

    Pixels labelled `ignore_index` (or any value outside 0..C-1) count for nothing.
    With class weights the mean is weighted (sum w*ce / sum w), as PyTorch's
    CrossEntropyLoss(weight=...) does, so the learning rate does not depend on
    how many pixels an image has. `focal_gamma` > 0 scales each pixel's term by
    (1 - p)^gamma, p its label's probability (Lin et al., focal loss): pixels already
    right (most of road and sky) weigh less, without a fixed weight per class.
    """
    labels, valid = _labelled(labels, ignore_index, logits.shape[-1])
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    w = valid.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    if focal_gamma:
        # 1 - p = 1 - exp(-ce), floored: at p = 1 (a saturated logit) x**gamma for gamma < 1
        # has an infinite derivative, and inf * 0 would make the whole gradient NaN.
        ce = ce * jnp.maximum(-jnp.expm1(-ce), 1e-12) ** focal_gamma
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1e-6)


def lovasz_softmax(logits: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
    """Lovasz-softmax (Berman, Rannen Triki, Blaschko 2018): the mean over the classes present
    in the batch of a convex surrogate of 1 - IoU, which is exact on hard predictions.

    Cross-entropy rewards pixels, so a class of few pixels costs little to give up; this
    rewards IoU per class, the metric, so a thin class counts as much as road. Per class c,
    pixel errors |[label = c] - p_c| are sorted in decreasing order and weighted by how much
    each one adds to the Jaccard loss of the errors before it. Ignored pixels have error 0
    and sort last, where they add nothing.
    """
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(-1, num_classes)
    labels, valid = _labelled(labels.reshape(-1), ignore_index, num_classes)
    valid = valid.astype(jnp.float32)
    fg = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * valid[:, None]  # (N, C)
    errors = jnp.abs(fg - probs) * valid[:, None]
    order = jax.lax.stop_gradient(jnp.argsort(-errors, axis=0))
    errors = jnp.take_along_axis(errors, order, axis=0)
    fg = jnp.take_along_axis(fg, order, axis=0)
    gts = fg.sum(axis=0)
    intersection = gts - jnp.cumsum(fg, axis=0)
    union = gts + jnp.cumsum(1.0 - fg, axis=0)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:1], jnp.diff(jaccard, axis=0)], axis=0)
    per_class = jnp.sum(errors * grad, axis=0)
    present = gts > 0
    return jnp.sum(jnp.where(present, per_class, 0.0)) / jnp.maximum(present.sum(), 1)


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int,
    class_weights: jax.Array | None = None,
    focal_gamma: float = 0.0,
    lovasz_weight: float = 0.0,
) -> jax.Array:
    """What the train step minimises (config `loss`): `pixel_loss`, plus `lovasz_weight`
    times `lovasz_softmax` when it is > 0."""
    loss = pixel_loss(logits, labels, ignore_index, class_weights, focal_gamma)
    if lovasz_weight:
        loss = loss + lovasz_weight * lovasz_softmax(logits, labels, ignore_index)
    return loss


# -- steps ----------------------------------------------------------------------


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    params: Any | None = None,
    sample_shape=(1, 64, 64, 3),
) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    if params is None:
        params = model.init(init_rng, jnp.zeros(sample_shape, jnp.float32))["params"]
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), flax.core.unfreeze(params))
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), state_rng)


def model_inputs(images: jax.Array) -> jax.Array:
    """Batches may arrive as uint8 (4x fewer bytes from the host); normalise on device."""
    if images.dtype == jnp.uint8:
        from fcn_jax.data.transforms import normalize_jax

        return normalize_jax(images)
    return images


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    ignore_index: int,
    class_weights: jax.Array | None = None,
    focal_gamma: float = 0.0,
    lovasz_weight: float = 0.0,
    context: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. With `context`, the batch's images are its labels' windows with
    the FCN's padding filled by their surroundings (`data.crop_context`, `FCN.__call__`)."""
    rng = jax.random.fold_in(state.rng, state.step)
    window = tuple(batch["label"].shape[1:3]) if context else None

    def loss_fn(params):
        logits = model.apply(
            {"params": params}, model_inputs(batch["image"]), train=True, window=window, rngs={"dropout": rng}
        )
        return segmentation_loss(
            logits, batch["label"], ignore_index, class_weights, focal_gamma, lovasz_weight
        )

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    grad_norm, param_norm = optax.tree.norm(grads), optax.tree.norm(params)
    # A finite loss can still come with an inf gradient or an update that overflows the
    # parameters: all three must be finite for the new state to be worth keeping.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "param_norm": param_norm, "finite": finite}


class Health(NamedTuple):
    """Whether every step since the run (re)started kept its state finite, and the first
    step that did not: carried on the device, so the loop reads it only when it must
    (logging, evaluating, saving) instead of stopping the device after every step."""

    ok: jax.Array  # bool
    first_bad_step: jax.Array  # int32, steps counted from 1; -1 while ok
    first_bad_loss: jax.Array  # float32


def healthy() -> Health:
    return Health(jnp.asarray(True), jnp.asarray(-1, jnp.int32), jnp.asarray(0.0, jnp.float32))


@jax.jit
def track_health(health: Health, metrics: Mapping[str, jax.Array], step: jax.Array) -> Health:
    """`step`: the state's step after the update (state.step), so the first is 1."""
    newly_bad = health.ok & ~metrics["finite"]
    return Health(
        health.ok & metrics["finite"],
        jnp.where(newly_bad, step.astype(jnp.int32), health.first_bad_step),
        jnp.where(newly_bad, metrics["loss"].astype(jnp.float32), health.first_bad_loss),
    )


def predict_logits(params: Any, images: jax.Array, *, model: nn.Module) -> jax.Array:
    return model.apply({"params": params}, model_inputs(images), train=False)


def confusion_matrix(
    labels: jax.Array, preds: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
    """(C, C) counts, rows = truth, columns = prediction; unlabelled pixels dropped."""
    labels, preds = labels.astype(jnp.int32), preds.astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes)
    if mask is not None:
        valid = valid & mask
    index = jnp.where(valid, labels * num_classes + preds, num_classes * num_classes)
    counts = jnp.bincount(index.ravel(), length=num_classes * num_classes + 1)
    return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def eval_step(
    params: Any, batch: Mapping[str, jax.Array], *, model: nn.Module, ignore_index: int
) -> jax.Array:
    """Confusion matrix of one (global) batch; `batch["valid"]` masks padded examples."""
    logits = predict_logits(params, batch["image"], model=model)
    preds = jnp.argmax(logits, axis=-1)
    mask = batch["label"] != ignore_index
    if "valid" in batch:
        mask = mask & batch["valid"][:, None, None]
    return confusion_matrix(batch["label"], preds, logits.shape[-1], mask)


# -- compiled over a mesh ---------------------------------------------------------


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices (of all processes): pure data parallelism."""
    devices = jax.devices() if devices is None else devices
    return Mesh(devices, (DATA_AXIS,))


def compile_eval_step(mesh: Mesh, model: nn.Module, ignore_index: int) -> Callable:
    """eval_step jitted over the mesh: batch sharded on "data", params replicated."""
    replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(
        functools.partial(eval_step, model=model, ignore_index=ignore_index),
        in_shardings=(replicated, batched),
        out_shardings=replicated,
    )


def compile_steps(
    mesh: Mesh,
    model: nn.Module,
    tx: optax.GradientTransformation,
    ignore_index: int,
    class_weights=None,
    device_data=None,
    focal_gamma: float = 0.0,
    lovasz_weight: float = 0.0,
    context: bool = False,
) -> tuple[Callable, Callable]:
    """(train_step, eval_step) jitted once: batch sharded on "data", the rest replicated.

    With `device_data` (a `data.device.Augment`), the train step is
    `train(state, cache, index)`: it builds global batch `index` from the device-resident
    `cache` (replicated) inside the same program, sharded on "data" like a host batch, so
    the host sends one integer per step. Otherwise it is `train(state, batch)`.
    """
    replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        ignore_index=ignore_index,
        class_weights=cw,
        focal_gamma=float(focal_gamma),
        lovasz_weight=float(lovasz_weight),
        context=bool(context),
    )
    if device_data is None:
        train = jax.jit(
            step, in_shardings=(replicated, batched), out_shardings=(replicated, replicated), donate_argnums=0
        )
    else:
        from fcn_jax.data import device

        def step_from_cache(state, cache, index):
            batch = jax.lax.with_sharding_constraint(device.batch(device_data, cache, index), batched)
            return step(state, batch)

        train = jax.jit(
            step_from_cache,
            in_shardings=(replicated, replicated, replicated),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
    return train, compile_eval_step(mesh, model, ignore_index)
