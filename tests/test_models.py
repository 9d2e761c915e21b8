"""FCN geometry, shapes, alignment, upsampling and gradients."""

from __future__ import annotations

import json
from fractions import Fraction

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcn_jax import geometry, models
from fcn_jax.models import FCN, Upsample, init_params
from fcn_jax.ops import OpSet

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def params():
    return {v: init_params(FCN(NUM_CLASSES, v), jax.random.key(0)) for v in geometry.VARIANTS}


# -- geometry -------------------------------------------------------------------


@pytest.mark.parametrize("variant", geometry.VARIANTS)
@pytest.mark.parametrize("length", [1, 2, 33, 97, 224, 360, 361, 479, 480, 1001])
def test_plan_puts_score_cells_on_both_borders(length, variant):
    p = geometry.plan_axis(length, variant)
    score = geometry.trace(length + sum(p.pad), "fc7", offset=Fraction(-p.pad[0]))["fc7"]
    assert score.offset <= 0 and score.last >= length - 1
    # Minimal: one pixel less padding after the image loses the last border cell.
    if p.pad[1] > 0:
        shorter = geometry.trace(length + sum(p.pad) - 1, "fc7", offset=Fraction(-p.pad[0]))["fc7"]
        assert shorter.size < 1 or shorter.last < length - 1


def test_grid_start_rejects_misaligned_grids():
    a = geometry.Grid(Fraction(0), Fraction(16), 10)
    with pytest.raises(ValueError):
        a.start_of(geometry.Grid(Fraction(8), Fraction(16), 3))
    assert a.start_of(geometry.Grid(Fraction(32), Fraction(16), 3)) == 2


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        geometry.plan(64, 64, "4s")


# -- shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", geometry.VARIANTS)
@pytest.mark.parametrize("size", [(33, 97), (64, 64), (100, 37), (361, 479)])
def test_output_size_equals_input_size(params, variant, size):
    # Shapes only: traced (every layer's geometry), not run.
    out = jax.eval_shape(
        FCN(NUM_CLASSES, variant).apply, {"params": params[variant]}, jnp.zeros((2, *size, 3))
    )
    assert out.shape == (2, *size, NUM_CLASSES)
    assert out.dtype == jnp.float32


# -- alignment ------------------------------------------------------------------


def _mirror_symmetric(tree, key):
    """Random weights whose spatial kernels are symmetric under flips of both axes."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    out = []
    for leaf, k in zip(leaves, keys):
        w = jax.random.normal(k, leaf.shape) * (0.05 if leaf.ndim == 4 else 0.01)
        if leaf.ndim == 4:
            w = (w + w[::-1] + w[:, ::-1] + w[::-1, ::-1]) / 4
        out.append(w)
    return jax.tree.unflatten(treedef, out)


@pytest.mark.parametrize("variant", geometry.VARIANTS)
def test_output_pixel_is_aligned_with_input_pixel(variant):
    """Mirror-symmetric kernels and an image mirror-symmetric about pixel r give an
    output mirror-symmetric about exactly pixel r; any misalignment by d pixels
    would move the axis to r - d and break the equality. Only pixels whose
    receptive field stays clear of the padded input's edges (where convolution
    padding breaks the symmetry) are compared; r is a multiple of 16 so that it
    falls on or midway between cells of every feature map."""
    r = 160
    size = 2 * r + 1
    model = FCN(NUM_CLASSES, variant, trainable_upsampling=False)  # Winograd's tiles included
    params = _mirror_symmetric(init_params(model, jax.random.key(1)), jax.random.key(2))
    image = jax.random.normal(jax.random.key(3), (1, size, size, 3))
    image = image + image[:, ::-1] + image[:, :, ::-1] + image[:, ::-1, ::-1]
    out = np.asarray(jax.jit(model.apply)({"params": params}, image))[0]
    band = out[r - 60 : r + 61, r - 60 : r + 61]
    assert np.abs(band).max() > 1e-3  # not trivially symmetric
    np.testing.assert_allclose(band, band[::-1], atol=1e-5 * np.abs(band).max())
    np.testing.assert_allclose(band, band[:, ::-1], atol=1e-5 * np.abs(band).max())
    shifted = out[r - 59 : r + 62, r - 60 : r + 61]  # off by one: not symmetric
    assert np.abs(shifted - shifted[::-1]).max() > 1e-3 * np.abs(band).max()


def test_a_window_runs_on_its_padding_filled_with_context():
    """`window=(h, w)`: the images are the window with the padding the model would add, so
    zeros there give the plain call's scores, and anything else changes them."""
    model = FCN(NUM_CLASSES, "8s", fc_channels=64)
    params = _mirror_symmetric(init_params(model, jax.random.key(1)), jax.random.key(2))
    image = jax.random.normal(jax.random.key(3), (2, 40, 56, 3))
    plan = geometry.plan(40, 56, "8s")
    canvas = jnp.pad(image, ((0, 0), *plan.pads, (0, 0)))
    assert canvas.shape[1:3] == plan.padded
    apply = jax.jit(model.apply, static_argnames="window")
    plain = np.asarray(apply({"params": params}, image))
    zeros = np.asarray(apply({"params": params}, canvas, window=(40, 56)))
    np.testing.assert_allclose(zeros, plain, atol=1e-5 * np.abs(plain).max())
    (top, _), (left, _) = plan.pads
    noise = jax.random.normal(jax.random.key(4), canvas.shape).at[:, top : top + 40, left : left + 56].set(0)
    context = canvas + noise  # the window itself unchanged
    seen = np.asarray(apply({"params": params}, context, window=(40, 56)))
    assert seen.shape == plain.shape and np.abs(seen - plain).max() > 1e-2 * np.abs(plain).max()
    with pytest.raises(ValueError, match="padded size"):
        model.apply({"params": params}, image, window=(40, 56))


