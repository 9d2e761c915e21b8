"""`fcn-jax export --checkpoint PATH --out FILE [--height H --width W --batch B]`.

Writes FILE (a serialized jax.export artifact: uint8 RGB images in, class ids and/or logits
out, normalisation inside), FILE.weights.npz and FILE.json (shapes, class names, palette).
Load it with `fcn_jax.export.load(FILE)` or with plain jax (docs/inference.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Export a trained model as a serialized jax.export artifact."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="run directory (best, else latest checkpoint) or a step directory"
    )
    parser.add_argument(
        "--out", required=True, help="artifact file; FILE.json and FILE.weights.npz are written beside it"
    )
    parser.add_argument("--height", type=int, default=360, help="input height in pixels (default 360)")
    parser.add_argument("--width", type=int, default=480, help="input width in pixels (default 480)")
    parser.add_argument("--batch", type=int, default=None, help="fixed batch size (default: any, symbolic)")
    parser.add_argument(
        "--output",
        choices=("both", "labels", "logits"),
        default="both",
        help="what the artifact returns (default both: {'labels', 'logits'})",
    )
    parser.add_argument(
        "--platforms",
        default="cpu,cuda",
        help="comma-separated lowering platforms: cpu, cuda, rocm, tpu (default cpu,cuda)",
    )


def run(args: argparse.Namespace) -> int:
    from fcn_jax import export
    from fcn_jax import run as run_lib
    from fcn_jax.fsutil import check_writable_dir

    def fail(msg: str) -> int:
        print(f"fcn-jax export: {msg}", file=sys.stderr)
        return 2

    if args.height < 1 or args.width < 1:
        return fail(f"--height/--width must be >= 1, got {args.height}x{args.width}")
    if args.batch is not None and args.batch < 1:
        return fail(f"--batch must be >= 1, got {args.batch}")
    # Checked before the (slow) checkpoint load, so a typo or an unwritable --out fails at once.
    try:
        platforms = export.check_platforms([p.strip() for p in args.platforms.split(",") if p.strip()])
    except ValueError as e:
        return fail(f"--platforms {args.platforms}: {e}")
    out = Path(args.out)
    try:
        if out.is_dir():
            raise OSError(f"--out {out}: is a directory; give a file name")
        check_writable_dir(out.parent, "--out directory")
    except OSError as e:
        return fail(str(e))
    try:
        trained = run_lib.load_trained(args.checkpoint)
    except (OSError, ValueError) as e:
        return fail(f"--checkpoint: {e}")
    model, params, meta = trained.model, trained.params, trained.meta
    try:
        side = export.export_model(
            model, params, meta, args.out, args.height, args.width, args.batch, args.output, platforms
        )
    except (ValueError, OSError) as e:
        return fail(str(e))
    print(
        f"wrote {args.out} ({side['platforms']}, input uint8 {side['input']['shape']}, "
        f"outputs {', '.join(side['outputs'])}), {export.weights_path(args.out)} and "
        f"{export.sidecar_path(args.out)}"
    )
    return 0
