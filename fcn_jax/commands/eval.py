"""`fcn-jax eval --workdir runs/x [--split val[,heldout]] [--data-dir DIR] [--batch-size N]`.

Loads the run's best checkpoint (else its latest; or the step directory given), evaluates
it on every image of each split at full size, prints a per-class table per split (and the
mIoUs side by side) and writes `<run dir>/eval_<split>.json` (or --out, for one split).
The dataset defaults to the one the run was trained on (the run's dataset.json).
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
    parser.add_argument(
        "--split",
        default=None,
        help="split(s) of the prepared dataset, comma-separated (default: the splits the run was "
        "validated on: its eval split and extra eval splits, e.g. heldout,val)",
    )
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


def default_splits(run) -> list[str]:
    """The splits the run was validated on (its eval split, then the extra ones), else val."""
    try:
        data = run.config().get("data", {})
    except ValueError:  # a run without a readable config.json is still evaluated, on val
        return ["val"]
    splits = [data.get("eval_split") or "val", *data.get("extra_eval_splits", ())]
    return list(dict.fromkeys(splits))


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
        splits = (
            [s.strip() for s in args.split.split(",") if s.strip()] if args.split else default_splits(run)
        )
        if args.out and len(splits) > 1:
            return fail(f"--out names one file, but --split gives {len(splits)} splits")
        for split in splits:
            meta = evaluate.check_split(data_dir, split)
        outs = {s: Path(args.out) if args.out else run.eval_file(s) for s in splits}
        for out in outs.values():
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
    summary = []
    for split in splits:
        try:
            result = evaluate.evaluate(
                model, trained.params, data_dir, split, batch_size, mesh, progress=not args.quiet
            )
        except ValueError as e:
            return fail(f"--batch-size: {e}" if "batch size" in str(e) else str(e))
        title = f"{split} ({meta.splits[split]} images) of {meta.data_dir}"
        print(result.table(f"{title}\ncheckpoint {trained.step_dir}"))
        summary.append(f"{split} {100 * result.miou:.1f}" if result.miou is not None else f"{split} -")
        if jax.process_index() == 0:
            record = {
                "checkpoint": str(trained.step_dir),
                "split": split,
                "data_dir": str(meta.data_dir),
                "num_images": meta.splits[split],
                **result.to_dict(),
            }
            try:
                fsutil.atomic_write_json(outs[split], record, sort_keys=False)
            except OSError as e:
                return fail(f"--out {outs[split]}: cannot write ({e.strerror or e})")
            print(f"wrote {outs[split]}")
    if len(splits) > 1:
        print(f"mIoU %: {' | '.join(summary)}")
    return 0
