"""One prepared GPU benchmark session for fcn_jax: every number a lent GPU should bring back.

    python benchmarks/gpu_perf.py                          # on the GPU machine: results in $OUT
    python benchmarks/gpu_perf.py --smoke --camvid DIR     # on a CPU, tiny sizes, a few minutes
    python benchmarks/gpu_perf.py --stages matmul,step     # a subset (kinds or stage names)

Why one script: a lent GPU machine (an NVIDIA H200, no network) comes with minutes of
device time, and a crash, an out-of-memory batch or a hang must not cost the numbers of
the other stages. So every stage runs in its own process under its own deadline; a
stage that fails is recorded as {"status": "error", "error": ...}, one that runs out of
time as "timeout", and the script goes on. results.json (in --out) is rewritten
atomically after every stage, so whatever stops the session, what was measured is on
disk. The whole run keeps inside --budget seconds (default 500: with the last stage's
shutdown grace, under the 9 minutes one device command may take): a stage only starts
if the stages after it keep their minimum time. The parent process never touches the
GPU (the first JAX process on a GPU takes 75 % of its memory); at the end it prints one
markdown table (stage | what | value) and the card's name.

Stages, in order (GPU sizes; --smoke: 64x96 images, batch 2 (and 1 in float32), 2-3 steps, a 256^3
matmul, FCN-32s for 2 steps, and float32 wherever the GPU runs bf16: XLA:CPU compiles a
bf16 FCN 2-3x slower and runs it slower still, and the smoke run checks the plumbing):
  matmul       practical peak: TFLOP/s of an 8192^3 bf16 matmul, 20 chained products per
               round, one sync per round, median of rounds, on random data (zeros run
               faster on an H200).
  step_*       FCN-8s train step, bf16 at batch 16, 32, 64 and float32 at 16: images/s of
               chained steps (one sync per round of 20, median round), lower and compile
               time, memory (device peak_bytes_in_use, a fresh process per stage so the
               peak is this program's; XLA's compiled.memory_analysis()), model FLOPs (XLA's
               cost analysis of the same step with ops.OpSet.reference(), lowered only,
               as benchmarks/throughput.py counts them) and MFU against --peak-tflops
               (989: H100/H200 dense bf16) and against the measured matmul. The step is
               the training loop's: the CamVid recipe's optimizer (AdamW, clipping), class
               weights, uint8 images normalised on the device; score layers non-zero so
               every gradient is real work. float32 MFU is against the same bf16 peaks.
               On a CPU every model here uses XLA's convolutions (ops.conv="xla"): the
               program a GPU runs (Winograd is CPU-only, and doubles a CPU compile).
  step_vgg16_* the same for FCN-VGG16-8s at the ladder's first batch size.
  infer_*      bf16 FCN-8s inference, jitted model.apply + argmax at 360x480, batch 16.
  prepare      CamVid from --camvid prepared into the work directory (or --data as is).
  loop_device  fcn_jax.train.train_and_evaluate, FCN-8s bf16, batch 16, 360x480 crops,
  loop_grain   eval off, with config.data.device_cache "on" (device-resident input) and
               "off" (grain, host): images/s and host_us_per_step from metrics.jsonl (the
               first log interval, which compiles, skipped), and the loop/step ratio
               against step_bf16_b16 (goal >= 90 %). "unavailable" where the config has
               no data.device_cache key.
  profile      5 chained train steps under jax.profiler.trace, as profile_trace.tar.gz
               (without the Perfetto copy if needed; dropped, size recorded, over 16 MB).
  fcn32s       only if time remains: FCN-32s bf16 trained with experiments/camvid_fcn32s.py
               (its steps), then val mIoU.

On the lent machine (no network; its image has JAX with CUDA but not tfds, grain,
ml_collections or tensorboardX: carry them as wheels in .whl/, and CamVid in .gdata/, as
experiments/gpu_session.sh does; results.json's env.packages shows what was found):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 benchmarks/gpu_perf.py --camvid .gdata/camvid

Files in --out (at most 8 come back from a lent machine): results.json, gpu_perf.log
(every stage's output), profile_trace.tar.gz, runs.tar.gz (the loop runs' records and
metrics.jsonl; no checkpoints). Scratch (runs, prepared data, compile cache) lives in
--work, a temporary directory by default. A fresh JAX compilation cache in --work is
shared by the stages (cold for every stage-2 program; the profile stage reuses one).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fcn_jax.fsutil import atomic_output, atomic_write_json  # noqa: E402  (stdlib only)

NUM_CLASSES, IGNORE = 11, 11  # CamVid: 11 classes, label 11 is void
SHORT = {"bfloat16": "bf16", "float32": "f32"}
TRACE_LIMIT = 16 * 2**20  # the largest file a lent machine sends back
FCN8S_CONFIG = ROOT / "experiments" / "camvid_fcn8s.py"
FCN32S_CONFIG = ROOT / "experiments" / "camvid_fcn32s.py"
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "array-record",
    "grain",
    "ml-collections",
    "tensorboardX",
    "numpy",
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes: the GPU session's, or --smoke's (same code, tiny, float32)."""

    height: int
    width: int
    matmul_n: int
    matmul_dtype: str
    matmul_per_round: int
    dtype: str  # of the models timed and trained: bfloat16 on the GPU
    batches: tuple[int, ...]  # the train-step ladder in `dtype`
    f32_batch: int  # one more train step in float32
    infer_batch: int
    warmup: int  # steps after compilation, before timing
    rounds: int  # timed rounds; the median counts
    per_round: int  # chained steps per round, one sync at its end
    loop_batch: int
    loop_steps: int
    loop_log_every: int
    profile_steps: int
    fcn32s_steps: int | None  # None: the recipe's
    fcn32s_batch: int | None  # None: the recipe's


