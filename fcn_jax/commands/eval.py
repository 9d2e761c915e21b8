"""`fcn-jax eval --workdir runs/x [--split val] [--data-dir DIR] [--batch-size N]`.

Loads the run's best checkpoint (else its latest; or the step directory given), evaluates
it on every image of the split at full size, prints a per-class table and writes
`<run dir>/eval_<split>.json` (or --out). The dataset defaults to the one the run was
trained on (config.json: data.data_dir).
"""

from __future__ import annotations

import argparse
import json
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
        "--data-dir", default=None, help="prepared dataset (default: the run's config.json data.data_dir)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, a multiple of the device count (default: 2 per device)",
    )
    parser.add_argument("--out", default=None, help="JSON output (default <run dir>/eval_<split>.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_dir_of(path: Path) -> Path:
    """The run directory of a run directory or of a checkpoint step directory inside it."""
    for p in (path, path.parent.parent):
        if (p / "config.json").is_file():
            return p
    raise FileNotFoundError(f"{path}: not a run directory (no config.json here or two levels up)")


def data_dir_of(run_dir: Path, override: str | None) -> str:
    if override:
        return override
    config = json.loads((run_dir / "config.json").read_text())
    d = config.get("data", {}).get("data_dir")
    if not d:
        raise FileNotFoundError(f"{run_dir / 'config.json'} names no data.data_dir; pass --data-dir")
    return d


def checkpoint_step_dir(path: Path) -> str:
    """The step directory that `checkpoints.load_inference(path)` reads, for the record."""
    from fcn_jax import checkpoints

    try:
        _, manager_dir, step = checkpoints._resolve_step_dir(path.absolute())
        return str(manager_dir / str(step))
    except Exception:  # only informative
        return str(path.absolute())


def run(args: argparse.Namespace) -> int:
    import jax

    from fcn_jax import checkpoints, evaluate, training
    from fcn_jax.data import DataError

    def fail(msg: str, code: int = 2) -> int:
        print(f"fcn-jax eval: {msg}", file=sys.stderr)
        return code

    path = Path(args.workdir)
    if not path.exists():
        return fail(f"--workdir {path}: does not exist")
    try:
        run_dir = run_dir_of(path)
        data_dir = data_dir_of(run_dir, args.data_dir)
        meta = evaluate.check_split(data_dir, args.split)
        model, params, _ = checkpoints.load_inference(path)
    except (FileNotFoundError, DataError, evaluate.SplitNotFound, json.JSONDecodeError) as e:
        return fail(str(e))
    if meta.num_classes != model.num_classes:
        return fail(
            f"the model predicts {model.num_classes} classes but {data_dir} has "
            f"{meta.num_classes}; pass the --data-dir the run was trained on"
        )
    mesh = training.data_mesh()
    batch_size = 2 * mesh.size if args.batch_size is None else args.batch_size
    try:
        result = evaluate.evaluate(
            model, params, data_dir, args.split, batch_size, mesh, progress=not args.quiet
        )
    except ValueError as e:
        return fail(f"--batch-size: {e}" if "batch size" in str(e) else str(e))
    print(
        result.table(f"{args.split} ({meta.splits[args.split]} images) of {meta.data_dir}\ncheckpoint {path}")
    )
    out = Path(args.out) if args.out else run_dir / f"eval_{args.split}.json"
    if jax.process_index() == 0:
        record = {
            "checkpoint": checkpoint_step_dir(path),
            "split": args.split,
            "data_dir": str(meta.data_dir),
            "num_images": meta.splits[args.split],
            **result.to_dict(),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        print(f"wrote {out}")
    return 0
