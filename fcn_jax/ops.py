"""Fast formulations of the FCN's costly layers, and the straightforward ones they replace.

Each fast op computes the same function as its `*_reference` twin (same kernel
layout, same result up to float rounding); tests/test_perf.py checks forward values
and gradients against each other. Why each is faster, on XLA:CPU in particular:

* `upsample`: a stride-f transposed convolution with a (2f-1)^2 kernel, as XLA
  lowers `lax.conv_transpose`, convolves the f-dilated input (mostly zeros) with the
  whole kernel: ~f^2 times the useful work (63x63 at f=32). Every output cell
  f*m + s lies between input cells m and m+1, and only two kernel taps per axis
  reach it: out[f*m + s] = x[m] @ K[f-1+s] + x[m+1] @ K[s-1] (K[-1] = 0). So the
  whole upsampling is ONE matrix product of the 2x2 neighbourhoods of x
  (4C values per cell) with a (4C, f*f*C) rearrangement of K, then depth-to-space.
* `max_pool`: the gradient of `lax.reduce_window` max lowers to select-and-scatter
  (plus a value/index reduce-window) on XLA:CPU, ~15x slower than the forward.
  Here the forward keeps, per output cell, which of the k*k window taps held the
  first maximum (int8), and the backward scatter-adds the cotangent onto it: the
  same gradient (ties go to the first tap in scan order, as select-and-scatter
  with `ge` does).
* `conv_as_matmul`: fc6 (6x6 window over 256 channels -> 4096) and the 1x1
  layers are matrix products; XLA:CPU's convolution runs fc6 far below its
  matrix-product speed. Patches are gathered by 36 slices (im2col), then one GEMM.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


# -- upsampling ----------------------------------------------------------------------


def upsample_reference(x: jax.Array, kernel: jax.Array, factor: int) -> jax.Array:
    """Transposed conv, scatter form out[f*i + t] += x[i] @ kernel[t] (PyTorch's
    ConvTranspose2d), keeping the (n-1)*f+1 cells between the first and last input cell."""
    f = factor
    y = lax.conv_transpose(x, kernel[::-1, ::-1], (f, f), "VALID", dimension_numbers=_NHWC)
    h, w = x.shape[1:3]
    return y[:, f - 1 : f - 1 + (h - 1) * f + 1, f - 1 : f - 1 + (w - 1) * f + 1]


def subpixel_kernel(kernel: jax.Array, factor: int) -> jax.Array:
    """(2f-1, 2f-1, C, D) scatter kernel -> (2, 2, C, f, f, D) taps of the
    2x2-neighbourhood form: taps[a, b, :, s, u] = K[f-1+s - a*f, f-1+u - b*f] (0 off the kernel)."""
    f = factor
    kp = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0)))  # kp[t + 1] = K[t], kp[0] = 0
    c, d = kernel.shape[2:]
    kp = kp.reshape(2, f, 2, f, c, d)[::-1, :, ::-1]  # (a, s, b, u, C, D): kp[(1-a)*f + s]
    return kp.transpose(0, 2, 4, 1, 3, 5)


def upsample(x: jax.Array, kernel: jax.Array, factor: int, crop: tuple[int, int, int, int] | None = None) -> jax.Array:
    """Same as `upsample_reference`; `crop` = (start_h, start_w, size_h, size_w) of
    the result, applied before depth-to-space where it spares whole coarse rows."""
    f = factor
    n, h, w, c = x.shape
    d = kernel.shape[-1]
    out_h, out_w = (h - 1) * f + 1, (w - 1) * f + 1
    sh, sw, size_h, size_w = crop if crop is not None else (0, 0, out_h, out_w)
    if not (0 <= sh and sh + size_h <= out_h and 0 <= sw and sw + size_w <= out_w):
        raise ValueError(f"crop {crop} outside the {out_h}x{out_w} upsampled map")
    # Coarse cells m whose outputs f*m .. f*m+f-1 meet the crop.
    m0h, m1h = sh // f, (sh + size_h - 1) // f + 1
    m0w, m1w = sw // f, (sw + size_w - 1) // f + 1
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    nb = jnp.concatenate(
        [xp[:, m0h + a : m1h + a, m0w + b : m1w + b] for a in (0, 1) for b in (0, 1)], axis=-1
    )  # (N, mh, mw, 4C), taps in (a, b) order
    taps = subpixel_kernel(kernel, f).reshape(4 * c, f * f * d)
    y = jnp.dot(nb, taps.astype(nb.dtype))
    mh, mw = m1h - m0h, m1w - m0w
    y = y.reshape(n, mh, mw, f, f, d).transpose(0, 1, 3, 2, 4, 5).reshape(n, mh * f, mw * f, d)
    oh, ow = sh - m0h * f, sw - m0w * f
    return y[:, oh : oh + size_h, ow : ow + size_w]


# -- max pooling ---------------------------------------------------------------------


def max_pool_reference(x: jax.Array, window: int, stride: int) -> jax.Array:
    """VALID max pooling over (H, W) of an NHWC array, as flax's nn.max_pool."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID")