GPU = Sizes(
    height=360,
    width=480,
    matmul_n=8192,
    matmul_dtype="bfloat16",
    matmul_per_round=20,
    dtype="bfloat16",
    batches=(16, 32, 64),
    f32_batch=16,
    infer_batch=16,
    warmup=3,
    rounds=5,
    per_round=20,
    loop_batch=16,
    loop_steps=600,
    loop_log_every=50,
    profile_steps=5,
    fcn32s_steps=None,
    fcn32s_batch=None,
)
SMOKE = Sizes(
    height=64,
    width=96,
    matmul_n=256,
    matmul_dtype="float32",
    matmul_per_round=4,
    dtype="float32",
    batches=(2,),  # one rung of the ladder: each stage is a CPU compile
    f32_batch=1,
    infer_batch=2,
    warmup=1,
    rounds=1,
    per_round=2,
    loop_batch=2,
    loop_steps=3,
    loop_log_every=1,
    profile_steps=5,
    fcn32s_steps=2,
    fcn32s_batch=2,
)


@dataclasses.dataclass
class Stage:
    name: str
    kind: str  # matmul | step | infer | prepare | loop | profile | fcn32s
    params: dict
    deadline: float  # seconds this stage may take, process start included
    min_s: float  # below this much time it is not started; later stages keep this for themselves
    optional: bool = False  # runs only on time left over; keeps nothing back from earlier stages


def plan(sizes: Sizes, smoke: bool) -> list[Stage]:
    """Every stage in order, with deadlines sized for an H200 (generous ones for --smoke)."""

    def d(gpu_s: float, smoke_s: float) -> float:
        return smoke_s if smoke else gpu_s

    stages = [Stage("matmul", "matmul", {}, d(60, 120), d(20, 10))]
    dt = SHORT[sizes.dtype]
    for i, b in enumerate(sizes.batches):
        # The first GPU compile also fills cuDNN/cuBLAS autotuning: a little more time.
        params = {"dtype": sizes.dtype, "batch": b}
        stages.append(Stage(f"step_{dt}_b{b}", "step", params, d(100 if i == 0 else 80, 240), d(40, 10)))
    b = sizes.f32_batch
    stages.append(Stage(f"step_f32_b{b}", "step", {"dtype": "float32", "batch": b}, d(80, 240), d(40, 10)))
    b = sizes.batches[0]  # FCN-VGG16-8s (13x the FLOPs of AlexNet's per image) at the first rung
    params = {"dtype": sizes.dtype, "batch": b, "backbone": "vgg16"}
    stages.append(Stage(f"step_vgg16_{dt}_b{b}", "step", params, d(90, 240), d(40, 10)))
    b = sizes.infer_batch
    params = {"dtype": sizes.dtype, "batch": b}
    stages.append(Stage(f"infer_{dt}_b{b}", "infer", params, d(60, 240), d(25, 10)))
    stages.append(Stage("prepare", "prepare", {}, d(90, 180), d(20, 10)))
    stages.append(Stage("loop_device", "loop", {"path": "device"}, d(120, 240), d(45, 10)))
    stages.append(Stage("loop_grain", "loop", {"path": "grain"}, d(150, 240), d(45, 10)))
    stages.append(Stage("profile", "profile", {}, d(90, 240), d(30, 10)))
    stages.append(Stage("fcn32s", "fcn32s", {}, d(10**6, 420), d(90, 20), optional=True))
    return stages


def select(stages: list[Stage], wanted: str | None) -> list[Stage]:
    """--stages: kinds (step) or names (step_bf16_b16); loop and fcn32s bring prepare along."""
    if not wanted:
        return stages
    keys = {w.strip() for w in wanted.split(",") if w.strip()}
    known = {s.kind for s in stages} | {s.name for s in stages}
    unknown = sorted(keys - known)
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    chosen = [s for s in stages if s.kind in keys or s.name in keys]
    if any(s.kind in ("loop", "fcn32s") for s in chosen):
        keys.add("prepare")
        chosen = [s for s in stages if s.kind in keys or s.name in keys]
    return chosen


# -- small helpers (both processes) --------------------------------------------------


def _clean(x):
    """JSON-safe: non-finite floats become None (results.json is written with allow_nan=False)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "shape", None) == ():  # numpy / jax scalars
        return _clean(x.item())
    return x


def _write(path: Path, obj: dict) -> None:
    atomic_write_json(path, _clean(obj), sort_keys=False)  # stages stay in the order they ran


def _median(xs):
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def _ok_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- child process: one stage ----------------------------------------------------------


class StageTimeout(Exception):
    """SIGTERM from the parent (deadline) or from the stage's own timer, outside a training loop."""


def _on_sigterm(signum, frame):
    raise StageTimeout("stopped by SIGTERM: the stage's deadline")


def _device_info() -> dict:
    import jax

    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax_version": jax.__version__,
    }


def _flops(lowered_or_compiled) -> float | None:
    """XLA's cost-analysis FLOPs (as benchmarks/throughput.py's _flops)."""
    cost = lowered_or_compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    value = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return value if math.isfinite(value) and value > 0 else None


def _xla_memory(compiled) -> dict | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    d = {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}
    d["total_bytes"] = (
        d.get("argument_size_in_bytes", 0)
        + d.get("output_size_in_bytes", 0)
        + d.get("temp_size_in_bytes", 0)
        - d.get("alias_size_in_bytes", 0)
    )
    return d