# -- upsampling -----------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_untrained_upsampling_is_bilinear_interpolation(factor):
    h, w, c = 5, 7, 3
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coarse = np.stack([np.sin(0.7 * yy + 0.3 * xx + k) for k in range(c)], -1).astype(np.float32)
    module = Upsample(factor)
    variables = module.init(jax.random.key(0), coarse[None])
    fine = np.asarray(module.apply(variables, coarse[None]))[0]
    fy = np.arange((h - 1) * factor + 1) / factor
    fx = np.arange((w - 1) * factor + 1) / factor
    rows = np.stack([[np.interp(fx, np.arange(w), coarse[i, :, k]) for k in range(c)] for i in range(h)])
    expected = np.stack(
        [[np.interp(fy, np.arange(h), rows[:, k, j]) for j in range(len(fx))] for k in range(c)]
    )
    np.testing.assert_allclose(fine, expected.transpose(2, 1, 0), atol=1e-5)


def test_upsampling_matches_scatter_form_of_transposed_convolution():
    """out[f*i + t] += x[i] @ K[t], PyTorch's ConvTranspose2d convention."""
    f = 3
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)
    kernel = np.random.default_rng(1).normal(size=(2 * f - 1, 2 * f - 1, 2, 2)).astype(np.float32)
    got = np.asarray(Upsample(f).apply({"params": {"kernel": kernel}}, x))[0]
    full = np.zeros((2 * f + 2 * f - 1, f + 2 * f - 1, 2), np.float32)
    for i in range(3):
        for j in range(2):
            full[f * i : f * i + 2 * f - 1, f * j : f * j + 2 * f - 1] += np.einsum(
                "c,hwcd->hwd", x[0, i, j], kernel
            )
    np.testing.assert_allclose(got, full[f - 1 : f - 1 + 2 * f + 1, f - 1 : f - 1 + f + 1], atol=1e-5)


def test_frozen_upsampling_has_no_parameters():
    p = init_params(FCN(NUM_CLASSES, "8s", trainable_upsampling=False), jax.random.key(0))
    assert not [k for k in p if k.startswith("upscore")]


# -- training-time behaviour -----------------------------------------------------


