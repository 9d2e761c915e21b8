"""`fcn-jax eval --workdir runs/x [--split val[,heldout]] [--data-dir DIR] [--batch-size N]
[--tile H,W --overlap PX] [--scales 0.75,1,1.25] [--flip]`.

Loads the run's best checkpoint (else its latest; or the step directory given), evaluates
it on every image of each split at full size, prints a per-class table per split (and the
mIoUs side by side) and writes `<run dir>/eval_<split>.json` (or --out, for one split).
The dataset defaults to the one the run was trained on (the run's dataset.json).

The JSON holds the split's metrics and confusion matrix and, under "images", one record per
image (mean IoU, pixel accuracy, per-class IoU; `fcn-jax report` shows the worst). With
--scales or --flip the images are also evaluated with test-time augmentation; both results
are printed side by side and the augmented one is written under "augmented". Without them,
the run's config chooses (its `inference` section: plain unless the experiment asks for
augmentation, as experiments/camvid_cpu.py does); `--scales 1 --no-flip` is plain. --tile runs
both through sliding windows of that size (device memory bounded by the tile); without it
the plain evaluation is `fcn_jax.evaluate`'s, over all devices.
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
    add_inference_arguments(
        parser,
        flip_help="test-time augmentation: also run the mirror image (of every scale); "
        "default: the run's config (inference.flip)",
        scales_default=" (default: the run's config, inference.scales; 1 for none)",
    )
    parser.add_argument(
        "--worst", type=int, default=5, help="print the K images with the lowest mean IoU (default 5)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_inference_arguments(
    parser: argparse.ArgumentParser, flip_help: str | None = None, scales_default: str | None = None
) -> None:
    """--tile, --overlap, --scales, --flip: shared by eval and predict."""
    parser.add_argument(
        "--tile",
        default=None,
        metavar="H,W",
        help="sliding-window inference in tiles of H x W pixels for images larger than that: "
        "device memory bounded by the tile, not the image",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=64,
        metavar="PX",
        help="overlap of neighbouring tiles in pixels (default 64); their logits are averaged",
    )
    parser.add_argument(
        "--scales",
        default=None,
        metavar="S,S,...",
        help="test-time augmentation: also run the image resized by these factors (e.g. 0.75,1,1.25) "
        "and average the probabilities at the original size" + (scales_default or ""),
    )
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=flip_help or "test-time augmentation: also run the mirror image (of every scale)",
    )


def default_splits(run) -> list[str]:
    """The splits the run was validated on (its eval split, then the extra ones), else val."""
    try:
        data = run.config().get("data", {})
    except ValueError:  # a run without a readable config.json is still evaluated, on val
        return ["val"]
    splits = [data.get("eval_split") or "val", *data.get("extra_eval_splits", ())]
    return list(dict.fromkeys(splits))


def _inference(tile, overlap: int, scales=(1.0,), flip: bool = False) -> dict:
    return {
        "scales": list(scales),
        "flip": flip,
        "tile": list(tile) if tile else None,
        "overlap": overlap if tile else None,
    }


def describe_inference(settings: dict) -> str:
    """'scales 0.75,1,1.25 + flip, tiles 360x480 overlapping 64 px' (or 'whole images')."""
    parts = []
    if settings.get("scales") and list(settings["scales"]) != [1.0]:
        parts.append("scales " + ",".join(f"{s:g}" for s in settings["scales"]))
    if settings.get("flip"):
        parts.append("flip")
    aug = " + ".join(parts) if parts else "plain"
    tile = settings.get("tile")
    where = f"tiles {tile[0]}x{tile[1]} overlapping {settings['overlap']} px" if tile else "whole images"
    return f"{aug}, {where}"


def worst_lines(images: list[dict], k: int) -> list[str]:
    from fcn_jax.evaluate import worst_images

    return [
        f"  {r['file_name']}  mean IoU {100 * r['miou']:.1f}  pixel accuracy {100 * r['pixel_accuracy']:.1f}"
        for r in worst_images(images, k)
    ]


def run(args: argparse.Namespace) -> int:
    import jax

    from fcn_jax import evaluate, fsutil, metrics, training
    from fcn_jax import run as run_lib
    from fcn_jax.data import DataError
    from fcn_jax.predict import Segmenter, parse_scales, parse_tile

    def fail(msg: str, code: int = 2) -> int:
        print(f"fcn-jax eval: {msg}", file=sys.stderr)
        return code

    try:
        tile = parse_tile(args.tile)
        scales = None if args.scales is None else parse_scales(args.scales)
    except ValueError as e:
        return fail(f"--tile/--scales: {e}")
    if args.worst < 0:
        return fail(f"--worst must be >= 0, got {args.worst}")
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
        if scales is None or args.flip is None:
            run_scales, run_flip = run.inference()
            scales = run_scales if scales is None else scales
            flip = run_flip if args.flip is None else args.flip
        else:
            flip = args.flip
    except (OSError, ValueError, DataError) as e:  # RunError, SplitNotFound are ValueErrors
        return fail(str(e))
    augment = flip or scales != (1.0,)
    model = trained.model
    if meta.num_classes != model.num_classes:
        return fail(
            f"the model predicts {model.num_classes} classes but {data_dir} has "
            f"{meta.num_classes}; pass the --data-dir the run was trained on"
        )
    mesh = training.data_mesh()
    batch_size = 2 * mesh.size if args.batch_size is None else args.batch_size
    segmenter = None
    if tile or augment:
        try:
            segmenter = Segmenter(
                model, trained.params, meta, batch_size=max(1, batch_size), tile=tile, overlap=args.overlap
            )
        except ValueError as e:
            return fail(f"--tile/--overlap/--batch-size: {e}")
    plain_settings = _inference(tile, args.overlap)
    aug_settings = _inference(tile, args.overlap, scales, flip)
    summary = []
    for split in splits:
        try:
            if tile:
                result, images = evaluate.evaluate_segmenter(
                    segmenter, data_dir, split, progress=not args.quiet, flip=False, scales=(1.0,)
                )
            else:
                result, images = evaluate.evaluate_per_image(
                    model, trained.params, data_dir, split, batch_size, mesh, progress=not args.quiet
                )
            augmented = None
            if augment:
                augmented, aug_images = evaluate.evaluate_segmenter(
                    segmenter, data_dir, split, progress=not args.quiet, flip=flip, scales=scales
                )
        except ValueError as e:
            return fail(f"--batch-size: {e}" if "batch size" in str(e) else str(e))
        title = f"{split} ({meta.splits[split]} images) of {meta.data_dir}"
        print(result.table(f"{title}\ncheckpoint {trained.step_dir}\n{describe_inference(plain_settings)}"))
        if augmented is not None:
            print()
            print(
                metrics.format_comparison(
                    result,
                    augmented,
                    ("plain", "augmented"),
                    f"{split}: plain vs {describe_inference(aug_settings)}",
                )
            )
        if args.worst:
            print(f"\n{min(args.worst, len(images))} {split} images with the lowest mean IoU:")
            print("\n".join(worst_lines(images, args.worst)))
        entry = f"{split} {100 * result.miou:.1f}" if result.miou is not None else f"{split} -"
        if augmented is not None and augmented.miou is not None:
            entry += f" (augmented {100 * augmented.miou:.1f})"
        summary.append(entry)
        if jax.process_index() == 0:
            record = {
                "checkpoint": str(trained.step_dir),
                "split": split,
                "data_dir": str(meta.data_dir),
                "num_images": meta.splits[split],
                "inference": plain_settings,
                **result.to_dict(),
                "images": images,
            }
            if augmented is not None:
                record["augmented"] = {"inference": aug_settings, **augmented.to_dict(), "images": aug_images}
            try:
                fsutil.atomic_write_json(outs[split], record, sort_keys=False)
            except OSError as e:
                return fail(f"--out {outs[split]}: cannot write ({e.strerror or e})")
            print(f"wrote {outs[split]}")
    if len(splits) > 1:
        print(f"mIoU %: {' | '.join(summary)}")
    return 0
