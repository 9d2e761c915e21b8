"""The losses a run can train with (config `loss`): class-weighted cross-entropy, its focal
form, and the Lovasz-softmax IoU surrogate, each against a reference computed by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import config as config_lib
from fcn_jax import training
from fcn_jax.config import optimizer_config
from fcn_jax.models import FCN
from fcn_jax.ops import OpSet

IGNORE, C = 11, 11


def _batch(seed=0, shape=(2, 9, 13)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (*shape, C)).astype(np.float32)
    labels = rng.integers(0, C, shape).astype(np.int32)
    labels[rng.random(shape) < 0.2] = IGNORE
    return logits, labels


def _ce_reference(logits, labels, weights, gamma):
    valid = labels != IGNORE
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    term = -lp * (1 - np.exp(lp)) ** gamma
    w = valid * (1.0 if weights is None else weights[np.where(valid, labels, 0)])
    return (term * w).sum() / w.sum()


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_cross_entropy_matches_its_definition(gamma, weighted):
    logits, labels = _batch()
    weights = np.linspace(0.2, 5.0, C).astype(np.float32) if weighted else None
    got = training.pixel_loss(jnp.asarray(logits), jnp.asarray(labels), IGNORE, weights, gamma)
    np.testing.assert_allclose(float(got), _ce_reference(logits, labels, weights, gamma), rtol=1e-5)


def test_focal_weighs_pixels_already_right_less():
    logits, labels = _batch(1)
    plain = training.pixel_loss(jnp.asarray(logits), jnp.asarray(labels), IGNORE)
    focal = training.pixel_loss(jnp.asarray(logits), jnp.asarray(labels), IGNORE, None, 2.0)
    assert 0 < float(focal) < float(plain)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_is_finite_where_a_pixel_is_already_certain(gamma):
    logits, labels = _batch(2)
    labels[0, 0, 0] = 3
    certain = logits.copy()
    certain[0, 0, 0] = 0.0
    certain[0, 0, 0, 3] = 200.0  # p = 1 in float32: cross-entropy exactly 0
    loss = lambda x: training.pixel_loss(x, jnp.asarray(labels), IGNORE, None, gamma)
    g = jax.grad(loss)(jnp.asarray(certain))
    assert np.isfinite(np.asarray(g)).all()


def _miou_present(pred, labels):
    valid = labels != IGNORE
    ious = []
    for c in range(C):
        gt, pr = (labels == c) & valid, (pred == c) & valid
        if gt.any():
            ious.append((gt & pr).sum() / (gt | pr).sum())
    return float(np.mean(ious))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_is_exactly_one_minus_iou_on_hard_predictions(seed):
    """On one-hot probabilities the Lovasz extension equals the set function it extends: one
    minus the IoU of each class present in the labels, averaged. Ignored pixels count nowhere,
    whatever is predicted there."""
    _, labels = _batch(seed, (3, 17, 11))
    rng = np.random.default_rng(seed + 10)
    pred = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, C, labels.shape))
    pred[labels == IGNORE] = rng.integers(0, C, (labels == IGNORE).sum())
    hard = 60.0 * jax.nn.one_hot(pred, C)
    got = float(training.lovasz_softmax(hard, jnp.asarray(labels), IGNORE))
    np.testing.assert_allclose(got, 1.0 - _miou_present(pred, labels), atol=1e-6)
    perfect = 60.0 * jax.nn.one_hot(np.where(labels == IGNORE, 0, labels), C)
    assert float(training.lovasz_softmax(perfect, jnp.asarray(labels), IGNORE)) < 1e-6


def test_lovasz_gradient_lowers_it_and_leaves_ignored_pixels_alone():
    logits, labels = _batch(3)
    f = jax.jit(lambda x: training.lovasz_softmax(x, jnp.asarray(labels), IGNORE))
    x = jnp.asarray(logits)
    g = jax.grad(f)(x)
    assert np.isfinite(np.asarray(g)).all()
    assert np.abs(np.asarray(g)[labels == IGNORE]).max() == 0
    assert float(f(x - 5.0 * g)) < float(f(x))


def test_the_train_step_minimises_the_configured_loss(camvid_small):
    """The step's reported loss is `segmentation_loss` of the model's logits with the config's
    focal gamma and Lovasz weight, for the same dropout draw."""
    from fcn_jax import data

    model = FCN(11, "32s", ops=OpSet(conv="xla"))
    tx, _ = training.make_optimizer(optimizer_config(learning_rate=1e-4, schedule="constant"), decay_steps=1)
    state = training.init_state(model, tx, jax.random.PRNGKey(0))
    loader = data.TrainLoader(
        camvid_small, global_batch_size=2, crop_size=(48, 64), process_index=0, process_count=1
    )
    batch = next(loader)
    rng = jax.random.fold_in(state.rng, state.step)
    logits = model.apply(
        {"params": state.params}, training.model_inputs(batch["image"]), train=True, rngs={"dropout": rng}
    )
    want = training.segmentation_loss(logits, batch["label"], IGNORE, None, 2.0, 0.5)
    parts = (
        training.pixel_loss(logits, batch["label"], IGNORE, None, 2.0),
        training.lovasz_softmax(logits, batch["label"], IGNORE),
    )
    assert float(parts[1]) > 0 and abs(float(want) - float(parts[0] + 0.5 * parts[1])) < 1e-6
    step, _ = training.compile_steps(
        training.data_mesh(jax.devices()[:1]), model, tx, IGNORE, focal_gamma=2.0, lovasz_weight=0.5
    )
    _, metrics = step(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)


@pytest.mark.parametrize("key", ["focal_gamma", "lovasz_weight"])
def test_negative_loss_settings_are_refused(key):
    c = config_lib.base_config()
    c.loss[key] = -1.0
    with pytest.raises(config_lib.ConfigError, match=f"loss.{key}"):
        config_lib.check(c)
