"""The fast formulations keep the numbers; the PyTorch twin used by the benchmarks is exact.

* fcn_jax.ops fast ops vs their straightforward `*_reference` forms: values and gradients.
* The whole FCN with the fast ops vs the same FCN built on the reference ops.
* benchmarks/torch_twin.TorchFCN with copied Flax params gives the Flax FCN's logits and loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import geometry, ops, training
from fcn_jax.models import FCN, init_params

NUM_CLASSES = 5
TOL = 1e-5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def backbone() -> dict:
    """conv1 ... fc7, initialised once (the costly part: 58M parameters)."""
    p = init_params(FCN(NUM_CLASSES, "8s"), jax.random.key(0))
    return {k: v for k, v in p.items() if not k.startswith(("score_", "upscore"))}


def _random_params(backbone: dict, variant: str, seed: int = 0, trainable_upsampling: bool = True) -> dict:
    """The shared backbone, non-zero score layers and perturbed (non-bilinear) upsampling."""
    model = FCN(NUM_CLASSES, variant, trainable_upsampling=trainable_upsampling)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    out = dict(backbone)
    for name, layer in shapes.items():
        if name.startswith("upscore"):
            bilinear = np.einsum(
                "i,j,ab->ijab",
                *(2 * [geometry.bilinear_kernel_1d((layer["kernel"].shape[0] + 1) // 2)]),
                np.eye(NUM_CLASSES),
            )
            out[name] = {
                "kernel": jnp.asarray(bilinear + 0.05 * rng.normal(size=bilinear.shape), jnp.float32)
            }
        elif name.startswith("score_"):
            out[name] = {
                k: jnp.asarray((0.05 if k == "kernel" else 0.1) * rng.normal(size=v.shape), jnp.float32)
                for k, v in layer.items()
            }
    assert jax.tree.structure(out) == jax.tree.structure(shapes)
    return out


# -- ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("factor,size", [(2, (5, 7)), (3, (4, 3)), (8, (4, 6)), (32, (3, 4)), (32, (1, 2))])
def test_upsample_equals_transposed_convolution_values_and_gradients(factor, size):
    kx, kk, kc = jax.random.split(jax.random.key(factor), 3)
    x = jax.random.normal(kx, (2, *size, 3))
    kernel = jax.random.normal(kk, (2 * factor - 1, 2 * factor - 1, 3, 4))
    cot = jax.random.normal(kc, ((size[0] - 1) * factor + 1, (size[1] - 1) * factor + 1, 4))

    @jax.jit
    def both(x, kernel):
        fwd = [ops.upsample_reference(x, kernel, factor), ops.upsample(x, kernel, factor)]
        grads = [
            jax.grad(lambda a, k: jnp.sum(f(a, k, factor) * cot), (0, 1))(x, kernel)
            for f in (ops.upsample_reference, ops.upsample)
        ]
        return fwd, grads

    (ref, new), (g_ref, g_new) = both(x, kernel)
    assert new.shape == ref.shape == (2, *cot.shape)
    assert rel(new, ref) < TOL
    for a, b in zip(g_new, g_ref):
        assert rel(a, b) < TOL


def test_upsample_crop_is_a_window_of_the_full_result():
    x = jax.random.normal(jax.random.key(0), (1, 4, 5, 2))
    kernel = jax.random.normal(jax.random.key(1), (15, 15, 2, 2))
    full = ops.upsample_reference(x, kernel, 8)  # 25 x 33
    for crop in [(0, 0, 25, 33), (3, 9, 17, 20), (8, 16, 1, 1), (24, 32, 1, 1), (0, 5, 9, 28)]:
        sh, sw, h, w = crop
        assert rel(ops.upsample(x, kernel, 8, crop), full[:, sh : sh + h, sw : sw + w]) < TOL
    with pytest.raises(ValueError, match="crop"):
        ops.upsample(x, kernel, 8, (20, 0, 6, 4))


@pytest.mark.parametrize("window,stride,size", [(3, 2, (13, 10)), (2, 2, (8, 9))])
@pytest.mark.parametrize("fast", ["max_pool", "max_pool_pads"])
def test_max_pool_equals_reduce_window_values_and_gradients(window, stride, size, fast):
    kx, kc = jax.random.split(jax.random.key(window * 10 + stride))
    x = jax.nn.relu(jax.random.normal(kx, (2, *size, 6)))  # ties at 0, as after a ReLU
    x = x.at[:, 1:3, 1:3, 0].set(0.5)  # and a tie at a positive value
    oh, ow = (size[0] - window) // stride + 1, (size[1] - window) // stride + 1
    cot = jax.random.normal(kc, (2, oh, ow, 6))

    @jax.jit
    def both(x):
        fns = (ops.max_pool_reference, getattr(ops, fast))
        return [jax.vjp(lambda a: f(a, window, stride), x) for f in fns]

    (ref, vjp_ref), (new, vjp_new) = both(x)
    np.testing.assert_array_equal(new, ref)
    assert rel(vjp_new(cot)[0], vjp_ref(cot)[0]) < TOL


@pytest.mark.parametrize("kernel_shape", [(6, 6, 16, 32), (1, 1, 24, 8)])
def test_conv_as_matmul_equals_convolution_values_and_gradients(kernel_shape):
    kx, kk, kb, kc = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (2, 9, 11, kernel_shape[2]))
    kernel = jax.random.normal(kk, kernel_shape)
    bias = jax.random.normal(kb, kernel_shape[-1:])
    cot = jax.random.normal(kc, (2, 10 - kernel_shape[0], 12 - kernel_shape[1], kernel_shape[3]))

    @jax.jit
    def both(*args):
        fwd = [ops.conv_reference(*args), ops.conv_as_matmul(*args)]
        grads = [
            jax.grad(lambda *a: jnp.sum(f(*a) * cot), (0, 1, 2))(*args)
            for f in (ops.conv_reference, ops.conv_as_matmul)
        ]
        return fwd, grads

    (ref, new), (g_ref, g_new) = both(x, kernel, bias)
    assert rel(new, ref) < TOL
    for a, b in zip(g_new, g_ref):
        assert rel(a, b) < TOL


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (4, 5)])
def test_winograd_matrices_compute_a_correlation(m, r):
    at, g, bt = ops.winograd_matrices(m, r)
    rng = np.random.default_rng(m * 10 + r)
    d, k = rng.normal(size=m + r - 1), rng.normal(size=r)
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), [d[i : i + r] @ k for i in range(m)], atol=1e-12)


# Float32 rounding of Winograd's transforms, measured: ~1e-6 of the largest value
# at tile 2, ~1e-5 at tile 4 with hundreds of channels (fewer here).
WINOGRAD_TOL = {2: TOL, 4: 3e-5}


_WINOGRAD_CASES = [  # (tile, kernel, padding, size): every tiling, sizes below / at / past a tile
    (tile, r, padding, size)
    for tile, r, padding in [(2, 3, 1), (2, 3, 0), (4, 3, 1), (4, 3, 0), (4, 5, 2)]
    for size in [(1, 1), (2, 7), (9, 6), (17, 12)]
    if min(size) + 2 * padding >= r
]


@pytest.mark.parametrize("tile,r,padding,size", _WINOGRAD_CASES)
def test_conv_winograd_equals_convolution_values_and_gradients(tile, r, padding, size):
    kx, kk, kc = jax.random.split(jax.random.key(tile * 100 + r * 10 + padding), 3)
    x = jax.random.normal(kx, (2, *size, 5))
    kernel = jax.random.normal(kk, (r, r, 5, 7))
    out = (size[0] + 2 * padding - r + 1, size[1] + 2 * padding - r + 1)
    cot = jax.random.normal(kc, (2, *out, 7))

    @jax.jit
    def both(x, kernel):
        fns = [
            lambda a, k: ops.conv_same_reference(a, k, padding),
            lambda a, k: ops.conv_winograd(a, k, padding, tile),
        ]
        return [f(x, kernel) for f in fns], [
            jax.grad(lambda a, k: jnp.sum(f(a, k) * cot), (0, 1))(x, kernel) for f in fns
        ]

    (ref, new), (g_ref, g_new) = both(x, kernel)
    assert new.shape == ref.shape == (2, *out, 7)
    assert rel(new, ref) < WINOGRAD_TOL[tile]
    for a, b in zip(g_new, g_ref):
        assert rel(a, b) < WINOGRAD_TOL[tile]


def test_conv_winograd_gives_exact_zeros_where_the_input_window_is_all_zero():
    """As a direct convolution does: the FCN's zero border must stay at ReLU's kink
    exactly, not at rounding noise of either sign."""
    x = jnp.zeros((1, 20, 20, 4)).at[:, 2:9, 3:11].set(jax.random.normal(jax.random.key(0), (1, 7, 8, 4)))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
    ref = np.asarray(ops.conv_same_reference(x, kernel, 1))
    got = np.asarray(ops.conv_winograd(x, kernel, 1, 4))
    assert (ref == 0).sum() > 200
    np.testing.assert_array_equal(got[ref == 0], 0.0)
    assert rel(got, ref) < WINOGRAD_TOL[4]


def test_conv_winograd_rejects_a_kernel_wider_than_tile_plus_one():
    with pytest.raises(ValueError, match="tile"):
        ops.conv_winograd(jnp.zeros((1, 8, 8, 2)), jnp.zeros((5, 5, 2, 3)), 2, 2)


@pytest.mark.parametrize("rate,channels", [(0.5, 256), (0.25, 256), (0.1, 256), (0.5, 33)])
def test_dropout_drops_each_element_independently_with_probability_rate(rate, channels):
    """The bit-sparing mask (rate k/2^b) and the fallback (0.1; 33 channels) alike."""
    x = jnp.full((4, 16, 16, channels), 2.0)
    y = np.asarray(jax.jit(ops.dropout, static_argnums=2)(jax.random.key(0), x, rate))
    dropped = y == 0
    assert set(np.unique(y)) <= {0.0, np.float32(2.0) / np.float32(1 - rate)}
    n = dropped.size
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    # Neighbours along the channel axis share a random word: their masks must be independent.
    both = (dropped[..., :-1] & dropped[..., 1:]).mean()
    assert abs(both - rate**2) < 5 * np.sqrt(rate**2 * (1 - rate**2) / dropped[..., 1:].size)
    np.testing.assert_array_equal(ops.dropout(jax.random.key(0), x, rate), y)  # same key, same mask
    assert not np.array_equal(ops.dropout(jax.random.key(1), x, rate), y)


def test_dropout_edge_rates():
    x = jnp.ones((2, 64))
    np.testing.assert_array_equal(ops.dropout(jax.random.key(0), x, 0.0), x)
    np.testing.assert_array_equal(ops.dropout(jax.random.key(0), x, 1.0), jnp.zeros_like(x))
    with pytest.raises(ValueError, match="rate"):
        ops.dropout(jax.random.key(0), x, 1.5)


# -- the whole model: fast ops vs reference ops ---------------------------------------


@pytest.mark.parametrize("variant", ["32s", "8s"])  # 16s: the same two kinds of stage as 8s
def test_fast_fcn_equals_reference_fcn_logits_and_gradients(backbone, variant):
    params = _random_params(backbone, variant)
    images = jax.random.normal(jax.random.key(5), (2, 37, 58, 3))
    labels = jax.random.randint(jax.random.key(6), (2, 37, 58), 0, NUM_CLASSES)

    def loss(p, model):
        logits = model.apply({"params": p}, images)
        return training.pixel_loss(logits, labels, 255), logits

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l_new, z_new), g_new = grad(params, FCN(NUM_CLASSES, variant))
    (l_ref, z_ref), g_ref = grad(params, FCN(NUM_CLASSES, variant, ops=ops.OpSet.reference()))
    assert rel(z_new, z_ref) < TOL
    assert rel(l_new, l_ref) < TOL
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_new), jax.tree.leaves(g_ref)):
        assert rel(a, b) < TOL, (jax.tree_util.keystr(path), rel(a, b))


# -- the PyTorch twin ------------------------------------------------------------------


@pytest.mark.parametrize("variant", geometry.VARIANTS)
def test_torch_twin_reproduces_flax_logits_and_loss(backbone, variant):
    import torch
    from torch_twin import TorchFCN, load_flax_fcn_params

    params = _random_params(backbone, variant, seed=3)
    h, w = 45, 71
    x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, size=(2, h, w)).astype(np.int32)
    labels[:, :4] = 255
    got = np.asarray(jax.jit(FCN(NUM_CLASSES, variant).apply)({"params": params}, x))
    twin = load_flax_fcn_params(TorchFCN(NUM_CLASSES, variant).eval(), params)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        ref = twin(xt).numpy().transpose(0, 2, 3, 1)
        ref_loss = float(twin.loss(xt, torch.from_numpy(labels), 255))
    assert got.shape == ref.shape == (2, h, w, NUM_CLASSES)
    assert np.abs(got).max() > 1e-2  # the score layers are live
    assert rel(got, ref) < TOL
    assert abs(float(training.pixel_loss(jnp.asarray(got), labels, 255)) - ref_loss) < TOL * abs(ref_loss)


def test_torch_twin_frozen_upsampling_matches(backbone):
    import torch
    from torch_twin import TorchFCN, load_flax_fcn_params

    params = _random_params(backbone, "16s", seed=4, trainable_upsampling=False)
    assert not [k for k in params if k.startswith("upscore")]
    x = np.random.default_rng(2).normal(size=(1, 41, 58, 3)).astype(np.float32)
    model = FCN(NUM_CLASSES, "16s", trainable_upsampling=False)
    got = np.asarray(jax.jit(model.apply)({"params": params}, x))
    twin = load_flax_fcn_params(TorchFCN(NUM_CLASSES, "16s", trainable_upsampling=False).eval(), params)
    assert not any(p.requires_grad for n, p in twin.named_parameters() if n.startswith("ups."))
    with torch.no_grad():
        ref = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    assert rel(got, ref) < TOL
