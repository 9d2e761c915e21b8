"""Training step time with `fcn-jax`'s malloc settings against glibc's defaults.

    python benchmarks/allocator.py --data-dir DATA                  # the CPU recipe, 100 steps
    python benchmarks/allocator.py --data-dir DATA --steps 60 --rounds 1

Each round runs `fcn-jax train` twice, in fresh processes, once as shipped and once with
FCN_JAX_MALLOC=system (glibc's defaults), in ABBA order so that a shared machine's noise
hits both alike. The rate is the `images_per_s` the run logs over the second half of its
steps (compilation is in the first); page faults and kernel time are the child's own
(getrusage). The two settings must log the same losses: the allocator decides where
bytes live, never what they are. The settings themselves: fcn_jax.cli.keep_freed_memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fcn_jax.report import read_metrics

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("keep", "system")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="prepared CamVid (fcn-jax prepare camvid --out DIR)")
    p.add_argument("--config", default=str(REPO / "experiments" / "camvid_cpu.py") + ":first_heldout")
    p.add_argument("--steps", type=int, default=100, help="per run; the second half is timed")
    p.add_argument("--rounds", type=int, default=1, help="ABBA rounds (each is four runs)")
    return p.parse_args(argv)


def run_once(args, setting: str, workdir: Path) -> dict:
    """One `fcn-jax train` in a fresh process; its steady rate, losses and rusage."""
    cmd = [
        sys.executable, "-m", "fcn_jax", "train", "--config", args.config, "--workdir", str(workdir),
        f"--config.data.data_dir={args.data_dir}", f"--config.train.steps={args.steps}",
        f"--config.train.log_every={args.steps // 2}", "--config.data.extra_eval_splits=()",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env={**os.environ, "FCN_JAX_MALLOC": setting}, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(
            f"fcn-jax train ({setting}) failed with exit {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    train = [r for r in read_metrics(workdir / "metrics.jsonl") if r["split"] == "train"]
    return {
        "setting": setting,
        "images_per_s": train[-1]["images_per_s"],
        "losses": [r["loss"] for r in train],
        "minflt": after.ru_minflt - before.ru_minflt,
        "sys_s": after.ru_stime - before.ru_stime,
        "user_s": after.ru_utime - before.ru_utime,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 4:
        sys.exit("--steps: at least 4 (the second half is timed)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="fcn_alloc_") as tmp:
        for r in range(args.rounds):
            for i, setting in enumerate(SETTINGS + SETTINGS[::-1]):
                res = run_once(args, setting, Path(tmp) / f"r{r}_{i}_{setting}")
                runs.append(res)
                print(
                    f"{setting:>6}: {res['images_per_s']:.3f} img/s  page faults {res['minflt']:>10,}  "
                    f"kernel {res['sys_s']:.1f} s  user {res['user_s']:.1f} s",
                    flush=True,
                )
    rate = {s: statistics.median(r["images_per_s"] for r in runs if r["setting"] == s) for s in SETTINGS}
    same = all(r["losses"] == runs[0]["losses"] for r in runs)
    print(f"steps {args.steps}, config {args.config}")
    ratio = rate["keep"] / rate["system"]
    print(f"keep / system training rate (median of {2 * args.rounds} runs each): {ratio:.3f}x")
    print(f"same losses in every run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
