"""Winograd F(4x4, 3x3) against XLA's convolution on each 3x3 layer of FCN-VGG16 (or FCN-AlexNet).

    python benchmarks/winograd_layers.py --backbone vgg16 --height 64 --width 96

Times each stride-1 convolution of the backbone alone, at the size the FCN-8s runs it for an
image of HEIGHTxWIDTH (the geometry's padding included), batch 1, float32: forward, and forward +
backward (input and kernel gradients), median of --repeats calls after one warm-up. What
`models.WINOGRAD_TILE` was chosen from (docs/vgg16.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", choices=("alexnet", "vgg16"), default="vgg16")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from fcn_jax import geometry, ops
    from fcn_jax.models import BACKBONE_CHANNELS

    plan = geometry.plan(args.height, args.width, "8s", args.backbone)
    h, w = args.height + sum(plan.height.pad), args.width + sum(plan.width.pad)
    layers, channels = geometry.get_backbone(args.backbone).layers, BACKBONE_CHANNELS[args.backbone]
    convs, cin = [], 3
    for name, win in layers.items():  # sizes along the table (floor, as VALID pools and convs)
        if name.startswith("fc"):
            break
        if win.stride == 1 and win.kernel == 3 and not name.startswith("pool"):
            convs.append((name, h, w, cin, channels[name]))
        h, w = ((n + 2 * win.padding - win.kernel) // win.stride + 1 for n in (h, w))
        cin = channels.get(name, cin)

    def timed(f, *a) -> float:
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    impls = {
        "xla": lambda x, k: ops.conv_same_reference(x, k, 1),
        "winograd": lambda x, k: ops.conv_winograd(x, k, 1, 4),
    }
    rng = np.random.default_rng(0)
    cache, totals = {}, {i: [0.0, 0.0] for i in impls}
    print(f"FCN-{args.backbone}-8s, {args.height}x{args.width} image padded to "
          f"{args.height + sum(plan.height.pad)}x{args.width + sum(plan.width.pad)}; ms, median of "
          f"{args.repeats}: forward / forward + backward")  # fmt: skip
    print("| layer | size | channels | XLA | Winograd | train speed-up |")
    print("|---|---|---|---|---|---|")
    for name, hh, ww, ci, co in convs:
        key = (hh, ww, ci, co)
        if key not in cache:
            x = jnp.asarray(rng.standard_normal((1, hh, ww, ci), np.float32))
            k = jnp.asarray(rng.standard_normal((3, 3, ci, co), np.float32))
            cache[key] = {}
            for impl, fn in impls.items():
                loss = lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2)
                cache[key][impl] = (
                    timed(jax.jit(fn), x, k),
                    timed(jax.jit(jax.grad(loss, argnums=(0, 1))), x, k),
                )
        r = cache[key]
        for impl in impls:
            totals[impl][0] += r[impl][0]
            totals[impl][1] += r[impl][1]
        print(f"| {name} | {hh}x{ww} | {ci} -> {co} | {r['xla'][0]:.0f} / {r['xla'][1]:.0f} "
              f"| {r['winograd'][0]:.0f} / {r['winograd'][1]:.0f} | {r['xla'][1] / r['winograd'][1]:.2f}x |",
              flush=True)  # fmt: skip
    x, wg = totals["xla"], totals["winograd"]
    print(f"| all | | | {x[0]:.0f} / {x[1]:.0f} | {wg[0]:.0f} / {wg[1]:.0f} | {x[1] / wg[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
