"""The `fcn-jax` command line.

Each subcommand lives in its own module under `fcn_jax.commands` and defines
`HELP`, `add_arguments(parser)` and `run(args) -> int`. Modules are imported only
when their command runs, so `fcn-jax --help` stays fast and one broken command
does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "convert": "Convert torchvision AlexNet or VGG16 weights (.pth) to Flax parameters.",
    "prepare": "Prepare a dataset (camvid, folder, tfds) as a TFDS array_record directory.",
    "train": "Train an FCN from an experiment config.",
    "eval": "Evaluate a trained run on a split and print metrics.",
    "predict": "Segment images and write colour masks, overlays and label PNGs.",
    "report": "Plot curves, confusion matrix and prediction grid for a run.",
    "export": "Export a trained model: jax.export artifact, ONNX file or safetensors folder.",
    "describe": "Print the network layer by layer: sizes, receptive fields, parameters, FLOPs.",
}


def _module(name: str):
    return importlib.import_module(f"fcn_jax.commands.{name}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcn-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen command's module is imported to define its arguments.
    chosen = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
    return parser


def quiet_libraries() -> None:
    """Keep library notices a user cannot act on off the terminal (absl's "OpenCV is not
    installed" from tensorflow-datasets, orbax's notes on metadata, sharding and read-only
    managers). Errors still show; FCN_JAX_VERBOSE=1 shows everything."""
    import logging
    import os

    if os.environ.get("FCN_JAX_VERBOSE"):
        return
    for name in ("absl", "orbax", "orbax.checkpoint", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    module = _module(args.command)
    # Commands that take `--config.key=value` overrides receive the leftovers.
    if extra and not getattr(module, "ACCEPTS_OVERRIDES", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
