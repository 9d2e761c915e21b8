"""Input pipeline vs train step throughput on CamVid at 360x480.

    python benchmarks/input_pipeline.py                   # prepares CamVid into a temp dir
    python benchmarks/input_pipeline.py --data DIR        # an already prepared dataset
    python benchmarks/input_pipeline.py --data DIR --augment --skip-train --host-batches ''
                                                          # the device path's augmentation alone

Prints the training pipeline's images/s (decode, random scale 0.75-1.25, random 360x480
crop, flip, normalise, batch), the train step's images/s and their ratio; the pipeline
should deliver at least 3x what the step consumes. The two are timed one after the other,
each with the whole machine: in a real run they share the CPU cores.

Train step: the project's own (fcn_jax.training.compile_steps), FCN-8s, SGD momentum,
median-frequency class weights, void ignored, on one pipeline batch kept on the device.

Seen 2026-11-26. This 2-core CPU box (shared, so noisy): pipeline 43-172 img/s (cache+uint8
148-262), train step 0.4-0.5 img/s, ratio >100x. On an H200 (16 cores; the pipeline's
per-example work timed without tfds/grain on synthetic 480x360 PNGs): FCN-8s fp32 step
~1100 img/s at batch 16, PIL decode+augment+normalise 480 img/s on 16 threads, 735 with
OpenCV decode, ~1100-1200 with the decoded cache and uint8 output: below 3x there; reaching
it needs the augmentation on the device.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def time_pipeline(
    data_dir, batch: int, steps: int, warmup: int, threads: int | None, fast: bool = False
) -> float:
    """images/s of TrainLoader; fast: decoded-example cache (after a first epoch) + uint8 output."""
    from fcn_jax import data

    loader = data.TrainLoader(
        data_dir,
        global_batch_size=batch,
        crop_size=(360, 480),
        scale_range=(0.75, 1.25),
        flip=True,
        seed=0,
        num_threads=threads,
        cache=fast,
        normalize=not fast,
    )
    for _ in range(loader.steps_per_epoch if fast else warmup):  # fast: fill the cache first
        next(loader)
    start = time.perf_counter()
    for _ in range(steps):
        next(loader)
    return steps * batch / (time.perf_counter() - start)


def time_train_step(data_dir, batch: int, steps: int, warmup: int) -> float:
    """images/s of the project's jitted train step (fcn_jax.training), FCN-8s, SGD momentum,
    median-frequency class weights, on one pipeline batch kept on the device."""
    import jax

    from fcn_jax import data, training
    from fcn_jax.config import optimizer_config
    from fcn_jax.models import FCN

    meta = data.load_meta(data_dir)
    loader = data.TrainLoader(
        data_dir, global_batch_size=batch, crop_size=(360, 480), seed=0, process_index=0, process_count=1
    )
    model = FCN(meta.num_classes, "8s")
    tx, _ = training.make_optimizer(optimizer_config(name="sgd", learning_rate=1e-4), decay_steps=1000)
    mesh = training.data_mesh()
    step, _ = training.compile_steps(mesh, model, tx, meta.ignore_index, data.class_weights(data_dir))
    state = training.init_state(model, tx, jax.random.PRNGKey(0))
    b = data.to_global(next(loader), mesh)
    for _ in range(warmup):  # compile
        state, metrics = step(state, b)
    jax.block_until_ready(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, b)
    jax.block_until_ready(metrics["loss"])
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError(f"non-finite loss {float(metrics['loss'])}")
    return steps * batch / (time.perf_counter() - start)


def time_host_side(data_dir, path: str, batch: int, steps: int, crop=(128, 160)) -> dict:
    """Host time per step of the training loop's input path, as `fcn_jax.train` runs it:
    `outside_us` is the work before the jitted step is called (device path: the next batch
    index; host path: taking a prefetched grain batch and putting the next one on the
    devices), `call_us` the time the asynchronous call itself takes to return. The step runs
    for real (FCN-32s on `crop` crops, so the host path's prefetch threads compete with it)."""
    import jax

    from fcn_jax import config as config_lib
    from fcn_jax import data, train, training
    from fcn_jax.models import FCN

    c = config_lib.base_config()
    c.data.crop_size, c.train.batch_size, c.data.device_cache = (
        tuple(crop),
        batch,
        "on" if path == "device" else "off",
    )
    mesh = training.data_mesh()
    meta = data.load_meta(data_dir)
    loader = train.make_loader(c, data_dir, mesh)
    model = FCN(meta.num_classes, "32s")
    tx, _ = training.make_optimizer(c.optimizer, decay_steps=1000)
    on_device = loader.path == "device"
    step, _ = training.compile_steps(
        mesh, model, tx, meta.ignore_index, device_data=loader.aug if on_device else None
    )
    state = training.init_state(model, tx, jax.random.PRNGKey(0))
    if not on_device:
        loader = data.Prefetcher(loader, mesh, size=2)
    outside, call = [], []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        inputs = (loader.cache, next(loader)) if on_device else (next(loader),)
        t1 = time.perf_counter()
        state, metrics = step(state, *inputs)
        t2 = time.perf_counter()
        if i >= 2:  # the first two compile and fill the prefetch queue
            outside.append(t1 - t0)
            call.append(t2 - t1)
    jax.block_until_ready(metrics["loss"])
    return {"outside_us": 1e6 * float(np.median(outside)), "call_us": 1e6 * float(np.median(call))}


def time_device_augment(data_dir, batch: int, crop, scale_range, variants, batches: int = 20) -> list[float]:
    """Milliseconds per global batch of the device path's augmentation alone (`device.batch`:
    gather, scale, crop, flip and colour jitter, jitted), on the split `train`, once per
    (colour jitter, margin) in `variants`; each the median of five timings of `batches`
    batches. The split is decoded and cached on the device once; only the jitter and the
    crop's margin of context change between them."""
    import dataclasses
    import functools

    import jax

    from fcn_jax import training
    from fcn_jax.data import device

    loader = device.DeviceLoader(
        data_dir,
        training.data_mesh(),
        global_batch_size=batch,
        crop_size=tuple(crop),
        scale_range=tuple(scale_range),
    )
    result = []
    for jitter, margin in variants:
        aug = dataclasses.replace(loader.aug, jitter=tuple(float(v) for v in jitter), margin=margin)
        fn = jax.jit(functools.partial(device.batch, aug))
        jax.block_until_ready(fn(loader.cache, 0))  # compile
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for i in range(batches):
                out = fn(loader.cache, i)
            jax.block_until_ready(out)
            times.append(1e3 * (time.perf_counter() - start) / batches)
        result.append(float(np.median(times)))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default=None, help="prepared dataset dir (default: prepare CamVid to a temp dir)"
    )
    p.add_argument("--source", default=None, help="CamVid folder to prepare (default: fcn_jax's default)")
    p.add_argument("--batch", type=int, default=8, help="pipeline batch size")
    p.add_argument("--steps", type=int, default=40, help="pipeline batches to time")
    p.add_argument("--threads", type=int, default=None, help="pipeline threads (default min(16, cores))")
    p.add_argument("--train-batch", type=int, default=None, help="train step batch (default --batch)")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument(
        "--host-batches",
        default="2,8,32",
        help="batch sizes for the host-time-per-step table of both input paths ('' to skip)",
    )
    p.add_argument("--host-steps", type=int, default=6, help="steps timed per batch size and path")
    p.add_argument(
        "--fast",
        action="store_true",
        help="also time TrainLoader(cache=True, normalize=False) (fills the cache first)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="also time the device path's augmentation per batch with experiments/camvid_cpu.py's "
        "batch, crops and scales and the colour jitter of its mode fifth, then without the jitter",
    )
    args = p.parse_args(argv)

    from fcn_jax import data

    tmp = None
    data_dir = args.data
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fcn_jax_bench_")
        t = time.perf_counter()
        data_dir = data.prepare_camvid(args.source, tmp.name, progress=False)
        print(f"prepared CamVid in {time.perf_counter() - t:.1f} s -> {data_dir}")
    try:
        meta = data.load_meta(data_dir)
        print(f"dataset {meta.name}: {meta.splits}; {os.cpu_count()} CPU cores")
        pipe = time_pipeline(data_dir, args.batch, args.steps, warmup=2, threads=args.threads)
        print(f"input pipeline : {pipe:8.1f} images/s  (batch {args.batch}, 360x480 crops, scale+flip)")
        if args.fast:
            fast = time_pipeline(data_dir, args.batch, args.steps, 2, args.threads, fast=True)
            print(f"  cache+uint8  : {fast:8.1f} images/s  (decoded cache warm, normalise on device)")
        if args.augment:
            from fcn_jax import train
            from fcn_jax.config import load_config
            from fcn_jax.data.transforms import NO_MARGIN

            recipe = Path(__file__).resolve().parents[1] / "experiments" / "camvid_cpu.py"
            # The recipe with colour jitter; the same batch, crops and scales as the recipe.
            c = load_config(f"{recipe}:fifth_heldout")
            d, batch = c.data, c.train.batch_size
            c.data.crop_context = True
            none, context = (0, 0, 0, 0), train.crop_margin(c)
            with_jitter, without, with_context = time_device_augment(
                data_dir,
                batch,
                d.crop_size,
                d.scale_range,
                variants=((d.color_jitter, NO_MARGIN), (none, NO_MARGIN), (none, context)),
            )
            print(
                f"device augmentation: {with_jitter:.1f} ms per batch with colour jitter "
                f"{tuple(d.color_jitter)}, {without:.1f} ms without, {with_context:.1f} ms without "
                f"and with data.crop_context (images {context} wider) (the CPU recipe's batch {batch}, "
                f"{d.crop_size[0]}x{d.crop_size[1]} crops, scale {d.scale_range[0]}-{d.scale_range[1]})"
            )
        batches = [int(b) for b in args.host_batches.split(",") if b.strip()]
        if batches:
            print("host time per step outside the jitted step's call (median), and the call itself:")
            print("| path | batch | outside us | call us |")
            print("|---|---|---|---|")
            for path in ("device", "host"):
                for b in batches:
                    r = time_host_side(data_dir, path, b, args.host_steps)
                    print(f"| {path} | {b} | {r['outside_us']:.0f} | {r['call_us']:.0f} |", flush=True)
        if args.skip_train:
            return 0
        import jax

        tb = args.train_batch or args.batch
        train = time_train_step(data_dir, tb, args.train_steps, warmup=2)
        dev = jax.devices()[0]
        print(
            f"train step     : {train:8.1f} images/s  (FCN-8s AlexNet, batch {tb}, "
            f"{dev.platform}: {dev.device_kind})"
        )
        ratio = pipe / train
        print(f"ratio pipeline/train step: {ratio:.1f}x  (target >= 3x: {'OK' if ratio >= 3 else 'BELOW'})")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
