"""`fcn-jax convert ALEXNET.pth OUT`: torchvision AlexNet weights to Flax parameters.

OUT ending in `.safetensors` is written as safetensors (keys "layer/name"), any other name as
flax msgpack; `convert.load_params` and `--config.init_from` read either."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Convert torchvision AlexNet weights (.pth) to Flax parameters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="torchvision AlexNet state_dict (.pth), or a training checkpoint holding it under "
        "'state_dict', 'model_state_dict' or 'model'",
    )
    parser.add_argument(
        "out",
        help="output file: safetensors if it ends with .safetensors, else flax msgpack; its sha256 is "
        "printed and written to OUT.sha256",
    )


def run(args: argparse.Namespace) -> int:
    from fcn_jax import convert
    from fcn_jax.fsutil import check_writable_dir

    def fail(msg: str) -> int:
        print(f"fcn-jax convert: {msg}", file=sys.stderr)
        return 2

    out = Path(args.out)
    try:  # before the (slow) load, so a bad OUT fails at once
        if out.is_dir():
            raise OSError(f"OUT {out}: is a directory; give a file name")
        check_writable_dir(out.parent, "OUT directory")
    except OSError as e:
        return fail(str(e))
    try:
        state_dict = convert.load_torch_state_dict(
            args.checkpoint, note=lambda m: print(f"fcn-jax convert: {m}")
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        return fail(str(e))
    try:
        params = convert.alexnet_from_torch(state_dict)
    except ValueError as e:
        return fail(f"{args.checkpoint}: {e}")
    try:
        digest = convert.save_params(params, out)
    except OSError as e:
        return fail(f"OUT {out}: cannot write ({e.strerror or e})")
    n = sum(v.size for layer in params.values() for v in layer.values())
    print(f"wrote {args.out}: {len(params)} layers, {n:,} parameters")
    print(f"sha256 {digest}")
    return 0
