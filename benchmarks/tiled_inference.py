"""Tiled inference of a large photo: time, device memory and agreement with whole-image inference.

    python benchmarks/tiled_inference.py --checkpoint runs/quickstart            # 4000x3000, tile 360x480
    python benchmarks/tiled_inference.py --height 1500 --width 2000 --overlaps 0,64 --tile 736,960

The photo is a CamVid val frame upscaled to --width x --height (PIL bicubic): a real scene at
a size no CamVid model was trained on. Each configuration runs in a fresh process, so that
its peak memory is its own:
  whole      the image in one piece (`Segmenter.predict` without a tile)
  tile/OV    `Segmenter.predict(tile=..., overlap=OV)` for each --overlaps value
and reports wall time (one call, compilation included), the number of windows,
the compiled programs' device memory by XLA's `memory_analysis()` (`Segmenter.memory_stats`:
arguments + output + scratch + code; on CPU `Device.memory_stats()` is None, on a GPU its
peak_bytes_in_use is printed too), the process's peak resident memory (on CPU the device
memory is host memory, so this is the measured peak of everything) and, for each tiled run,
the share of pixels whose label equals the whole-image label. Results: a markdown table on
stdout and results.json in --out.

Without --checkpoint a randomly initialised FCN-32s is used (the timing and memory are the
same; the agreement is not meaningful for an untrained model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _image(camvid: Path, height: int, width: int):
    import numpy as np
    from PIL import Image

    line = (camvid / "val.txt").read_text().split()[0]
    frame = Image.open(camvid / line).convert("RGB")
    return np.asarray(frame.resize((width, height), Image.BICUBIC))


def _segmenter(checkpoint: str | None):
    from fcn_jax.predict import Segmenter

    if checkpoint:
        return Segmenter.from_checkpoint(checkpoint, batch_size=1)
    sys.path.insert(0, str(REPO / "tests"))
    from test_predict import camvid_meta, random_params

    from fcn_jax.models import FCN

    model = FCN(11, "32s")
    return Segmenter(model, random_params(model), camvid_meta(), batch_size=1)


def child(args) -> None:
    """One configuration, in this process: prints one JSON line."""
    import jax
    import numpy as np

    seg = _segmenter(args.checkpoint)
    image = _image(Path(args.camvid), args.height, args.width)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kwargs = {} if args.mode == "whole" else {"tile": args.tile, "overlap": args.mode_overlap}
    start = time.perf_counter()
    labels = seg.predict(image, **kwargs)
    seconds = time.perf_counter() - start
    stats = seg.memory_stats()
    np.save(Path(args.out) / f"labels_{args.mode}_{args.mode_overlap}.npy", labels.astype(np.uint8))
    print(
        json.dumps(
            {
                "mode": args.mode,
                "overlap": args.mode_overlap if args.mode != "whole" else None,
                "seconds": seconds,
                "windows": seg.num_tiles,
                "programs": stats["programs"],
                "peak_program_bytes": stats["peak_program_bytes"],
                "device_peak_bytes": stats["device_peak_bytes"],
                "param_bytes": int(sum(x.nbytes for x in jax.tree.leaves(seg.params))),
                "rss_before_bytes": rss_before,
                "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="run directory (default: random FCN-32s)")
    p.add_argument("--camvid", default=str(REPO.parent / "shared" / "camvid"))
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--tile", default="360,480", help="H,W")
    p.add_argument("--overlaps", default="64", help="comma-separated overlaps to run tiled")
    p.add_argument("--no-whole", action="store_true", help="skip the whole-image run")
    p.add_argument("--out", default="/tmp/tiled_inference")
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode-overlap", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    from fcn_jax.predict import parse_tile

    args.tile = parse_tile(args.tile)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.mode:
        child(args)
        return

    import numpy as np

    runs = [("whole", 0)] * (not args.no_whole) + [("tile", int(o)) for o in args.overlaps.split(",")]
    results = []
    for mode, overlap in runs:
        cmd = [sys.executable, __file__, "--mode", mode, "--mode-overlap", str(overlap)]
        cmd += ["--camvid", args.camvid, "--height", str(args.height), "--width", str(args.width)]
        cmd += ["--tile", f"{args.tile[0]},{args.tile[1]}", "--out", args.out]
        cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        if proc.returncode:
            print(f"{mode} overlap {overlap}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    whole = Path(args.out) / "labels_whole_0.npy"
    for r in results:
        if r["mode"] == "tile" and whole.is_file():
            a = np.load(whole)
            b = np.load(Path(args.out) / f"labels_tile_{r['overlap']}.npy")
            r["agreement_with_whole"] = float((a == b).mean())
    with open(Path(args.out) / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"
    print(
        f"{args.width}x{args.height} (W x H), tile {args.tile[0]}x{args.tile[1]}, "
        f"checkpoint {args.checkpoint}"
    )
    print("| run | windows | seconds | program MiB (parameters) | peak RSS MiB | agree % |")
    print("|---|---|---|---|---|---|")
    for r in results:
        name = "whole image" if r["mode"] == "whole" else f"tiles, overlap {r['overlap']}"
        agree = f"{100 * r['agreement_with_whole']:.2f}" if "agreement_with_whole" in r else "-"
        print(
            f"| {name} | {r['windows'] or 1} | {r['seconds']:.1f} | "
            f"{mib(r['peak_program_bytes'])} ({mib(r['param_bytes'])}) | "
            f"{mib(r['rss_peak_bytes'])} | {agree} |"
        )


if __name__ == "__main__":
    main()
