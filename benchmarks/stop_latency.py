"""How long `fcn-jax train` takes to save and stop after a SIGTERM (or Ctrl-C).

    python benchmarks/stop_latency.py --data DIR
    python benchmarks/stop_latency.py --data DIR --config experiments/camvid_cpu.py:heldout --at 25
    python benchmarks/stop_latency.py --data DIR --code ../old_checkout   # another checkout's fcn_jax

Starts a training run in a temporary directory, sends SIGTERM once the progress bar
reaches step `--at`, and prints the seconds from the signal to the "stopped by" line and
to the exit, and the step saved. A user who sees no answer for long presses Ctrl-C again,
which stops without saving (`fcn_jax.train.StopSignals`), so this is the time the run's
last steps are at risk. It is the devices' queued steps plus one save: the training loop
keeps the host at most two steps ahead (`fcn_jax.train.StepPacer`).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a prepared dataset (fcn-jax prepare)")
    p.add_argument("--config", default=str(ROOT / "experiments" / "camvid_cpu.py") + ":heldout")
    p.add_argument("--at", type=int, default=25, help="send SIGTERM when the bar reaches this step")
    p.add_argument("--steps", type=int, default=300, help="train.steps of the run (it stops long before)")
    p.add_argument("--code", default=None, help="a checkout whose fcn_jax to run (default: installed)")
    args = p.parse_args()

    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = str(Path(args.code).resolve())
    path, colon, mode = args.config.partition(":")  # the run starts in a temporary directory
    config = str(Path(path).resolve()) + colon + mode
    with tempfile.TemporaryDirectory(prefix="stop_latency_") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "fcn_jax.cli",
            "train",
            "--workdir",
            str(Path(tmp) / "run"),
            "--config",
            config,
            f"--config.data.data_dir={Path(args.data).resolve()}",
            f"--config.train.steps={args.steps}",
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=tmp)
        os.set_blocking(proc.stderr.fileno(), False)
        err, sent, at_bar, stopped = b"", None, None, None
        bar = re.compile(rb"\| *(\d+)/%d " % args.steps)
        while proc.poll() is None:
            time.sleep(0.05)
            chunk = proc.stderr.read() or b""
            err += chunk
            if sent is None:
                shown = bar.findall(err[-400:])
                if shown and int(shown[-1]) >= args.at:
                    proc.send_signal(signal.SIGTERM)
                    sent, at_bar = time.perf_counter(), int(shown[-1])
            elif stopped is None and b"stopped by SIGTERM" in err:
                stopped = time.perf_counter() - sent
        exited = time.perf_counter() - sent if sent else None
        err += proc.stderr.read() or b""
    text = err.decode(errors="replace")
    if sent is None:
        print(f"the run ended (exit {proc.returncode}) before step {args.at}:", file=sys.stderr)
        print(text[-2000:], file=sys.stderr)
        return 1
    if stopped is None and "stopped by SIGTERM" in text:
        stopped = exited
    saved = re.search(r"stopped by SIGTERM after step (\d+)", text)
    if saved is None:
        print(f"no 'stopped by SIGTERM' line (exit {proc.returncode}):\n{text[-2000:]}", file=sys.stderr)
        return 1
    print(
        f"SIGTERM at bar step {at_bar}: stopped after {stopped:.1f} s, exited after {exited:.1f} s, "
        f"saved step {saved.group(1)} (exit {proc.returncode})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
