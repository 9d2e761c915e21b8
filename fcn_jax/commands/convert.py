"""`fcn-jax convert ALEXNET.pth OUT`: torchvision AlexNet weights to Flax parameters."""

from __future__ import annotations

import argparse
import sys

HELP = "Convert torchvision AlexNet weights (.pth) to Flax parameters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="torchvision AlexNet state_dict (.pth)")
    parser.add_argument("out", help="output file (msgpack); its sha256 is printed and written to OUT.sha256")


def run(args: argparse.Namespace) -> int:
    from fcn_jax import convert

    try:
        params = convert.alexnet_from_torch(convert.load_torch_state_dict(args.checkpoint))
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fcn-jax convert: {e}", file=sys.stderr)
        return 2
    digest = convert.save_params(params, args.out)
    n = sum(v.size for layer in params.values() for v in layer.values())
    print(f"wrote {args.out}: {len(params)} layers, {n:,} parameters")
    print(f"sha256 {digest}")
    return 0