def _device_memory() -> dict | None:
    """memory_stats() of the device (None on CPU): peak_bytes_in_use is the process's peak."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size", "num_allocs")
    return {k: int(stats[k]) for k in keys if k in stats}


def _measure(result: dict, key: str, fn) -> None:
    """result[key] = fn(), or result[key + "_error"]: a backend without (say) memory analysis
    must not cost the stage its timing."""
    try:
        result[key] = fn()
    except Exception as e:  # recorded; the stage goes on
        traceback.print_exc()
        result[key], result[f"{key}_error"] = None, f"{type(e).__name__}: {e}"[:500]


def _time_rounds(run_round, rounds: int, deadline: float) -> list[float]:
    """Seconds per round; stops early (after at least one) when the stage's deadline nears."""
    times = []
    for _ in range(rounds):
        if times and time.time() > deadline:
            break
        t = time.perf_counter()
        run_round()
        times.append(time.perf_counter() - t)
    return times


def _host_params(model, seed: int) -> dict:
    """Initial parameters on the host, score layers made non-zero (they start at zero, which
    would make every gradient behind them zero: cheaper than real work on some GPUs). On the
    host so that nothing aliases a train state the step donates."""
    import jax
    import numpy as np

    from fcn_jax.models import init_params

    params = jax.tree.map(np.asarray, init_params(model, jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed + 1)
    for name, layer in params.items():
        if name.startswith("score_"):
            k = layer["kernel"]
            params[name] = {**layer, "kernel": (1e-3 * rng.standard_normal(k.shape)).astype(k.dtype)}
    return params


def _gpu_program(cfg) -> None:
    """On a CPU, XLA's convolutions (ops.conv="xla"): the program a GPU runs. Winograd is
    CPU-float32-only and doubles a CPU compile."""
    import jax

    if jax.default_backend() == "cpu":
        cfg.model.ops.conv = "xla"


class TrainBench:
    """The training loop's FCN-8s step on one fixed device-resident batch.

    Same program as the loop runs for experiments/camvid_fcn8s.py:atonce (AdamW, clipping,
    class weights, uint8 images normalised on the device), only the data differ: random
    uint8 images and labels (void included), so it times the step, not the input.
    """

    def __init__(
        self, dtype: str, batch: int, height: int, width: int, seed: int = 0, backbone: str = "alexnet"
    ):
        import jax
        import numpy as np
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from fcn_jax import training
        from fcn_jax.config import load_config
        from fcn_jax.models import ModelSpec

        self.jax = jax
        cfg = load_config(f"{FCN8S_CONFIG}:atonce")
        cfg.model.dtype = dtype
        cfg.model.backbone = backbone
        _gpu_program(cfg)
        self.optimizer = cfg.optimizer.name
        self.model = ModelSpec.from_config(cfg.model, NUM_CLASSES).build()
        self.tx, _ = training.make_optimizer(cfg.optimizer, decay_steps=int(cfg.train.steps))
        self.weights = np.ones(NUM_CLASSES, np.float32)  # the loop's median-frequency weights: same work
        self.mesh = training.data_mesh(jax.devices()[:1])
        self.train, _ = training.compile_steps(self.mesh, self.model, self.tx, IGNORE, self.weights)
        replicated = NamedSharding(self.mesh, P())
        batched = NamedSharding(self.mesh, P(training.DATA_AXIS))
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, NUM_CLASSES + 1, (batch, height, width)).astype(np.int32)
        self.host_params = _host_params(self.model, seed)
        state = training.init_state(self.model, self.tx, jax.random.PRNGKey(seed), params=self.host_params)
        self.state = jax.device_put(state, replicated)
        self.batch = jax.device_put({"image": images, "label": labels}, batched)
        self.replicated, self.batched = replicated, batched
        self.compiled = None

    def compile(self) -> dict:
        t = time.perf_counter()
        lowered = self.train.lower(self.state, self.batch)
        lower_s = time.perf_counter() - t
        t = time.perf_counter()
        self.compiled = lowered.compile()
        return {"lower_s": lower_s, "compile_s": time.perf_counter() - t}

    def model_flops(self) -> float | None:
        """The straightforward formulation's FLOPs (OpSet.reference(), lowered, not compiled):
        what the network needs, whatever algorithm XLA picks."""
        from fcn_jax import training
        from fcn_jax.ops import OpSet

        reference = self.model.clone(ops=OpSet.reference())
        ref_train, _ = training.compile_steps(self.mesh, reference, self.tx, IGNORE, self.weights)
        return _flops(ref_train.lower(self.state, self.batch))

    def steps(self, n: int):
        """n chained steps (the state flows from one to the next), one sync at the end."""
        metrics = None
        for _ in range(n):
            self.state, metrics = self.compiled(self.state, self.batch)
        self.jax.block_until_ready((self.state, metrics))
        return metrics


def stage_matmul(spec: dict, result: dict, save) -> None:
    import jax
    import jax.numpy as jnp

    result["device"] = _device_info()
    s = spec["sizes"]
    n, dtype, k = s["matmul_n"], jnp.dtype(s["matmul_dtype"]), s["matmul_per_round"]
    kx, kb = jax.random.split(jax.random.PRNGKey(0))
    # Random data (an H200 ran a bf16 product 13 % faster on zeros); b scaled by 1/sqrt(n)
    # keeps the chained product's magnitude constant, so nothing overflows.
    x = jax.random.normal(kx, (n, n), dtype)
    b = (jax.random.normal(kb, (n, n), jnp.float32) / math.sqrt(n)).astype(dtype)
    f = jax.jit(lambda x, b: x @ b).lower(x, b).compile()
    result.update(n=n, dtype=dtype.name, per_round=k)
    holder = [x]

    def run_round(count=k):
        y = holder[0]
        for _ in range(count):
            y = f(y, b)
        jax.block_until_ready(y)
        holder[0] = y

    run_round(3)  # warm-up
    times = _time_rounds(run_round, spec["sizes"]["rounds"] * 2, spec["deadline"])
    flop = 2.0 * n**3 * k
    result.update(
        round_ms=[1e3 * t for t in times],
        flops_per_s=flop / statistics.median(times),
        best_flops_per_s=flop / min(times),
        finite=bool(jnp.isfinite(holder[0]).all()),
    )
    result["tflops"] = result["flops_per_s"] / 1e12
    if not result["finite"]:
        raise RuntimeError("the chained matmul went non-finite")