def _pool_taps(shape, window: int, stride: int):
    _, h, w, _ = shape
    oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
    return oh, ow, [(a, b) for a in range(window) for b in range(window)]


def _tap(x, a, b, oh, ow, stride):
    return x[:, a : a + stride * (oh - 1) + 1 : stride, b : b + stride * (ow - 1) + 1 : stride]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Same as `max_pool_reference` (values and gradient), with a cheap backward."""
    return _max_pool_fwd(x, window, stride)[0]


def _max_pool_fwd(x, window, stride):
    oh, ow, taps = _pool_taps(x.shape, window, stride)
    y = arg = None
    for k, (a, b) in enumerate(taps):
        t = _tap(x, a, b, oh, ow, stride)
        if y is None:
            y, arg = t, jnp.zeros(t.shape, jnp.int8)
        else:
            better = t > y  # strict: the first maximum in scan order keeps the gradient
            y, arg = jnp.where(better, t, y), jnp.where(better, jnp.int8(k), arg)
    return y, (arg, x.shape)


def _max_pool_bwd(window, stride, res, g):
    # A scatter-add of each output cell's cotangent onto its winning tap. (As a sum
    # of k*k strided pads, XLA fuses g's producer into each pad: for pool5, fc6's
    # 36-term col2im would be re-summed 9 times per element, ~30x slower.)
    arg, shape = res
    n, oh, ow, c = arg.shape
    arg = arg.astype(jnp.int32)
    rows = stride * jnp.arange(oh, dtype=jnp.int32)[None, :, None, None] + arg // window
    cols = stride * jnp.arange(ow, dtype=jnp.int32)[None, None, :, None] + arg % window
    batch = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None, None, None], arg.shape)
    chan = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32)[None, None, None, :], arg.shape)
    return (jnp.zeros(shape, g.dtype).at[batch, rows, cols, chan].add(g),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# -- convolutions as matrix products -------------------------------------------------


def conv_reference(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """VALID, stride-1 convolution (what flax nn.Conv computes with padding VALID)."""
    y = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)
    return y if bias is None else y + bias


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """(N, H, W, C) -> (N, H-kh+1, W-kw+1, kh*kw*C), taps in (i, j, c) order (im2col)."""
    if (kh, kw) == (1, 1):
        return x
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.concatenate([x[:, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)], axis=-1)


def _col2im(dp: jax.Array, kh: int, kw: int, c: int) -> jax.Array:
    """Transpose of `_patches`: add the kh*kw taps back onto the input grid."""
    if (kh, kw) == (1, 1):
        return dp
    n, oh, ow, _ = dp.shape
    h, w = oh + kh - 1, ow + kw - 1
    dx = None
    for i in range(kh):
        for j in range(kw):
            tap = dp[..., (i * kw + j) * c : (i * kw + j + 1) * c]
            tap = jnp.pad(tap, ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
            dx = tap if dx is None else dx + tap
    return dx


@jax.custom_vjp
def conv_as_matmul(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Same as `conv_reference` (values and gradients): im2col, then one matrix product."""
    return _conv_mm_fwd(x, kernel, bias)[0]


def _conv_mm_fwd(x, kernel, bias):
    kh, kw, c, d = kernel.shape
    y = jnp.dot(_patches(x, kh, kw), kernel.reshape(kh * kw * c, d)) + bias
    return y, (x, kernel)


def _conv_mm_bwd(res, g):
    x, kernel = res
    kh, kw, c, d = kernel.shape
    patches = _patches(x, kh, kw)  # recomputed: cheaper than keeping it
    k2 = kernel.reshape(kh * kw * c, d)
    dk = lax.dot_general(patches, g, ((tuple(range(3)), tuple(range(3))), ((), ()))).reshape(kernel.shape)
    dx = _col2im(jnp.dot(g, k2.T), kh, kw, c)
    return dx.astype(x.dtype), dk.astype(kernel.dtype), jnp.sum(g, axis=(0, 1, 2)).astype(g.dtype)


conv_as_matmul.defvjp(_conv_mm_fwd, _conv_mm_bwd)


# -- switching formulations -----------------------------------------------------------


def _upsample_reference_cropped(x, kernel, factor, crop=None):
    y = upsample_reference(x, kernel, factor)
    if crop is None:
        return y
    sh, sw, h, w = crop
    return y[:, sh : sh + h, sw : sw + w]


@contextlib.contextmanager
def reference_ops():
    """Models traced inside this context use the straightforward formulations
    (conv_transpose, lax convolution, reduce_window pooling): the baseline for
    tests and benchmarks. Not thread-safe; jit caches keyed on the model do not
    see the switch, so trace/compile inside the context."""
    fast = {"upsample": upsample, "conv_as_matmul": conv_as_matmul, "max_pool": max_pool}
    ref = {"upsample": _upsample_reference_cropped, "conv_as_matmul": conv_reference, "max_pool": max_pool_reference}
    g = globals()
    g.update(ref)
    try:
        yield
    finally:
        g.update(fast)
