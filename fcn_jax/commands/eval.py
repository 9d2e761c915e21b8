"""`fcn-jax eval --workdir runs/x [--split val] [--data-dir DIR] [--batch-size N]`.

Loads the run's best checkpoint (else its latest; or the step directory given), evaluates
it on every image of the split at full size, prints a per-class table and writes
`<run dir>/eval_<split>.json` (or --out). The dataset defaults to the one the run was
trained on (the run's dataset.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Evaluate a trained run on a split and print metrics."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        required=True,
        help="run directory (uses best/ if present, else the latest of checkpoints/) "
        "or one checkpoint step directory inside it",
    )
    parser.add_argument("--split", default="val", help="split of the prepared dataset (default val)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="prepared dataset (default: the one the run trained on, from its dataset.json)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, a multiple of the device count (default: 2 per device)",
    )
    parser.add_argument("--out", default=None, help="JSON output (default <run dir>/eval_<split>.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import jax

    from fcn_jax import evaluate, fsutil, training
    from fcn_jax import run as run_lib
    from fcn_jax.data import DataError

    def fail(msg: str, code: int = 2) -> int:
        print(f"fcn-jax eval: {msg}", file=sys.stderr)
        return code

    try:
        run, step_dir = run_lib.resolve(args.workdir)
        data_dir = args.data_dir or run.data_dir()
        if not data_dir:
            return fail(f"{run.root}: the run records no dataset directory; pass --data-dir")
        meta = evaluate.check_split(data_dir, args.split)
        out = Path(args.out) if args.out else run.eval_file(args.split)
        fsutil.check_writable_dir(out.parent, "--out")
        trained = run_lib.load_trained(step_dir)
    except (OSError, ValueError, DataError) as e:  # RunError, SplitNotFound are ValueErrors
        return fail(str(e))
    model = trained.model
    if meta.num_classes != model.num_classes:
        return fail(
            f"the model predicts {model.num_classes} classes but {data_dir} has "
            f"{meta.num_classes}; pass the --data-dir the run was trained on"
        )
    mesh = training.data_mesh()
    batch_size = 2 * mesh.size if args.batch_size is None else args.batch_size
    try:
        result = evaluate.evaluate(
            model, trained.params, data_dir, args.split, batch_size, mesh, progress=not args.quiet
        )
    except ValueError as e:
        return fail(f"--batch-size: {e}" if "batch size" in str(e) else str(e))
    title = f"{args.split} ({meta.splits[args.split]} images) of {meta.data_dir}"
    print(result.table(f"{title}\ncheckpoint {trained.step_dir}"))
    if jax.process_index() == 0:
        record = {
            "checkpoint": str(trained.step_dir),
            "split": args.split,
            "data_dir": str(meta.data_dir),
            "num_images": meta.splits[args.split],
            **result.to_dict(),
        }
        try:
            fsutil.atomic_write_json(out, record, sort_keys=False)
        except OSError as e:
            return fail(f"--out {out}: cannot write ({e.strerror or e})")
        print(f"wrote {out}")
    return 0