def stage_step(spec: dict, result: dict, save) -> None:
    result["device"] = _device_info()
    s, p = spec["sizes"], spec["stage"]["params"]
    backbone = p.get("backbone", "alexnet")
    bench = TrainBench(p["dtype"], p["batch"], s["height"], s["width"], backbone=backbone)
    result.update(variant="8s", backbone=backbone, dtype=p["dtype"], batch=p["batch"])
    result.update(height=s["height"], width=s["width"])
    result["optimizer"] = bench.optimizer
    # None: XLA's default (on NVIDIA GPUs float32 dots may run as TF32).
    result["default_matmul_precision"] = bench.jax.config.jax_default_matmul_precision
    result.update(bench.compile())
    _measure(result, "xla_memory", lambda: _xla_memory(bench.compiled))
    _measure(result, "executed_flops_per_step", lambda: _flops(bench.compiled))
    save()
    _measure(result, "model_flops_per_step", bench.model_flops)
    save()
    metrics = bench.steps(s["warmup"])
    times = _time_rounds(lambda: bench.steps(s["per_round"]), s["rounds"], spec["deadline"])
    loss = float(metrics["loss"])
    step_s = statistics.median(times) / s["per_round"]
    result.update(
        rounds=len(times),
        per_round=s["per_round"],
        round_ms=[1e3 * t for t in times],
        step_ms=1e3 * step_s,
        images_per_s=p["batch"] / step_s,
        warmup_loss=loss,
    )
    _measure(result, "device_memory", _device_memory)
    if result["model_flops_per_step"]:
        result["model_flops_per_s"] = result["model_flops_per_step"] / step_s
    if result["executed_flops_per_step"]:
        result["executed_flops_per_s"] = result["executed_flops_per_step"] / step_s
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss} after the warm-up steps")


def stage_infer(spec: dict, result: dict, save) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from fcn_jax import training
    from fcn_jax.config import load_config
    from fcn_jax.models import ModelSpec
    from fcn_jax.ops import OpSet

    result["device"] = _device_info()
    s, p = spec["sizes"], spec["stage"]["params"]
    cfg = load_config(f"{FCN8S_CONFIG}:atonce")
    cfg.model.dtype = p["dtype"]
    _gpu_program(cfg)
    model = ModelSpec.from_config(cfg.model, NUM_CLASSES).build()
    mesh = training.data_mesh(jax.devices()[:1])
    params = jax.device_put(_host_params(model, 0), NamedSharding(mesh, P()))
    images = np.random.default_rng(0).standard_normal((p["batch"], s["height"], s["width"], 3), np.float32)
    images = jax.device_put(images, NamedSharding(mesh, P(training.DATA_AXIS)))

    def predict(m):
        return jax.jit(lambda params, x: jnp.argmax(m.apply({"params": params}, x), axis=-1))

    result.update(variant="8s", dtype=p["dtype"], batch=p["batch"], height=s["height"], width=s["width"])
    t = time.perf_counter()
    compiled = predict(model).lower(params, images).compile()
    result["compile_s"] = time.perf_counter() - t
    _measure(result, "xla_memory", lambda: _xla_memory(compiled))
    reference = predict(model.clone(ops=OpSet.reference()))
    _measure(result, "model_flops_per_batch", lambda: _flops(reference.lower(params, images)))
    save()

    def run_round(count=s["per_round"]):
        outs = [compiled(params, images) for _ in range(count)]
        jax.block_until_ready(outs)

    run_round(s["warmup"])
    times = _time_rounds(run_round, s["rounds"], spec["deadline"])
    batch_s = statistics.median(times) / s["per_round"]
    result.update(
        rounds=len(times),
        round_ms=[1e3 * t for t in times],
        batch_ms=1e3 * batch_s,
        images_per_s=p["batch"] / batch_s,
    )
    _measure(result, "device_memory", _device_memory)
    if result["model_flops_per_batch"]:
        result["model_flops_per_s"] = result["model_flops_per_batch"] / batch_s


def stage_prepare(spec: dict, result: dict, save) -> None:
    from fcn_jax import data

    t = time.perf_counter()
    if spec.get("data"):
        data_dir = data.resolve_dataset_dir(spec["data"])
        result["prepared_here"] = False
    else:
        source = spec.get("camvid") or None
        data_dir = data.prepare_camvid(source, Path(spec["work"]) / "data", progress=False)
        result["prepared_here"] = True
        result["source"] = str(source) if source else "fcn_jax's default CamVid folder"
    meta = data.load_meta(data_dir)
    result.update(
        seconds=time.perf_counter() - t,
        data_dir=str(data_dir),
        splits=dict(meta.splits),
        num_classes=meta.num_classes,
    )


def _loop_records(metrics_file: Path) -> dict:
    """Steady-state rates of a run: its train records after the first (which compiles)."""
    from fcn_jax.report import read_metrics

    records = read_metrics(metrics_file)
    train = sorted((r for r in records if r["split"] == "train"), key=lambda r: r["step"])
    steady = train[1:]
    ips = [r["images_per_s"] for r in steady if _ok_number(r.get("images_per_s"))]
    host = [r["host_us_per_step"] for r in steady if _ok_number(r.get("host_us_per_step"))]
    out = {
        "log_records": len(train),
        "steady_records": len(steady),
        "images_per_s_per_interval": [r.get("images_per_s") for r in train],
        "images_per_s": _median(ips),
        "images_per_s_mean": statistics.fmean(ips) if ips else None,
        "last_step": train[-1]["step"] if train else 0,
        "last_loss": train[-1].get("loss") if train else None,
        "host_us_per_step": _median(host),
    }
    if not any("host_us_per_step" in r for r in train):
        out["host_us_note"] = (
            "metrics.jsonl has no host_us_per_step: this version of the loop does not log it"
        )
    return out


