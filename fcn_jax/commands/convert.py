"""`fcn-jax convert [--arch alexnet|vgg16] MODEL.pth OUT`: torchvision AlexNet (the default)
or VGG16 weights to Flax parameters.

OUT ending in `.safetensors` is written as safetensors (keys "layer/name"), any other name as
flax msgpack; `convert.load_params` and `--config.init_from` read either."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Convert torchvision AlexNet or VGG16 weights (.pth) to Flax parameters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # A plain string, checked in run(): a bad value gets one clear line, not argparse's usage dump.
    parser.add_argument(
        "--arch",
        default="alexnet",
        help="the torchvision architecture of CHECKPOINT: alexnet (default) or vgg16; the FCN "
        "trained from OUT needs --config.model.backbone set to the same",
    )
    parser.add_argument(
        "checkpoint",
        help="torchvision AlexNet or VGG16 state_dict (.pth), or a training checkpoint holding it under "
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

    if args.arch not in convert.ARCHS:
        return fail(f"--arch must be one of {', '.join(convert.ARCHS)}, got {args.arch!r}")
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
        params = convert.from_torch(state_dict, args.arch)
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
