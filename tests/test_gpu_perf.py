"""benchmarks/gpu_perf.py end to end on this CPU (--smoke), so it works the first time it
meets a GPU: a lent GPU machine has minutes of device time, none to spend on a typo.

The smoke run is one subprocess (~2-3 minutes on 2 cores: every stage is a process that
compiles an FCN); the second test checks the recovery paths (a stage past its deadline,
a failing stage, stages that depend on it) in a few seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from conftest import REPO, make_camvid_subset, require_camvid

SCRIPT = REPO / "benchmarks" / "gpu_perf.py"


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _device_cache_key() -> bool:
    from fcn_jax.config import base_config

    return "device_cache" in base_config().data


def test_smoke_run_records_every_stage(tmp_path):
    require_camvid()
    src = make_camvid_subset(tmp_path / "camvid", {"train": 4, "val": 2})
    out, work = tmp_path / "out", tmp_path / "work"
    start = time.monotonic()
    r = _run(["--smoke", "--out", str(out), "--work", str(work), "--camvid", str(src)], tmp_path, 600)
    print(f"gpu_perf --smoke: {time.monotonic() - start:.0f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    kinds = [s["kind"] for s in stages.values()]
    for kind, n in {
        "matmul": 1,
        "step": 3,  # the smoke ladder's one rung, the float32 step and FCN-VGG16's
        "infer": 1,
        "prepare": 1,
        "loop": 2,
        "profile": 1,
        "fcn32s": 1,
    }.items():
        assert kinds.count(kind) == n, (kind, list(stages))
    device_path_exists = _device_cache_key()
    for name, s in stages.items():
        allowed = {"ok"} | ({"unavailable"} if name == "loop_device" and not device_path_exists else set())
        assert s["status"] in allowed, (
            name,
            s.get("error") or s.get("reason"),
            s.get("log_tail", "")[-1500:],
        )

    env = results["env"]
    assert env["jax_version"] and env["device_kind"] and env["device_count"] >= 1 and env["cpu_count"] >= 1

    def numbers(stage: dict, keys: list[str]) -> None:
        for key in keys:
            assert _positive(stage.get(key)), (key, stage.get(key))

    numbers(stages["matmul"], ["flops_per_s", "best_flops_per_s", "tflops"])
    for s in stages.values():
        if s["kind"] in ("step", "infer"):
            numbers(s, ["images_per_s", "compile_s", "model_flops_per_s", "mfu_nominal", "mfu_measured"])
            assert _positive((s["xla_memory"] or {}).get("total_bytes"))
        if s["kind"] == "step":
            numbers(s, ["model_flops_per_step", "step_ms", "lower_s"])
        if s["kind"] == "loop" and s["status"] == "ok":
            numbers(s, ["images_per_s", "loop_over_step", "step_images_per_s"])
            assert s["steady_records"] >= 1
            assert s["host_us_per_step"] is None or _positive(s["host_us_per_step"])
    fcn32s = stages["fcn32s"]
    assert fcn32s["last_step"] == fcn32s["steps"] == 2
    assert 0 <= fcn32s["val_miou"] <= 1

    archive = out / "profile_trace.tar.gz"
    assert 0 < archive.stat().st_size < 16 * 2**20
    assert stages["profile"]["archive_bytes"] == archive.stat().st_size
    with tarfile.open(archive) as tar:
        assert any(n.endswith(".xplane.pb") for n in tar.getnames()), tar.getnames()
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert "runs/fcn32s/metrics.jsonl" in tar.getnames(), tar.getnames()
    # What comes back from a lent machine: at most 8 plain files, none in folders.
    assert len(list(out.iterdir())) <= 8 and all(p.is_file() for p in out.iterdir())

    table = r.stdout[r.stdout.index("| stage | what | value |") :]
    for name in stages:
        assert f"| {name} |" in table, name
    assert f"card: {env['device_kind']}" in table


def test_deadline_and_failure_are_recorded_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    r = _run(
        [
            "--smoke",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--stages",
            "step_f32_b2,loop",
            "--deadlines",
            "step_f32_b2=3",
            "--data",
            str(tmp_path / "no_such_dataset"),
        ],
        tmp_path,
        120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert list(stages) == ["step_f32_b2", "prepare", "loop_device", "loop_grain"]
    assert stages["step_f32_b2"]["status"] == "timeout"
    assert stages["step_f32_b2"]["wall_s"] < 3 + 15  # its deadline plus the SIGTERM grace
    assert stages["prepare"]["status"] == "error" and "no_such_dataset" in stages["prepare"]["error"]
    assert stages["loop_device"]["status"] == stages["loop_grain"]["status"] == "skipped"
    assert "| step_f32_b2 | status | timeout" in r.stdout
    assert "| prepare | status | error" in r.stdout