def _train(cfg, workdir: Path, deadline: float, result: dict) -> dict | None:
    """train_and_evaluate until its steps are done or the deadline, when a SIGTERM makes the
    loop save and stop (its own handler); returns the last eval metrics, None if stopped."""
    from fcn_jax import train as train_lib

    timer = threading.Timer(max(deadline - time.time(), 0.5), os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    t = time.perf_counter()
    try:
        summary = train_lib.train_and_evaluate(cfg, workdir)
        result["stopped_by"] = "steps"
    except train_lib.Interrupted as e:
        summary = None
        result["stopped_by"] = f"time budget (SIGTERM after step {e.step})"
        result["stopped_at_step"] = e.step
    finally:
        timer.cancel()
        result["train_wall_s"] = time.perf_counter() - t
    return summary


def _loop_config(spec: dict, config_spec: str):
    from fcn_jax.config import load_config

    cfg = load_config(config_spec)
    cfg.model.dtype = spec["sizes"]["dtype"]
    _gpu_program(cfg)
    cfg.data.data_dir = spec["data_dir"]
    cfg.train.num_pictures = 0  # pictures cost a compile and are no measurement
    return cfg


def stage_loop(spec: dict, result: dict, save) -> None:
    s, path = spec["sizes"], spec["stage"]["params"]["path"]
    cfg = _loop_config(spec, f"{FCN8S_CONFIG}:atonce")
    has_key = "device_cache" in cfg.data
    result.update(path=path, device_cache_key=has_key)
    if path == "device" and not has_key:
        result["status"] = "unavailable"
        result["reason"] = "config.data has no device_cache key in this version of fcn_jax"
        return
    if has_key:
        cfg.data.device_cache = "on" if path == "device" else "off"
    cfg.data.crop_size = (s["height"], s["width"])
    cfg.data.eval_split = ""
    cfg.train.batch_size = s["loop_batch"]
    cfg.train.steps = s["loop_steps"]
    cfg.train.log_every = s["loop_log_every"]
    cfg.train.checkpoint_every = s["loop_steps"]  # one save, after the last log: not timed
    cfg.train.eval_every = 0
    result.update(
        config="experiments/camvid_fcn8s.py:atonce",
        dtype=cfg.model.dtype,
        batch=s["loop_batch"],
        crop=[s["height"], s["width"]],
        steps=s["loop_steps"],
        log_every=s["loop_log_every"],
    )
    result["device"] = _device_info()
    workdir = Path(spec["work"]) / "runs" / f"loop_{path}"
    save()
    _train(cfg, workdir, spec["deadline"], result)
    result.update(_loop_records(workdir / "metrics.jsonl"))
    if not result["images_per_s"]:
        result["status"] = "timeout" if result["stopped_by"] != "steps" else "error"
        result["error"] = (
            f"no steady-state rate: {result['log_records']} train log record(s), the first of which "
            "includes compilation"
        )


def stage_fcn32s(spec: dict, result: dict, save) -> None:
    s = spec["sizes"]
    cfg = _loop_config(spec, str(FCN32S_CONFIG))
    if s["fcn32s_steps"]:
        cfg.train.steps = s["fcn32s_steps"]
        cfg.train.log_every = 1
    if s["fcn32s_batch"]:
        cfg.train.batch_size = s["fcn32s_batch"]
        cfg.train.eval_batch_size = s["fcn32s_batch"]
    if spec["smoke"]:
        cfg.data.crop_size = (s["height"], s["width"])
    # Only the final evaluation: the recipe's intermediate ones and its checkpoints cost time
    # and change nothing about the trained weights.
    cfg.train.eval_every = 0
    cfg.train.checkpoint_every = cfg.train.steps
    cfg.data.eval_split = "val"
    result.update(
        config="experiments/camvid_fcn32s.py",
        dtype=cfg.model.dtype,
        steps=cfg.train.steps,
        batch=cfg.train.batch_size,
        crop=list(cfg.data.crop_size),
    )
    result["device"] = _device_info()
    workdir = Path(spec["work"]) / "runs" / "fcn32s"
    save()
    summary = _train(cfg, workdir, spec["deadline"] - spec["eval_reserve_s"], result)
    rec = _loop_records(workdir / "metrics.jsonl")
    result.update(images_per_s=rec["images_per_s"], last_step=rec["last_step"], last_loss=rec["last_loss"])
    if summary is None:  # stopped by the time budget: evaluate what was saved
        result["status"] = "timeout"
        result["error"] = (
            f"stopped at step {result['stopped_at_step']} of {cfg.train.steps} by the time budget"
        )
        save()
        from fcn_jax import evaluate
        from fcn_jax import run as run_lib

        trained = run_lib.load_trained(workdir)
        summary = evaluate.evaluate(
            trained.model, trained.params, spec["data_dir"], "val", cfg.train.eval_batch_size, progress=False
        ).to_dict()
        result["evaluated_step"] = trained.step
    result.update(
        val_miou=summary.get("miou"),
        val_pixel_accuracy=summary.get("pixel_accuracy"),
        val_mean_class_accuracy=summary.get("mean_class_accuracy"),
        val_per_class_iou=summary.get("per_class_iou"),
    )


def stage_profile(spec: dict, result: dict, save) -> None:
    import jax

    result["device"] = _device_info()
    s = spec["sizes"]
    bench = TrainBench(s["dtype"], s["loop_batch"], s["height"], s["width"])
    result.update(variant="8s", dtype=s["dtype"], batch=s["loop_batch"], steps=s["profile_steps"])
    result.update(bench.compile())  # from the compilation cache: step_bf16_b16 compiled it
    bench.steps(2)
    trace_dir = Path(spec["work"]) / "profile"
    t = time.perf_counter()
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        bench.steps(s["profile_steps"])
    result["traced_ms_per_step"] = 1e3 * (time.perf_counter() - t) / s["profile_steps"]
    files = sorted(p for p in trace_dir.rglob("*") if p.is_file())
    result["trace_files"] = {str(p.relative_to(trace_dir)): p.stat().st_size for p in files}
    archive = Path(spec["out"]) / "profile_trace.tar.gz"
    # Everything, then without the Perfetto copy (the .xplane.pb holds the same trace).
    for keep in (files, [p for p in files if "perfetto" not in p.name]):
        with atomic_output(archive) as tmp:
            with tarfile.open(tmp, "w:gz") as tar:
                for p in keep:
                    tar.add(p, arcname=str(Path("profile") / p.relative_to(trace_dir)))
        size = archive.stat().st_size
        result.update(archive=archive.name, archive_bytes=size, archive_files=len(keep))
        if size <= TRACE_LIMIT:
            return
    archive.unlink()
    result.update(archive=None, dropped_archive_bytes=size, note=f"archive over {TRACE_LIMIT} bytes: dropped")


CHILD_STAGES = {
    "matmul": stage_matmul,
    "step": stage_step,
    "infer": stage_infer,
    "prepare": stage_prepare,
    "loop": stage_loop,
    "fcn32s": stage_fcn32s,
    "profile": stage_profile,
}


def child_main(spec_path: Path) -> int:
    """Run one stage; its result file is rewritten as it goes, so a killed stage leaves its
    partial numbers (compile time before the timing, say)."""
    spec = json.loads(spec_path.read_text())
    result: dict = {"status": "running", "kind": spec["stage"]["kind"]}
    path = Path(spec["result"])

    def save() -> None:
        _write(path, result)

    signal.signal(signal.SIGTERM, _on_sigterm)
    save()
    print(f"== stage {spec['stage']['name']} (pid {os.getpid()})", flush=True)
    try:
        CHILD_STAGES[spec["stage"]["kind"]](spec, result, save)
        if result["status"] == "running":
            result["status"] = "ok"
    except StageTimeout as e:
        result.update(status="timeout", error=str(e))
    except BaseException as e:  # every failure is recorded, then reported
        traceback.print_exc()
        result.update(status="error", error=f"{type(e).__name__}: {e}"[:3000])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        save()
    print(f"== stage {spec['stage']['name']}: {result['status']}", flush=True)
    return 0


# -- parent: the session ---------------------------------------------------------------


def _package_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _nvidia_smi() -> str | None:
    """The card's state as read-only nvidia-smi reports it (clocks, power, temperature)."""
    query = "name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu"
    try:
        r = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


def _environment() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": cores,
        "load_average_start": list(os.getloadavg()),
        "jax_version": _package_versions().get("jax"),
        "packages": _package_versions(),
        "nvidia_smi_start": _nvidia_smi(),
        "device_kind": None,  # from the first stage that starts JAX
        "device_count": None,
        "platform": None,
    }


