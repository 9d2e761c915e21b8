"""`fcn-jax describe [--model alexnet|vgg16|fcn] [--backbone alexnet|vgg16] [--variant 32s|16s|8s]
[--size HxW] [--num-classes N] [--batch B] [--json]`.

Prints the network layer by layer for one input size: kind, window, output size, output
stride, receptive field, parameters and FLOPs, then the padding and crops the geometry
chose, the totals, and what the classifier outputs at 224x224 and at that size
(`fcn_jax.describe`). Nothing is trained or run: shapes only, so it answers at once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

HELP = "Print the network layer by layer: sizes, receptive fields, parameters, FLOPs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Plain strings, checked in run(): a bad value gets one clear line, not argparse's usage dump.
    parser.add_argument(
        "--model", default="fcn", help="alexnet, vgg16 (the classifiers) or fcn (default fcn)"
    )
    parser.add_argument("--backbone", default=None, help="FCN only: alexnet (default) or vgg16")
    parser.add_argument("--variant", default=None, help="FCN only: 32s, 16s or 8s (default 32s)")
    parser.add_argument(
        "--size",
        default=None,
        help="input HxW in pixels, or N for NxN (default: 224x224 for the classifiers, the base config's "
        "training crop 360x480 for fcn)",
    )
    parser.add_argument(
        "--num-classes", default=None, help="classes (default: 1000 for the classifiers, CamVid's 11 for fcn)"
    )
    parser.add_argument(
        "--batch", default="1", help="images per step, for the activation memory and train FLOPs (default 1)"
    )
    parser.add_argument("--json", action="store_true", help="print rows and totals as JSON")


def parse_size(text: str) -> tuple[int, int]:
    """'360x480' -> (360, 480); '224' -> (224, 224). ValueError with a message otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if m is None:
        raise ValueError(f"--size must be HxW (e.g. 360x480) or N, got {text!r}")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h < 1 or w < 1:
        raise ValueError(f"--size must be at least 1x1, got {text!r}")
    return h, w


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from fcn_jax import describe, geometry

    def fail(msg: str) -> int:
        print(f"fcn-jax describe: {msg}", file=sys.stderr)
        return 2

    try:
        if args.model not in describe.MODELS:
            raise ValueError(f"--model must be one of {', '.join(describe.MODELS)}, got {args.model!r}")
        if args.variant is not None:
            if args.model != "fcn":
                raise ValueError(f"--variant applies to --model fcn only, not {args.model}")
            if args.variant not in geometry.VARIANTS:
                raise ValueError(
                    f"--variant must be one of {', '.join(geometry.VARIANTS)}, got {args.variant!r}"
                )
        if args.backbone is not None:
            if args.model != "fcn":
                raise ValueError(f"--backbone applies to --model fcn only, not {args.model}")
            if args.backbone not in geometry.BACKBONES:
                raise ValueError(
                    f"--backbone must be one of {', '.join(geometry.BACKBONES)}, got {args.backbone!r}"
                )
        size = None if args.size is None else parse_size(args.size)
        classes = None if args.num_classes is None else _positive_int("--num-classes", args.num_classes)
        batch = _positive_int("--batch", args.batch)
        d = describe.describe(args.model, size, args.variant, classes, batch, args.backbone)
    except ValueError as e:
        return fail(str(e))
    print(json.dumps(d.to_dict(), indent=1) if args.json else describe.format_table(d))
    return 0