def _loss(model, params, images, labels, rng):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize("variant", geometry.VARIANTS)
def test_gradients_are_finite_and_reach_every_parameter(params, variant):
    # XLA's convolutions: Winograd's gradients are compared with them in tests/test_perf.py.
    model = FCN(NUM_CLASSES, variant, ops=OpSet(conv="xla"))
    p = params[variant]
    images = jax.random.normal(jax.random.key(1), (2, 48, 64, 3))
    labels = jax.random.randint(jax.random.key(2), (2, 48, 64), 0, NUM_CLASSES)
    # As in the paper, score layers start at zero, so nothing below them learns at step 0 ...
    grad = jax.jit(jax.grad(lambda q: _loss(model, q, images, labels, jax.random.key(3))))
    g0 = grad(p)
    assert float(jnp.abs(g0["fc7"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g0["score_fr"]["kernel"]).max()) > 0.0
    # ... and once they are non-zero, gradients reach every parameter.
    p = jax.tree.map(lambda a: a, p)
    for name in p:
        if name.startswith("score_"):
            p[name] = {
                "kernel": 0.01 * jax.random.normal(jax.random.key(4), p[name]["kernel"].shape),
                "bias": p[name]["bias"],
            }
    grads = grad(p)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert float(jnp.abs(g).max()) > 0.0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_dropout_acts_only_in_training(params):
    model, p = FCN(NUM_CLASSES, "32s"), dict(params["32s"])
    p["score_fr"] = {"kernel": jnp.ones_like(p["score_fr"]["kernel"]), "bias": p["score_fr"]["bias"]}
    x = jax.random.normal(jax.random.key(0), (1, 40, 40, 3))
    infer = jax.jit(lambda p, x: model.apply({"params": p}, x))
    train = jax.jit(lambda p, x, rng: model.apply({"params": p}, x, train=True, rngs={"dropout": rng}))
    a = infer(p, x)
    b = infer(p, x)
    np.testing.assert_array_equal(a, b)
    c = train(p, x, jax.random.key(1))
    d = train(p, x, jax.random.key(2))
    assert not np.allclose(c, d)
    with pytest.raises(flax.errors.InvalidRngError):  # train=True needs a dropout rng (found when traced)
        jax.eval_shape(lambda: model.apply({"params": p}, x, train=True))


def test_bfloat16_computation_keeps_float32_params(params):
    p = dict(params["8s"])
    for name in p:
        if name.startswith("score_"):
            p[name] = {"kernel": 0.01 * jnp.ones_like(p[name]["kernel"]), "bias": p[name]["bias"]}
    x = jax.random.normal(jax.random.key(0), (1, 50, 70, 3))
    ref = jax.jit(FCN(NUM_CLASSES, "8s").apply)({"params": p}, x)
    low = jax.jit(FCN(NUM_CLASSES, "8s", dtype=jnp.bfloat16).apply)({"params": p}, x)
    assert low.dtype == jnp.float32
    assert all(
        v.dtype == jnp.float32
        for v in jax.tree.leaves(init_params(FCN(3, "8s", dtype=jnp.bfloat16), jax.random.key(0)))
    )
    rel = float(jnp.abs(low - ref).max() / jnp.abs(ref).max())
    assert rel < 5e-2, rel


@pytest.mark.parametrize("conv", OpSet.CHOICES["conv"])
def test_same_conv_has_nn_conv_parameters(conv):
    """Same names, shapes and initial values as nn.Conv: checkpoints and AlexNet
    conversions do not depend on the convolution algorithm."""
    x = jnp.zeros((1, 12, 12, 4))
    ours = models.SameConv(6, 3, 1, 4, OpSet(conv=conv)).init(jax.random.key(0), x)
    flax_conv = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1))).init(jax.random.key(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(flax_conv)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(flax_conv)):
        np.testing.assert_array_equal(a, b)


def test_the_op_set_is_part_of_the_models_identity():
    """jit and lru caches key on the model: a model with other ops must not hit them."""
    fast, reference = FCN(NUM_CLASSES, "8s"), FCN(NUM_CLASSES, "8s", ops=OpSet.reference())
    assert fast != reference and hash(fast) != hash(reference)
    assert fast == FCN(NUM_CLASSES, "8s", ops=OpSet())
    with pytest.raises(ValueError, match="ops.pool must be one of auto, scatter, pads, xla"):
        OpSet(pool="gather_typo")


def test_fc_channels_sets_the_width_of_fc6_and_fc7_and_is_recorded_with_the_run(tmp_path):
    """A narrower classifier head is part of the model spec: built, recorded in model.json
    and read back; records written before the key existed have the classifiers' 4096."""
    from fcn_jax import config as config_lib
    from fcn_jax import run as run_lib
    from fcn_jax.data.meta import DatasetMeta

    c = config_lib.base_config()
    assert c.model.fc_channels == models.FC_CHANNELS == models.CHANNELS["fc6"] == 4096
    c.model.fc_channels = 24
    spec = models.ModelSpec.from_config(c.model, NUM_CLASSES)
    model = spec.build()
    p = init_params(model, jax.random.key(0))
    assert p["fc6"]["kernel"].shape == (6, 6, 256, 24)
    assert p["fc7"]["kernel"].shape == (1, 1, 24, 24)
    assert p["score_fr"]["kernel"].shape == (1, 1, 24, NUM_CLASSES)
    assert model.apply({"params": p}, jnp.zeros((1, 48, 64, 3))).shape == (1, 48, 64, NUM_CLASSES)

    meta = DatasetMeta("toy", NUM_CLASSES, 255, list("abcde"), np.zeros((5, 3), np.uint8), {"train": 4})
    run = run_lib.Run(tmp_path / "run")
    run.root.mkdir()
    run_lib.write_records(run, json.loads(c.to_json()), spec, run_lib.dataset_record(meta, "train"), 0)
    assert run.spec() == spec and run.spec().build().fc_channels == 24
    older = spec.to_dict()
    del older["fc_channels"]
    assert models.ModelSpec.from_dict(older).fc_channels == 4096

    for bad in (0, -3):
        c.model.fc_channels = bad
        with pytest.raises(
            config_lib.ConfigError, match="config.model: fc_channels must be a positive integer"
        ):
            config_lib.check(c)


def test_group_norm_follows_each_backbone_convolution_and_is_recorded_with_the_run(tmp_path):
    """model.norm="group": a GroupNorm between each convolution and its ReLU, none in the
    classifier layers; part of the spec, so a run rebuilds it; older records have none."""
    from fcn_jax import config as config_lib
    from fcn_jax import run as run_lib
    from fcn_jax.data.meta import DatasetMeta

    c = config_lib.base_config()
    assert c.model.norm == "none" and models.ModelSpec.from_config(c.model, NUM_CLASSES).norm == "none"
    c.model.norm, c.model.fc_channels = "group", 16
    spec = models.ModelSpec.from_config(c.model, NUM_CLASSES)
    model = spec.build()
    p = init_params(model, jax.random.key(0))
    norms = sorted(k for k in p if k.endswith("_norm"))
    assert norms == [f"{conv}_norm" for conv in models.CONVS]
    assert p["conv2_norm"]["scale"].shape == p["conv2_norm"]["bias"].shape == (models.CHANNELS["conv2"],)
    meta = DatasetMeta("toy", NUM_CLASSES, 255, list("abcde"), np.zeros((5, 3), np.uint8), {"train": 4})
    run = run_lib.Run(tmp_path / "run")
    run.root.mkdir()
    run_lib.write_records(run, json.loads(c.to_json()), spec, run_lib.dataset_record(meta, "train"), 0)
    assert run.spec() == spec and run.spec().build().norm == "group"
    older = spec.to_dict()
    del older["norm"]
    assert models.ModelSpec.from_dict(older).norm == "none"

    # conv1's output, per image and each of its 32 groups of channels, reaches its ReLU at zero
    # mean and unit variance (scale 1, bias 0 at init).
    x = jax.random.normal(jax.random.key(1), (2, 67, 83, 3))
    _, seen = model.apply({"params": p}, x, capture_intermediates=lambda m, _: m.name == "conv1_norm")
    y = np.asarray(seen["intermediates"]["conv1_norm"]["__call__"][0]).reshape(2, -1, 32, 2)
    np.testing.assert_allclose(y.mean(axis=(1, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(y.var(axis=(1, 3)), 1, atol=1e-3)
    plain = models.FCN(NUM_CLASSES, "8s", fc_channels=16)
    assert set(p) - set(init_params(plain, jax.random.key(0))) == set(norms)

    c.model.norm = "batch"
    with pytest.raises(config_lib.ConfigError, match="config.model: norm must be one of none, group"):
        config_lib.check(c)