def _kill(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the stage's process group (a training loop saves and stops), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, start: int, chars: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(start, path.stat().st_size - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class Session:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.smoke
        self.sizes = SMOKE if args.smoke else GPU
        self.t0 = time.monotonic()
        self.budget = float(args.budget if args.budget else (900 if args.smoke else 500))
        self.out = Path(args.out or os.environ.get("OUT") or "gpu_perf_out").absolute()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).absolute() if args.work else Path(tempfile.mkdtemp(prefix="gpu_perf_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "gpu_perf.log"
        self.results_path = self.out / "results.json"
        self.data_dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.results = {
            "script": "benchmarks/gpu_perf.py",
            "argv": sys.argv[1:],
            "smoke": self.smoke,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "budget_s": self.budget,
            "peak_tflops_nominal": args.peak_tflops,
            "sizes": dataclasses.asdict(self.sizes),
            "work_dir": str(self.work),
            "compile_cache": not args.no_compile_cache,
            "env": _environment(),
            "stages": {},
        }
        self.write()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def write(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        _write(self.results_path, self.results)

    def child_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if not self.args.no_compile_cache:
            env["JAX_COMPILATION_CACHE_DIR"] = str(self.work / "jax_cache")
        return env

    def run_stage(self, stage: Stage, timeout: float) -> dict:
        grace = 10.0 if self.smoke else 20.0
        spec_path = self.work / f"{stage.name}.spec.json"
        result_path = self.work / f"{stage.name}.result.json"
        result_path.unlink(missing_ok=True)
        spec = {
            "stage": dataclasses.asdict(stage),
            "sizes": dataclasses.asdict(self.sizes),
            "smoke": self.smoke,
            "work": str(self.work),
            "out": str(self.out),
            "camvid": self.args.camvid,
            "data": self.args.data,
            "data_dir": self.data_dir,
            "result": str(result_path),
            # The stage's own deadline, before the parent's SIGTERM: time to save and report.
            "deadline": time.time() + max(timeout - grace, 1.0),
            "eval_reserve_s": min(60.0 if not self.smoke else 30.0, timeout / 3),
        }
        _write(spec_path, spec)
        start = self.log.stat().st_size if self.log.exists() else 0
        t = time.monotonic()
        timed_out = False
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.child_env(),
                cwd=str(self.work),
                start_new_session=True,  # its own process group: a deadline ends all of it
            )
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(self.proc, grace)
            finally:
                if self.proc.poll() is None:  # the parent itself is being stopped
                    _kill(self.proc, grace)
            rc = self.proc.returncode
            self.proc = None
        try:
            res = json.loads(result_path.read_text())
        except (OSError, ValueError):
            res = {}
        res["kind"] = stage.kind
        if timed_out:
            res["status"] = "timeout"
            earlier = res.get("error")  # what the stage itself recorded, if more than the stop
            res["error"] = f"stopped at its {timeout:.0f} s deadline" + (
                f" ({earlier})" if earlier and not earlier.startswith("stopped by SIGTERM") else ""
            )
        elif res.get("status") in (None, "running"):
            res["status"] = "error"
            res["error"] = f"the stage's process ended (exit code {rc}) before recording a result"
        if res["status"] in ("error", "timeout"):
            res["log_tail"] = _tail(self.log, start)
        res.update(wall_s=time.monotonic() - t, timeout_s=timeout, exit_code=rc)
        return res

    def derive(self) -> None:
        """Numbers that need two stages: MFU against the measured peak, loop/step ratios."""
        stages, env = self.results["stages"], self.results["env"]
        for r in stages.values():
            dev = r.get("device")
            if dev and env.get("device_kind") is None:
                env.update(
                    device_kind=dev["device_kind"], device_count=dev["device_count"], platform=dev["platform"]
                )
        matmul = stages.get("matmul", {})
        measured = matmul.get("flops_per_s") if matmul.get("status") == "ok" else None
        nominal = self.args.peak_tflops * 1e12
        for r in stages.values():
            rate = r.get("model_flops_per_s")
            if _ok_number(rate):
                r["mfu_nominal"] = rate / nominal
                if measured:
                    r["mfu_measured"] = rate / measured
        step = stages.get(f"step_{SHORT[self.sizes.dtype]}_b{self.sizes.loop_batch}", {})
        step_rate = step.get("images_per_s") if step.get("status") == "ok" else None
        for r in stages.values():
            if r.get("kind") == "loop" and _ok_number(r.get("images_per_s")) and step_rate:
                r["step_images_per_s"] = step_rate
                r["loop_over_step"] = r["images_per_s"] / step_rate

    def archive_runs(self) -> None:
        """The runs' small records (no checkpoints) as one file: a lent machine sends back 8."""
        runs = self.work / "runs"
        if not runs.is_dir():
            return
        names = ("metrics.jsonl", "config.json", "model.json", "dataset.json", "eval_val.json")
        with atomic_output(self.out / "runs.tar.gz") as tmp:
            with tarfile.open(tmp, "w:gz") as tar:
                for run in sorted(p for p in runs.iterdir() if p.is_dir()):
                    for name in names:
                        if (run / name).is_file():
                            tar.add(run / name, arcname=f"runs/{run.name}/{name}")

    def run(self, stages: list[Stage]) -> None:
        for i, stage in enumerate(stages):
            remaining = self.budget - self.elapsed()
            keep = 0.0 if stage.optional else sum(s.min_s for s in stages[i + 1 :] if not s.optional)
            timeout = min(stage.deadline, remaining - keep)
            needs_data = stage.kind in ("loop", "fcn32s")
            if needs_data and not self.data_dir:
                res = {"status": "skipped", "reason": "no prepared data: the prepare stage did not succeed"}
            elif timeout < stage.min_s:
                res = {
                    "status": "skipped",
                    "reason": f"{remaining:.0f} s left of the {self.budget:.0f} s budget, {keep:.0f} s "
                    f"kept for later stages; this stage needs at least {stage.min_s:.0f} s",
                }
            else:
                print(
                    f"[{self.elapsed():5.0f} s] {stage.name}: started (deadline {timeout:.0f} s)", flush=True
                )
                res = self.run_stage(stage, timeout)
            res.setdefault("kind", stage.kind)
            self.results["stages"][stage.name] = res
            if stage.kind == "prepare" and res["status"] == "ok":
                self.data_dir = res["data_dir"]
            self.derive()
            if stage.kind in ("loop", "fcn32s"):
                try:
                    self.archive_runs()
                except OSError as e:
                    res["archive_error"] = str(e)
            self.write()
            detail = res.get("error") or res.get("reason") or ""
            print(
                f"[{self.elapsed():5.0f} s] {stage.name}: {res['status']}"
                + (f" ({_short(detail, 200)})" if detail and res["status"] != "ok" else ""),
                flush=True,
            )
        env = self.results["env"]
        env["load_average_end"] = list(os.getloadavg())
        env["nvidia_smi_end"] = _nvidia_smi()
        self.write()
        self._trim_log()

    def _trim_log(self, limit: int = 15 * 2**20) -> None:
        """Keep the log's end under the size a lent machine sends back."""
        if self.log.exists() and self.log.stat().st_size > limit:
            with open(self.log, "rb") as f:
                f.seek(-limit, os.SEEK_END)
                tail = f.read()
            with atomic_output(self.log) as tmp:
                tmp.write_bytes(b"[... log cut to its last 15 MiB ...]\n" + tail)


# -- the table ---------------------------------------------------------------------------


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 3] + "..."


def _f(x, fmt: str = "{:.1f}", none: str = "n/a") -> str:
    return fmt.format(x) if _ok_number(x) else none


def _pct(x) -> str:
    return _f(100 * x if _ok_number(x) else None, "{:.3g} %")


def _mib(x) -> str:
    return _f(x / 2**20 if _ok_number(x) else None, "{:.0f}")


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(stage, what, value) rows: a failed stage's status first, then whatever it measured."""
    rows: list[tuple[str, str, str]] = []
    nominal = results.get("peak_tflops_nominal")
    measured = results["stages"].get("matmul", {}).get("dtype", "")
    for name, r in results["stages"].items():
        status, kind = r.get("status"), r.get("kind")

        def add(what: str, value: str, name=name) -> None:
            rows.append((name, what, value))

        if status != "ok":
            why = r.get("error") or r.get("reason") or ""
            add("status", f"{status}" + (f": {_short(why)}" if why else ""))
        if kind == "matmul" and _ok_number(r.get("flops_per_s")):
            add(
                f"{r['n']}^3 {r['dtype']} matmul TFLOP/s, median (best): the practical peak",
                f"{r['flops_per_s'] / 1e12:.1f} ({r['best_flops_per_s'] / 1e12:.1f})",
            )
        elif kind in ("step", "infer") and _ok_number(r.get("images_per_s")):
            what = "train step" if kind == "step" else "inference (apply + argmax)"
            what = f"FCN-VGG16 {what}" if r.get("backbone") == "vgg16" else what
            ms = r.get("step_ms", r.get("batch_ms"))
            add(f"{what} images/s (ms per batch of {r['batch']})", f"{r['images_per_s']:.1f} ({ms:.2f} ms)")
            add(
                f"MFU vs {nominal:g} TFLOP/s nominal bf16 / vs measured {measured} matmul",
                f"{_pct(r.get('mfu_nominal'))} / {_pct(r.get('mfu_measured'))}",
            )
            flops = r.get("model_flops_per_step", r.get("model_flops_per_batch"))
            per_image = flops / r["batch"] / 1e9 if _ok_number(flops) else None
            add("model GFLOP per image (reference ops, XLA count)", _f(per_image))
            dev = (r.get("device_memory") or {}).get("peak_bytes_in_use")
            xla = (r.get("xla_memory") or {}).get("total_bytes")
            add("memory MiB: device peak / XLA estimate", f"{_mib(dev)} / {_mib(xla)}")
        elif kind == "prepare" and status == "ok":
            splits = ", ".join(f"{k} {v}" for k, v in r.get("splits", {}).items())
            add(
                "CamVid prepared" if r.get("prepared_here") else "dataset given",
                f"{splits} ({_f(r.get('seconds'))} s)",
            )
        elif kind == "loop" and status == "ok":
            n = r.get("steady_records")
            add(f"loop images/s (median of {n} log intervals after the first)", _f(r.get("images_per_s")))
            add("host us per step", _f(r.get("host_us_per_step"), "{:.0f}", "not logged"))
            add("loop / step rate (goal >= 90 %)", _pct(r.get("loop_over_step")))
        elif kind == "profile" and status == "ok":
            if r.get("archive"):
                add(f"{r['steps']}-step trace archive", f"{r['archive']}, {r['archive_bytes'] / 1e6:.2f} MB")
            else:
                add(
                    "trace archive (dropped: over 16 MB)", f"{r.get('dropped_archive_bytes', 0) / 1e6:.1f} MB"
                )
        elif kind == "fcn32s" and _ok_number(r.get("val_miou")):
            step = r.get("evaluated_step", r.get("last_step"))
            add(f"val mIoU after {step} of {r['steps']} steps", f"{100 * r['val_miou']:.1f} %")
            add("train images/s (loop, median)", _f(r.get("images_per_s")))
        if kind in ("step", "infer", "profile") and _ok_number(r.get("compile_s")):
            add(
                "compile s" + (" (may hit the compilation cache)" if kind == "profile" else ""),
                _f(r["compile_s"]),
            )
        if status in ("ok", "timeout") and _ok_number(r.get("wall_s")):
            add("stage wall s (process start included)", f"{r['wall_s']:.1f}")
    return rows


def print_table(results: dict, results_path: Path) -> None:
    print()
    print("| stage | what | value |")
    print("|---|---|---|")
    for stage, what, value in table_rows(results):
        print(f"| {stage} | {what} | {value} |")
    env = results["env"]
    print()
    print(
        f"card: {env.get('device_kind') or 'unknown (no stage started JAX)'} "
        f"({env.get('device_count')} device(s), {env.get('platform')}); jax {env.get('jax_version')}, "
        f"{env.get('cpu_count')} CPUs; {results['elapsed_s']:.0f} s of a {results['budget_s']:.0f} s budget; "
        f"results: {results_path}"
    )


# -- command line ----------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU: checks the script end to end")
    p.add_argument("--out", default=None, help="results directory (default: $OUT if set, else gpu_perf_out/)")
    p.add_argument(
        "--work", default=None, help="scratch directory: runs, prepared data (default: a temp dir)"
    )
    p.add_argument("--camvid", default=None, help="raw CamVid folder to prepare (default: fcn_jax's default)")
    p.add_argument("--data", default=None, help="an already prepared dataset (skips preparing --camvid)")
    p.add_argument("--stages", default=None, help="comma-separated kinds or names to run (default: all)")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (default 500; --smoke 900)"
    )
    p.add_argument(
        "--deadlines",
        default=None,
        help="per-stage deadlines, NAME=SECONDS,... (overrides the defaults; also the stage's minimum)",
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="nominal dense bf16 peak for MFU")
    p.add_argument(
        "--no-compile-cache", action="store_true", help="no JAX compilation cache shared by stages"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _apply_deadlines(stages: list[Stage], text: str | None) -> None:
    if not text:
        return
    by_name = {s.name: s for s in stages}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in by_name:
            raise SystemExit(f"--deadlines: {item!r} is not NAME=SECONDS for a selected stage")
        stage = by_name[name.strip()]
        stage.deadline = float(value)
        stage.min_s = min(stage.min_s, stage.deadline)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(Path(args.child))
    session = Session(args)
    stages = select(plan(session.sizes, args.smoke), args.stages)
    _apply_deadlines(stages, args.deadlines)
    session.results["planned"] = [s.name for s in stages]
    print(
        f"gpu_perf: {len(stages)} stages, budget {session.budget:.0f} s, out {session.out}, "
        f"work {session.work}, log {session.log}",
        flush=True,
    )

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        session.run(stages)
    except KeyboardInterrupt as e:  # recorded, then the table of what was measured
        session.results["interrupted"] = str(e) or "KeyboardInterrupt"
        session.write()
    print_table(session.results, session.results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
