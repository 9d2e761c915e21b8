"""`fcn-jax report --workdir runs/x [--split val] [--num-images 4] [--worst 4] [--evaluate]`.

Writes runs/x/report/: loss, learning-rate and val-metric curves (from metrics.jsonl), a
row-normalised confusion matrix, image | ground truth | prediction for a few images of the
split, image | truth | prediction | error map for the split's worst images (from the
per-image records `fcn-jax eval` writes), and README.md linking them with tables.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Plot curves, confusion matrix and prediction grid for a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="run directory")
    parser.add_argument("--split", default="val", help="split for the metrics and pictures (default val)")
    parser.add_argument(
        "--num-images", type=int, default=4, help="images in the prediction grid (default 4; 0: none)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="prepared dataset (default: the one the run trained on, from its dataset.json)",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate the checkpoint now for the confusion matrix (writes eval_<split>.json)",
    )
    parser.add_argument(
        "--worst",
        type=int,
        default=4,
        metavar="K",
        help="show the K images of the split with the lowest mean IoU, from eval_<split>.json's "
        "per-image records: image | truth | prediction | error map (default 4; 0: none)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="batch size for --evaluate (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from fcn_jax import report

    for flag, value in (("--num-images", args.num_images), ("--worst", args.worst)):
        if value < 0:
            print(f"fcn-jax report: {flag} must be >= 0, got {value}", file=sys.stderr)
            return 2
    try:
        readme = report.make_report(
            args.workdir,
            args.split,
            args.num_images,
            args.data_dir,
            args.evaluate,
            args.batch_size,
            progress=not args.quiet,
            worst=args.worst,
        )
    except (OSError, ValueError) as e:  # run.RunError: missing run, damaged checkpoint
        print(f"fcn-jax report: {e}", file=sys.stderr)
        return 2
    text = readme.read_text()
    print(f"wrote {readme.parent}/ ({', '.join(sorted(p.name for p in readme.parent.glob('*.png')))})")
    if "## Skipped" in text:
        print(text[text.index("## Skipped") :].rstrip(), file=sys.stderr)
    return 0
