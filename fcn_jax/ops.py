"""Fast formulations of the FCN's costly layers, and the straightforward ones they replace.

Each fast op computes the same function as its `*_reference` twin (same kernel
layout, same result up to float rounding); tests/test_perf.py checks forward values
and gradients against each other. Why each is faster, on XLA:CPU in particular:

* `upsample`: a stride-f transposed convolution with a (2f-1)^2 (or (2f)^2) kernel, as XLA
  lowers `lax.conv_transpose`, convolves the f-dilated input (mostly zeros) with the
  whole kernel: ~f^2 times the useful work (63x63 at f=32). Every output cell
  f*m + s lies between input cells m and m+1, and only two kernel taps per axis
  reach it: out[f*m + s] = x[m] @ K[f-1+s] + x[m+1] @ K[s-1] (K[-1] = 0; with 2f
  taps, K[f+s] and K[s]). So the
  whole upsampling is ONE matrix product of the 2x2 neighbourhoods of x
  (4C values per cell) with a (4C, f*f*C) rearrangement of K, then depth-to-space.
* `max_pool`: the gradient of `lax.reduce_window` max lowers to select-and-scatter
  (plus a value/index reduce-window) on XLA:CPU, ~15x slower than the forward.
  Here the forward keeps, per output cell, which of the k*k window taps held the
  first maximum (int8), and the backward scatter-adds the cotangent onto it: the
  same gradient (ties go to the first tap in scan order, as select-and-scatter
  with `ge` does).
* `dropout`: jax draws 32 random bits per element (a Threefry hash each, ~6% of
  the FCN's CPU train step for fc6/fc7's two masks). A rate of k/2^b needs only b
  bits: rate 0.5 takes 1 bit, so one 32-bit word decides 32 elements. Each element
  is still dropped independently with probability exactly `rate`; the mask differs
  from flax's nn.Dropout, its distribution does not.
* `conv_winograd`: conv2-conv5 (5x5 and 3x3, stride 1) by Winograd's F(4x4, r x r):
  the input and kernel are carried to (4 + r - 1)^2 points, where a convolution is
  a product per point, so one batched matmul does 4/25 (5x5) or 1/4 (3x3) of the
  direct multiply-adds. Costs: float32 rounding ~1e-5 of the largest value (1e-6
  for a direct convolution), transforms that read and write memory, and a longer
  compile (~6 s per train step). Used on CPU in float32 only (`OpSet.apply_conv`).
* `conv_as_matmul`: fc6 (6x6 window over 256 channels -> 4096) and the 1x1
  layers are matrix products; XLA:CPU's convolution runs fc6 far below its
  matrix-product speed. Patches are gathered by 36 slices (im2col), then one GEMM.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


# -- upsampling ----------------------------------------------------------------------


def _upsampled_span(n: int, factor: int, taps: int) -> tuple[int, int]:
    """(first, count) of the transposed conv's output cells between the first and last of
    n input cells: a 2f-1 kernel (centred on each input cell) keeps (n-1)*f+1 cells from
    f-1, a 2f kernel (centred half a fine cell off) the (n-1)*f cells from f."""
    f = factor
    if taps not in (2 * f - 1, 2 * f):
        raise ValueError(f"an upsampling kernel by {f} has {2 * f - 1} or {2 * f} taps, got {taps}")
    return taps - f, (n - 1) * f + 2 * f - taps


def upsample_reference(x: jax.Array, kernel: jax.Array, factor: int) -> jax.Array:
    """Transposed conv, scatter form out[f*i + t] += x[i] @ kernel[t] (PyTorch's
    ConvTranspose2d), keeping the cells between the first and last input cell
    (`_upsampled_span`: (n-1)*f+1 for a 2f-1 kernel, (n-1)*f for a 2f kernel)."""
    f = factor
    y = lax.conv_transpose(x, kernel[::-1, ::-1], (f, f), "VALID", dimension_numbers=_NHWC)
    (sh, nh), (sw, nw) = (_upsampled_span(n, f, k) for n, k in zip(x.shape[1:3], kernel.shape[:2]))
    return y[:, sh : sh + nh, sw : sw + nw]


def subpixel_kernel(kernel: jax.Array, factor: int) -> jax.Array:
    """(2f-1 or 2f, same, C, D) scatter kernel -> (2, 2, C, f, f, D) taps of the
    2x2-neighbourhood form. Output cell f*m + s (counted from the first kept cell) reads
    x[m] through K[f-1+e+s] and x[m+1] through K[s-1+e], e = taps - (2f-1) (0 off the
    kernel): taps[a, b, :, s, u] = K[f-1+e+s - a*f, f-1+e+u - b*f]."""
    f = factor
    if kernel.shape[0] % 2:  # 2f-1 taps: kp[t + 1] = K[t], kp[0] = 0
        kp = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0)))
    else:  # 2f taps: kp = K
        kp = kernel
    c, d = kernel.shape[2:]
    kp = kp.reshape(2, f, 2, f, c, d)[::-1, :, ::-1]  # (a, s, b, u, C, D): kp[(1-a)*f + s]
    return kp.transpose(0, 2, 4, 1, 3, 5)


def upsample(
    x: jax.Array, kernel: jax.Array, factor: int, crop: tuple[int, int, int, int] | None = None
) -> jax.Array:
    """Same as `upsample_reference`; `crop` = (start_h, start_w, size_h, size_w) of
    the result, applied before depth-to-space where it spares whole coarse rows."""
    f = factor
    n, h, w, c = x.shape
    d = kernel.shape[-1]
    out_h, out_w = (_upsampled_span(m, f, k)[1] for m, k in zip((h, w), kernel.shape[:2]))
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_pads(x: jax.Array, window: int, stride: int) -> jax.Array:
    """`max_pool` whose backward adds k*k strided pads instead of scattering: no atomics,
    so the gradient is deterministic on a GPU (a scatter-add there is not)."""
    return _max_pool_fwd(x, window, stride)[0]


def _max_pool_pads_bwd(window, stride, res, g):
    arg, shape = res
    n, oh, ow, c = arg.shape
    _, h, w, _ = shape
    dx = jnp.zeros(shape, g.dtype)
    zero = jnp.zeros((), g.dtype)
    for k, (a, b) in enumerate(_pool_taps(shape, window, stride)[2]):
        part = jnp.where(arg == k, g, zero)
        hi_h, hi_w = h - a - stride * (oh - 1) - 1, w - b - stride * (ow - 1) - 1
        dx = dx + lax.pad(part, zero, [(0, 0, 0), (a, hi_h, stride - 1), (b, hi_w, stride - 1), (0, 0, 0)])
    return (dx,)


max_pool_pads.defvjp(_max_pool_fwd, _max_pool_pads_bwd)


# -- dropout ------------------------------------------------------------------------


def dropout_reference(rng: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """flax nn.Dropout's formulation: one 32-bit uniform draw per element."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _bits_per_element(rate: float) -> int | None:
    """Fewest bits b (1, 2, 4 or 8) with rate * 2^b an integer, else None."""
    for b in (1, 2, 4, 8):
        if float(rate * 2**b).is_integer():
            return b
    return None


