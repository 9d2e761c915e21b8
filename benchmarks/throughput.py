"""Training and inference throughput of fcn_jax's FCN against its PyTorch twin.

    python benchmarks/throughput.py                              # 32s, 16s, 8s at 360x480, batch 2
    python benchmarks/throughput.py --variants 8s,32s --steps 10
    python benchmarks/throughput.py --dtype bfloat16 --no-torch  # e.g. on a GPU
    python benchmarks/throughput.py --backbone vgg16 --variants 8s  # FCN-VGG16

    python benchmarks/throughput.py --modes infer --ort-batches 1,2 # + onnxruntime at batch 1 and 2

fcn_jax train = the project's jitted step (fcn_jax.training: make_optimizer(SGD,
momentum 0.9) + init_state + compile_steps on a 1-device mesh, state donated);
fcn_jax inference = jitted FCN apply + argmax. PyTorch = benchmarks/torch_twin.TorchFCN
(on the same --backbone: alexnet or vgg16) with the same parameters: train = forward +
cross entropy + backward + SGD step, inference = no_grad forward + argmax, torch.set_num_threads(cores).

The two frameworks are timed in alternating rounds (ABBA order) so that noise on a
shared machine hits both alike; images/s come from the median round. FLOPs per image
come from XLA's cost analysis: "executed" of the compiled program (Winograd's
convolutions execute fewer than the model needs), "model" of the straightforward
program (`ops.OpSet.reference()`, lowered only), which is what the twin executes and
what MFU counts. The machine's peak is *estimated* by a large matmul timed in the same run
(float32 on CPU, bfloat16 on GPU). On a GPU the bf16 model-FLOPs utilisation against
--peak-tflops (default 989, H100/H200 dense bf16) is printed too; torch runs there
only where CUDA torch is installed.

onnxruntime (with --modes infer, unless --no-ort) = the model exported by
fcn_jax.onnx_export (the plain formulation, batch/height/width dynamic, uint8 in,
normalisation inside, labels out), run by onnxruntime's CPU provider with as many intra-op
threads as cores. It is timed against fcn_jax doing the same thing: a jitted function of the
same uint8 batch (normalisation, the model as --impl says, arg-max), alternating in ABBA
rounds as above, at each batch size of --ort-batches; ORT's session creation time is printed
as its "compile s".
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IGNORE = 255


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="32s,16s,8s")
    p.add_argument("--backbone", choices=("alexnet", "vgg16"), default="alexnet")
    p.add_argument("--modes", default="train,infer", help="train, infer or both")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--steps", type=int, default=6, help="timed rounds per framework")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-ort", action="store_true", help="skip the onnxruntime inference rows")
    p.add_argument(
        "--ort-batches", default="1,2", help="batch sizes of the fcn_jax vs onnxruntime inference rows"
    )
    p.add_argument(
        "--impl",
        choices=("fast", "reference"),
        default="fast",
        help="reference: the model with fcn_jax.ops.OpSet.reference() (the straightforward "
        "conv_transpose / conv / reduce_window formulation: the v0 baseline)",
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak for MFU")
    return p.parse_args(argv)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# -- fcn_jax --------------------------------------------------------------------


def _flops(lowered_or_compiled) -> float:
    cost = lowered_or_compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


class JaxSide:
    def __init__(self, variant, args, images, labels):
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from fcn_jax import training
        from fcn_jax.config import optimizer_config
        from fcn_jax.models import FCN
        from fcn_jax.ops import OpSet

        self.jax = jax
        dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
        op_set = OpSet.reference() if args.impl == "reference" else OpSet()
        self.model = FCN(args.num_classes, variant, dtype=dtype, ops=op_set, backbone=args.backbone)
        tx, _ = training.make_optimizer(
            optimizer_config(name="sgd", learning_rate=1e-4, momentum=0.9, schedule="constant"), decay_steps=1
        )
        state = training.init_state(self.model, tx, jax.random.key(0))
        # Non-zero score layers, so every layer's gradient is a real one.
        params = dict(state.params)
        for name in params:
            if name.startswith("score_"):
                k = params[name]["kernel"]
                params[name] = {
                    **params[name],
                    "kernel": 1e-3 * jax.random.normal(jax.random.key(1), k.shape),
                }
        state = training.init_state(self.model, tx, jax.random.key(0), params=params)
        self.params = jax.tree.map(np.asarray, state.params)  # host copy for the torch twin
        mesh = training.data_mesh(jax.devices()[:1])
        train, _ = training.compile_steps(mesh, self.model, tx, IGNORE)
        replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P(training.DATA_AXIS))
        self.state = jax.device_put(state, replicated)
        self.batch = jax.device_put({"image": images, "label": labels}, batched)
        model = self.model
        infer = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), axis=-1))
        # From the host copy: device_put of on-device arrays may alias the train state's
        # buffers, which the train step donates (seen on a GPU: 'Array has been deleted').
        self.infer_params = jax.device_put(self.params, replicated)

        self.compiled, self.compile_s = {}, {}
        t = time.perf_counter()
        self.compiled["train"] = train.lower(self.state, self.batch).compile()
        self.compile_s["train"] = time.perf_counter() - t
        t = time.perf_counter()
        self.compiled["infer"] = infer.lower(self.infer_params, self.batch["image"]).compile()
        self.compile_s["infer"] = time.perf_counter() - t
        # Model FLOPs: the direct formulation's count (XLA's cost analysis of the
        # reference program, lowered, not compiled), whatever algorithm runs.
        reference = self.model.clone(ops=OpSet.reference())
        ref_train, _ = training.compile_steps(mesh, reference, tx, IGNORE)
        ref_infer = jax.jit(lambda p, x: jnp.argmax(reference.apply({"params": p}, x), axis=-1))
        self.model_flops = {
            "train": _flops(ref_train.lower(self.state, self.batch)),
            "infer": _flops(ref_infer.lower(self.infer_params, self.batch["image"])),
        }

    def flops(self, mode) -> float:
        """FLOPs the compiled program executes (fewer than the model's with Winograd)."""
        return _flops(self.compiled[mode])

    def memory_mb(self, mode) -> float:
        m = self.compiled[mode].memory_analysis()
        if m is None:
            return float("nan")
        total = (
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        )
        return total / 2**20

    def step(self, mode) -> float:
        t = time.perf_counter()
        if mode == "train":
            self.state, metrics = self.compiled["train"](self.state, self.batch)
            self.jax.block_until_ready(metrics["loss"])
        else:
            self.jax.block_until_ready(self.compiled["infer"](self.infer_params, self.batch["image"]))
        return time.perf_counter() - t


# -- PyTorch --------------------------------------------------------------------


class TorchSide:
    def __init__(self, variant, args, images, labels, params, device):
        import torch
        from torch_twin import TorchFCN, load_flax_fcn_params

        self.torch, self.device = torch, device
        twin = TorchFCN(args.num_classes, variant, backbone=args.backbone)
        self.model = load_flax_fcn_params(twin, params).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.autocast = args.dtype == "bfloat16"

    def _sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def step(self, mode) -> float:
        torch = self.torch
        self._sync()
        t = time.perf_counter()
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            if mode == "train":
                self.model.train()
                self.opt.zero_grad(set_to_none=True)
                loss = self.model.loss(self.images, self.labels, IGNORE)
                loss.backward()
                self.opt.step()
                loss.item()
            else:
                self.model.eval()
                with torch.no_grad():
                    self.model(self.images).argmax(1).cpu()
        self._sync()
        return time.perf_counter() - t


def torch_device(backend: str, no_torch: bool):
    """'cpu', 'cuda' or None (skipped), with the reason."""
    if no_torch:
        return None, "--no-torch"
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    if backend == "cpu":
        torch.set_num_threads(cores())
        return "cpu", f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda", f"torch {torch.__version__} on {torch.cuda.get_device_name()}"
    return None, f"torch {torch.__version__} has no CUDA here"


# -- onnxruntime -------------------------------------------------------------------


class OrtSide:
    """The exported ONNX model in onnxruntime, and fcn_jax's same uint8 -> labels function."""

    def __init__(self, model, params, threads: int):
        import jax
        import jax.numpy as jnp
        import onnxruntime as ort

        from fcn_jax import onnx_export

        self.jax = jax
        t = time.perf_counter()
        proto = onnx_export.build_onnx(model, params, None, output="labels")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.load_s = time.perf_counter() - t
        scale, offset = onnx_export.normalization_constants()

        def labels(p, pixels):
            x = pixels.astype(jnp.float32) * jnp.asarray(scale) + jnp.asarray(offset)
            return jnp.argmax(model.apply({"params": p}, x), axis=-1).astype(jnp.int32)

        self.labels = jax.jit(labels)
        self.params = jax.device_put(params)
        self.compiled, self.compile_s = {}, {}

    def compile(self, pixels) -> None:
        t = time.perf_counter()
        self.compiled[len(pixels)] = self.labels.lower(self.params, pixels).compile()
        self.compile_s[len(pixels)] = time.perf_counter() - t

    def step(self, who: str, pixels) -> float:
        t = time.perf_counter()
        if who == "ort":
            self.session.run(["labels"], {"images": pixels})
        else:
            self.jax.block_until_ready(self.compiled[len(pixels)](self.params, pixels))
        return time.perf_counter() - t


def ort_note(args, modes) -> str | None:
    """None if the onnxruntime rows run, else why not."""
    if args.no_ort:
        return "--no-ort"
    if "infer" not in modes:
        return "not with --modes train"
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        return "onnx/onnxruntime not installed (pip install -e '.[deploy]')"
    del onnxruntime
    return None


def time_ort(variant, js, args, pixels, batches) -> list[dict]:
    side = OrtSide(js.model, js.params, cores())
    rows = []
    for b in batches:
        x = pixels[:b]
        side.compile(x)
        for _ in range(args.warmup):
            side.step("jax", x)
            side.step("ort", x)
        times = {"jax": [], "ort": []}
        for r in range(args.steps):
            for who in ("jax", "ort") if r % 2 == 0 else ("ort", "jax"):
                times[who].append(side.step(who, x))
        row = dict(
            variant=variant,
            batch=b,
            jax=b / statistics.median(times["jax"]),
            ort=b / statistics.median(times["ort"]),
            jax_compile=side.compile_s[b],
            ort_load=side.load_s,
            jax_ms=[round(t * 1e3) for t in times["jax"]],
            ort_ms=[round(t * 1e3) for t in times["ort"]],
        )
        print(
            f"{variant} infer batch {b}: fcn_jax ms {row['jax_ms']}  onnxruntime ms {row['ort_ms']}",
            flush=True,
        )
        rows.append(row)
    return rows


# -- peak -------------------------------------------------------------------------


def measured_peak(backend: str) -> tuple[float, str]:
    """FLOP/s of a large matmul: an estimate of what the machine can do."""
    import jax
    import jax.numpy as jnp

    n, dtype = (8192, jnp.bfloat16) if backend == "gpu" else (3072, jnp.float32)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(5 if backend == "gpu" else 3):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best, f"{n}x{n} {jnp.dtype(dtype).name} matmul"


# -- main ---------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    backend = jax.default_backend()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    dev, torch_note = torch_device(backend, args.no_torch)
    print(
        f"jax {jax.__version__} on {backend} ({jax.devices()[0].device_kind}), {cores()} cores; "
        f"PyTorch: {torch_note}; FCN-{args.backbone}, {args.height}x{args.width}, batch {args.batch_size}, "
        f"{args.dtype}, "
        f"{args.num_classes} classes, {args.impl} ops; "
        f"{args.steps} alternating rounds after {args.warmup} warm-up"
    )
    load0 = os.getloadavg()
    peak, peak_how = measured_peak(backend)
    print(f"measured peak (estimate): {peak / 1e9:.1f} GFLOP/s from a {peak_how}")

    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch_size, args.height, args.width, 3)).astype(np.float32)
    labels = rng.integers(0, args.num_classes, size=(args.batch_size, args.height, args.width)).astype(
        np.int32
    )
    labels[:, :8] = IGNORE
    no_ort = ort_note(args, modes)
    ort_batches = [int(b) for b in args.ort_batches.split(",") if b.strip()]
    # uint8 pixels: what the ONNX model takes; both runtimes get this same batch.
    pixels = rng.integers(0, 256, size=(max(ort_batches), args.height, args.width, 3), dtype=np.uint8)
    if no_ort is None:
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__}, CPU provider, {cores()} intra-op threads")
    else:
        print(f"onnxruntime rows skipped: {no_ort}")

    rows, ort_rows = [], []
    for variant in variants:
        js = JaxSide(variant, args, images, labels)
        ts = TorchSide(variant, args, images, labels, js.params, dev) if dev else None
        for mode in modes:
            for _ in range(args.warmup):
                js.step(mode)
                if ts:
                    ts.step(mode)
            times = {"jax": [], "torch": []}
            for r in range(args.steps):
                order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
                for who in order:
                    side = js if who == "jax" else ts
                    if side is not None:
                        times[who].append(side.step(mode))
            jt = statistics.median(times["jax"])
            tt = statistics.median(times["torch"]) if times["torch"] else float("nan")
            flops = js.flops(mode)
            row = dict(
                variant=variant,
                mode=mode,
                jax=args.batch_size / jt,
                torch=args.batch_size / tt,
                compile=js.compile_s[mode],
                gflop_img=flops / args.batch_size / 1e9,
                model_gflop_img=js.model_flops[mode] / args.batch_size / 1e9,
                achieved=flops / jt,
                model_rate=js.model_flops[mode] / jt,
                xla_mb=js.memory_mb(mode),
                jax_ms=[round(t * 1e3) for t in times["jax"]],
                torch_ms=[round(t * 1e3) for t in times["torch"]],
            )
            rows.append(row)
            print(f"{variant} {mode}: fcn_jax ms {row['jax_ms']}  torch ms {row['torch_ms']}", flush=True)
        if no_ort is None:
            ort_rows += time_ort(variant, js, args, pixels, ort_batches)
        del js, ts

    stats = jax.devices()[0].memory_stats() or {}
    peak_dev = stats.get("peak_bytes_in_use")
    print()
    print("model GFLOP: the direct formulation's work (what PyTorch executes); executed: after Winograd etc.")
    print(
        "| variant | mode | fcn_jax img/s | PyTorch img/s | ratio | compile s | model GFLOP/img "
        "| executed GFLOP/img "
        "| executed GFLOP/s | % of measured peak | model GFLOP/s"
        + (" | bf16 MFU" if backend == "gpu" else "")
        + " | XLA MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---" + ("|---" if backend == "gpu" else "") + "|---|")
    for r in rows:
        ratio = r["jax"] / r["torch"] if r["torch"] == r["torch"] else float("nan")
        mfu = f" | {100 * r['model_rate'] / (args.peak_tflops * 1e12):.1f}%" if backend == "gpu" else ""
        print(
            f"| {r['variant']} | {r['mode']} | {r['jax']:.2f} | {r['torch']:.2f} | {ratio:.2f}x "
            f"| {r['compile']:.1f} | {r['model_gflop_img']:.1f} | {r['gflop_img']:.1f} "
            f"| {r['achieved'] / 1e9:.1f} | {100 * r['achieved'] / peak:.0f}% "
            f"| {r['model_rate'] / 1e9:.1f}{mfu} | {r['xla_mb']:.0f} |"
        )
    if ort_rows:
        print()
        print(
            f"Inference on the same uint8 batch ({args.height}x{args.width}, normalisation inside, "
            f"labels out): fcn_jax ({args.impl} ops) vs the ONNX export in onnxruntime"
        )
        print(
            "| variant | batch | fcn_jax img/s | onnxruntime img/s | fcn_jax / onnxruntime "
            "| compile s | ORT load s |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in ort_rows:
            print(
                f"| {r['variant']} | {r['batch']} | {r['jax']:.2f} | {r['ort']:.2f} "
                f"| {r['jax'] / r['ort']:.2f}x | {r['jax_compile']:.1f} | {r['ort_load']:.1f} |"
            )
    load1 = os.getloadavg()
    print(
        f"1-min load average at start / end: {load0[0]:.1f} / {load1[0]:.1f} "
        f"(on {cores()} cores; >0.5 means other work shared the machine)"
    )
    print(
        f"process RSS high-water mark (both frameworks): {rss_mb():.0f} MiB"
        + (f"; jax device peak_bytes_in_use {peak_dev / 2**20:.0f} MiB" if peak_dev else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
