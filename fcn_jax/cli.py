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


# glibc mallopt parameters (malloc.h) and the values `keep_freed_memory` sets; a trim
# threshold of -1 (SIZE_MAX once cast) never trims.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_KEEP = {_M_ARENA_MAX: 1, _M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: -1}
ALLOCATOR_ENV_VAR = "FCN_JAX_MALLOC"


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back.

    XLA:CPU allocates a step's scratch buffer (hundreds of MB for an FCN training step)
    at every execution, on a worker thread. By default glibc serves a block that large
    from a fresh mmap, whose pages the kernel faults in and zeroes one by one, and unmaps
    it again on free: every step pays the kernel for memory it just returned. One arena
    (worker threads allocate from the main heap, which has no size cap), a 1 GiB mmap
    threshold and no trimming let the next step reuse the same pages. The process keeps
    its peak memory until it exits. Results are unchanged (the same bytes, elsewhere);
    benchmarks/allocator.py measures the step time both ways.

    Must run before the threads that allocate exist (here: before jax starts its
    backend). Does nothing off glibc, or with FCN_JAX_MALLOC=system (the other value is
    `keep`, the default). Returns whether the settings were applied.
    """
    import ctypes
    import os
    import platform

    setting = os.environ.get(ALLOCATOR_ENV_VAR, "keep")
    if setting not in ("keep", "system"):
        raise ValueError(f"{ALLOCATOR_ENV_VAR}={setting!r}: expected keep (the default) or system")
    if setting == "system" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _KEEP.items())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        keep_freed_memory()
    except ValueError as e:
        sys.exit(f"fcn-jax: {e}")
    quiet_libraries()
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    module = _module(args.command)
    # Commands that take `--config.key=value` overrides receive the leftovers.
    if extra and not getattr(module, "ACCEPTS_OVERRIDES", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C where a command has no handling of its own: a line, not a traceback
        print(f"fcn-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