def dropout(rng: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout (kept values scaled by 1/(1-rate)), each element dropped
    independently with probability `rate`; rate k/2^b costs b random bits per element."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate must be in [0, 1], got {rate}")
    if rate == 0.0:
        return x
    bits = _bits_per_element(rate)
    c = x.shape[-1] if x.ndim else 1
    if rate >= 1.0 or bits is None or (c * bits) % 32:
        return dropout_reference(rng, x, rate)
    per_word = 32 // bits
    # Words along the last axis only, so a batch-sharded x draws its shard's words.
    words = jax.random.bits(rng, (*x.shape[:-1], c // per_word), jnp.uint32)
    fields = (words[..., None] >> (bits * jnp.arange(per_word, dtype=jnp.uint32))) & jnp.uint32(2**bits - 1)
    keep = fields.reshape(x.shape) >= jnp.uint32(round(rate * 2**bits))
    return lax.select(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


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


# -- Winograd convolution ------------------------------------------------------------


@functools.cache
def winograd_matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of Winograd's F(m, r), computed exactly (rationals), as float64.

    1-D correlation of d (m + r - 1 values) with g (r taps):
    y = A^T [(G g) * (B^T d)]. Built by Toom-Cook from the points 0, 1, -1, 2, -2,
    1/2, -1/2 (as many as needed) and infinity: G evaluates the kernel polynomial,
    A evaluates the tile's, B^T is the transposed interpolation (Vandermonde inverse).
    """
    n = m + r - 1
    pool = [
        Fraction(0),
        Fraction(1),
        Fraction(-1),
        Fraction(2),
        Fraction(-2),
        Fraction(1, 2),
        Fraction(-1, 2),
    ]
    if n - 1 > len(pool):
        raise ValueError(f"F({m}, {r}) needs {n - 1} finite points; at most {len(pool)} are set up")
    points = pool[: n - 1]

    def vander(cols: int) -> list[list[Fraction]]:  # rows: points, then infinity
        return [[p**k for k in range(cols)] for p in points] + [
            [Fraction(int(k == cols - 1)) for k in range(cols)]
        ]

    a, g, v = vander(m), vander(r), vander(n)
    # Exact inverse of the n x n Vandermonde matrix by Gauss-Jordan over the rationals.
    aug = [row + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(v)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if aug[i][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        aug[col] = [x / aug[col][col] for x in aug[col]]
        for i in range(n):
            if i != col and aug[i][col] != 0:
                aug[i] = [x - aug[i][col] * y for x, y in zip(aug[i], aug[col])]
    bt = [list(col) for col in zip(*(row[n:] for row in aug))]  # B^T = (V^-1)^T
    # Scale point j's row of B^T to a largest entry of 1 and G's row inversely (the
    # product is unchanged): F(2, 3)'s input transform then only adds and subtracts.
    for j in range(n):
        s = max(abs(x) for x in bt[j])
        bt[j] = [x / s for x in bt[j]]
        g[j] = [x * s for x in g[j]]
    as_array = lambda rows: np.array([[float(x) for x in row] for row in rows], np.float64)
    return as_array(a).T, as_array(g), as_array(bt)


def conv_same_reference(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Stride-1 convolution with `padding` zeros on every side (AlexNet's conv2-conv5)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2, dimension_numbers=_NHWC)


def _along(mat: np.ndarray, x: jax.Array, axis: int, out_axis: int) -> jax.Array:
    """out[.., i, ..] = sum_a mat[i, a] * x[.., a, ..]: `axis` of x is contracted and
    the result's new axis put at `out_axis`. Written as scaled slices and one stack,
    which XLA fuses into one loop (a dot over a 4-8 long axis would run far slower)."""
    terms = [lax.index_in_dim(x, a, axis, keepdims=False) for a in range(x.shape[axis])]
    rows = []
    for coefs in mat:
        acc = None
        for c, t in zip(coefs, terms):
            if c != 0:
                t = t if c == 1 else -t if c == -1 else t * np.asarray(c, t.dtype)
                acc = t if acc is None else acc + t
        rows.append(jnp.zeros_like(terms[0]) if acc is None else acc)
    return jnp.stack(rows, axis=out_axis)


def _pad_axis(x: jax.Array, axis: int, lo: int, hi: int) -> jax.Array:
    return jnp.pad(x, [(lo, hi) if i == axis else (0, 0) for i in range(x.ndim)])


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """The m x m output tiles of F(m x m, r x r) on an (N, H, W, C) input: tile
    (t, u) reads the n x n window (n = m + r - 1 <= 2m) at (m*t, m*u) of the padded
    input. Cut into m x m blocks, the windows are two neighbouring blocks per axis:
    window row a = q*m + s is row s of block row t + q."""

    n_img: int
    h: int
    w: int
    c: int
    m: int
    r: int
    pad: int

    @property
    def n(self) -> int:
        return self.m + self.r - 1

    @property
    def out(self) -> tuple[int, int]:
        return self.h + 2 * self.pad - self.r + 1, self.w + 2 * self.pad - self.r + 1

    @property
    def tiles(self) -> tuple[int, int]:
        return tuple(-(-o // self.m) for o in self.out)

    def windows(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C) -> (N, th, n, tw, n, C): every tile's input window."""
        m, n, (th, tw) = self.m, self.n, self.tiles
        x = jnp.pad(
            x,
            (
                (0, 0),
                (self.pad, m * (th + 1) - self.h - self.pad),
                (self.pad, m * (tw + 1) - self.w - self.pad),
                (0, 0),
            ),
        )
        blocks = x.reshape(self.n_img, th + 1, m, tw + 1, m, self.c)
        rows = jnp.concatenate([blocks[:, :th], blocks[:, 1:, : n - m]], axis=2)
        return jnp.concatenate([rows[:, :, :, :tw], rows[:, :, :, 1:, : n - m]], axis=4)

    def windows_transpose(self, d: jax.Array) -> jax.Array:
        """Adjoint of `windows`: adds overlapping windows back onto the input."""
        m, n, (th, tw) = self.m, self.n, self.tiles
        rows = _pad_axis(d[:, :, :, :, :m], 3, 0, 1) + _pad_axis(
            _pad_axis(d[:, :, :, :, m:], 4, 0, 2 * m - n), 3, 1, 0
        )
        blocks = _pad_axis(rows[:, :, :m], 1, 0, 1) + _pad_axis(
            _pad_axis(rows[:, :, m:], 2, 0, 2 * m - n), 1, 1, 0
        )
        x = blocks.reshape(self.n_img, m * (th + 1), m * (tw + 1), self.c)
        return x[:, self.pad : self.pad + self.h, self.pad : self.pad + self.w]


def _winograd_points(x: jax.Array, kernel: jax.Array, t: _Tiling, bt: np.ndarray, g: np.ndarray):
    """Inputs and kernel at the n x n points: (n^2, tiles, C) and (n^2, C, D)."""
    v = _along(bt, _along(bt, t.windows(x), 2, 0), 4, 1)  # (p, q, N, th, tw, C)
    u = _along(g, _along(g, kernel, 0, 0), 1, 1)  # (p, q, C, D)
    return v.reshape(t.n**2, -1, t.c), u.reshape(t.n**2, t.c, -1)


def _bmm(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((0,), (0,))))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_winograd(x: jax.Array, kernel: jax.Array, padding: int, tile: int = 4) -> jax.Array:
    """Same as `conv_same_reference` (values and gradients, up to float rounding:
    ~1e-5 of the largest value at tile 4, ~1e-6 at tile 2), by Winograd's
    F(tile x tile, r x r): one batched matmul of (tiles, C) @ (C, D) at each of the
    (tile + r - 1)^2 points. At tile 4, 3x3 kernels take 1/4 of the direct
    multiplications and 5x5 kernels 4/25. Needs r - 1 <= tile.

    An output whose input window is all zero (the FCN's zero-padded border) is set
    to exactly 0, as a direct convolution gives: the transforms would leave rounding
    noise of either sign there, and a following ReLU (with zero bias, as at
    initialisation) would pass or block its gradient by that sign."""
    return _conv_winograd_fwd(x, kernel, padding, tile)[0]


def _tiling(x, kernel, padding, tile) -> _Tiling:
    r = kernel.shape[0]
    if kernel.shape[1] != r or r - 1 > tile:
        raise ValueError(
            f"conv_winograd: needs a square kernel with size - 1 <= tile, "
            f"got {kernel.shape[:2]} and tile {tile}"
        )
    return _Tiling(*x.shape, tile, r, padding)


def _conv_winograd_fwd(x, kernel, padding, tile):
    t = _tiling(x, kernel, padding, tile)
    at, g, bt = winograd_matrices(t.m, t.r)
    v, u = _winograd_points(x, kernel, t, bt, g)
    (th, tw), (oh, ow) = t.tiles, t.out
    prod = _bmm(v, u, (2, 1)).reshape(t.n, t.n, t.n_img, th, tw, -1)
    y = _along(at, _along(at, prod, 0, 3), 0, 4)  # (N, th, i, tw, j, D)
    y = y.reshape(t.n_img, th * t.m, tw * t.m, -1)[:, :oh, :ow]
    # Forward only: the gradient stays the convolution's (which does not depend on y).
    nonzero = jnp.any(x != 0, axis=-1, keepdims=True).astype(x.dtype)
    live = lax.reduce_window(
        nonzero,
        np.asarray(0, x.dtype),
        lax.max,
        (1, t.r, t.r, 1),
        (1, 1, 1, 1),
        [(0, 0), (padding, padding), (padding, padding), (0, 0)],
    )
    return jnp.where(live > 0, y, 0), (x, kernel)


def _conv_winograd_bwd(padding, tile, res, dy):
    x, kernel = res
    t = _tiling(x, kernel, padding, tile)
    at, g, bt = winograd_matrices(t.m, t.r)
    v, u = _winograd_points(x, kernel, t, bt, g)  # recomputed: cheaper than keeping them
    (th, tw), (oh, ow), m, n = t.tiles, t.out, t.m, t.n
    d = dy.shape[-1]
    dy = jnp.pad(dy, ((0, 0), (0, th * m - oh), (0, tw * m - ow), (0, 0))).reshape(t.n_img, th, m, tw, m, d)
    dprod = _along(at.T, _along(at.T, dy, 2, 0), 4, 1).reshape(n * n, -1, d)  # (p, q, N, th, tw, D)
    du = _bmm(v, dprod, (1, 1)).reshape(n, n, t.c, d)
    dv = _bmm(dprod, u, (2, 2)).reshape(n, n, t.n_img, th, tw, t.c)
    dk = _along(g.T, _along(g.T, du, 0, 0), 1, 1)
    dwin = _along(bt.T, _along(bt.T, dv, 0, 3), 0, 4)  # (N, th, a, tw, b, C)
    return t.windows_transpose(dwin).astype(x.dtype), dk.astype(kernel.dtype)


conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


# -- choosing formulations ---------------------------------------------------------------


def _upsample_reference_cropped(x, kernel, factor, crop=None):
    y = upsample_reference(x, kernel, factor)
    if crop is None:
        return y
    sh, sw, h, w = crop
    return y[:, sh : sh + h, sw : sw + w]


@dataclasses.dataclass(frozen=True)
class OpSet:
    """Which formulation of each costly layer a model runs.

    A field of the model (`models.FCN(ops=...)`), so it is part of the model's identity:
    jit caches keyed on the model see it, a run records it in its model spec, and
    inference runs what training ran. Each fast formulation computes the same function as
    its reference (tests/test_perf.py); `OpSet.reference()` is the straightforward model
    (XLA's convolutions, pooling gradient, transposed convolution and flax's dropout), the
    baseline for tests and benchmarks.
    """

    conv: str = "winograd"  # conv2-conv5: winograd (on CPU in float32; XLA's elsewhere) | xla
    dense: str = "matmul"  # fc6, fc7, score layers: matmul (hand-written VJP) | xla
    upsample: str = "subpixel"  # subpixel (one GEMM + depth-to-space) | transpose
    # max-pool gradient: scatter (onto the recorded winner; measured fastest on CPU) | pads
    # (k*k strided pads: deterministic on a GPU, where a scatter-add is not) | xla |
    # auto (scatter on CPU, pads elsewhere)
    pool: str = "auto"
    dropout: str = "bits"  # bits (as few random bits as the rate needs) | flax

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "conv": ("winograd", "xla"),
        "dense": ("matmul", "xla"),
        "upsample": ("subpixel", "transpose"),
        "pool": ("auto", "scatter", "pads", "xla"),
        "dropout": ("bits", "flax"),
    }

    def __post_init__(self):
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ops.{name} must be one of {', '.join(allowed)}, got {value!r}")

    @classmethod
    def reference(cls) -> OpSet:
        return cls(**{name: allowed[-1] for name, allowed in cls.CHOICES.items()})

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    # -- the ops, in the chosen formulation ------------------------------------------------

    def apply_pool(self, x: jax.Array, window: int, stride: int) -> jax.Array:
        if self.pool == "auto":
            return lax.platform_dependent(
                x,
                cpu=lambda x: max_pool(x, window, stride),
                default=lambda x: max_pool_pads(x, window, stride),
            )
        fn = {"scatter": max_pool, "pads": max_pool_pads, "xla": max_pool_reference}[self.pool]
        return fn(x, window, stride)

    def apply_upsample(self, x, kernel, factor: int, crop=None) -> jax.Array:
        fn = upsample if self.upsample == "subpixel" else _upsample_reference_cropped
        return fn(x, kernel, factor, crop)

    def apply_dense(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        return (conv_as_matmul if self.dense == "matmul" else conv_reference)(x, kernel, bias)

    def apply_dropout(self, rng: jax.Array, x: jax.Array, rate: float) -> jax.Array:
        return (dropout if self.dropout == "bits" else dropout_reference)(rng, x, rate)

    def apply_conv(self, x: jax.Array, kernel: jax.Array, padding: int, tile: int | None) -> jax.Array:
        """A stride-1 convolution zero-padded by `padding`; Winograd only on CPU in float32
        (GPU libraries pick their own algorithms; bfloat16 is too coarse for the transforms)."""
        if self.conv != "winograd" or tile is None or x.dtype != jnp.float32:
            return conv_same_reference(x, kernel, padding)
        return lax.platform_dependent(
            x,
            kernel,
            cpu=lambda x, w: conv_winograd(x, w, padding, tile),
            default=lambda x, w: conv_same_reference(x, w, padding),
        )
