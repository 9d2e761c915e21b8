"""`fcn-jax export --checkpoint PATH --out OUT [--format jaxexport|onnx|safetensors]`.

jaxexport (the default, unless OUT ends with .onnx): OUT is a serialized jax.export artifact
(uint8 RGB images in, class ids and/or logits out, normalisation inside), with
OUT.weights.npz and OUT.json beside it; load it with `fcn_jax.export.load(OUT)` or plain jax
(docs/inference.md). H and W are fixed (--height/--width, default 360x480).

onnx: OUT is one ONNX file with the same interface, in the plain formulation, for ONNX
Runtime, TensorRT and other runtimes; batch, height and width are dynamic unless --batch,
--height/--width fix them (fcn_jax/onnx_export.py).

safetensors: OUT is a folder, model.safetensors + config.json (model spec, class names,
palette, normalisation, the weights' sha256), what `Segmenter.from_pretrained` and
`fcn-jax predict --checkpoint` load, locally or from a Hugging Face Hub repo.

PATH is a run directory, a step directory in one, or a pretrained folder. docs/deploy.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Export a trained model: jax.export artifact, ONNX file or safetensors folder."
FORMATS = ("jaxexport", "onnx", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run directory (best, else latest checkpoint), a step directory, or a pretrained folder",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="jaxexport: artifact file (FILE.json and FILE.weights.npz beside it); onnx: the .onnx file; "
        "safetensors: a folder",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="jaxexport (default), onnx (the default when --out ends with .onnx) or safetensors",
    )
    parser.add_argument(
        "--height",
        type=int,
        default=None,
        help="input height in pixels (jaxexport: default 360; onnx: default dynamic)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="input width in pixels (jaxexport: default 480; onnx: default dynamic)",
    )
    parser.add_argument("--batch", type=int, default=None, help="fixed batch size (default: any)")
    parser.add_argument(
        "--output",
        choices=("both", "labels", "logits"),
        default="both",
        help="what the artifact returns (default both: labels and logits)",
    )
    parser.add_argument(
        "--platforms",
        default=None,
        help="jaxexport only: comma-separated lowering platforms: cpu, cuda, rocm, tpu (default cpu,cuda)",
    )


def _check_args(args: argparse.Namespace, fmt: str) -> str | None:
    """Why these arguments do not fit the format (None: they do)."""
    if (args.height is not None and args.height < 1) or (args.width is not None and args.width < 1):
        return f"--height/--width must be >= 1, got {args.height}x{args.width}"
    if args.batch is not None and args.batch < 1:
        return f"--batch must be >= 1, got {args.batch}"
    if fmt != "jaxexport" and args.platforms is not None:
        return "--platforms applies to --format jaxexport only"
    if fmt == "onnx" and (args.height is None) != (args.width is None):
        return "--format onnx: give both --height and --width (fixed size) or neither (any size)"
    if fmt == "safetensors":
        given = [f"--{k}" for k in ("height", "width", "batch") if getattr(args, k) is not None] + (
            ["--output"] if args.output != "both" else []
        )
        if given:
            return (
                f"{', '.join(given)}: not used by --format safetensors (it writes the weights, not a program)"
            )
    return None


def run(args: argparse.Namespace) -> int:
    from fcn_jax import export, pretrained
    from fcn_jax.fsutil import check_writable_dir

    def fail(msg: str) -> int:
        print(f"fcn-jax export: {msg}", file=sys.stderr)
        return 2

    out = Path(args.out)
    fmt = args.format or ("onnx" if out.suffix.lower() == ".onnx" else "jaxexport")
    problem = _check_args(args, fmt)
    if problem:
        return fail(problem)
    platforms = None
    if fmt == "jaxexport":
        # Checked before the (slow) checkpoint load, so a typo or an unwritable --out fails at once.
        try:
            platforms = export.check_platforms(
                [p.strip() for p in (args.platforms or "cpu,cuda").split(",") if p.strip()]
            )
        except ValueError as e:
            return fail(f"--platforms {args.platforms}: {e}")
    try:
        if fmt == "safetensors":
            if out.exists() and not out.is_dir():
                raise OSError(
                    f"--out {out}: exists and is not a folder (--format safetensors writes a folder)"
                )
            check_writable_dir(out, "--out")
        else:
            if out.is_dir():
                raise OSError(f"--out {out}: is a directory; give a file name")
            check_writable_dir(out.parent, "--out directory")
    except OSError as e:
        return fail(str(e))
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            return fail("--format onnx needs the onnx package: pip install 'fcn_jax[deploy]'")
    try:
        loaded = pretrained.load_model(args.checkpoint)
    except (OSError, ValueError) as e:
        return fail(f"--checkpoint: {e}")
    model, params, meta = loaded.model, loaded.params, loaded.meta

    if fmt == "safetensors":
        try:
            spec = pretrained.spec_of(loaded)
            if isinstance(loaded, pretrained.Pretrained):  # re-exported: keep where it came from
                source = loaded.config.get("trained_from")
            else:  # names only: absolute paths of this machine mean nothing on a hub
                step = loaded.step_dir
                source = {"run": loaded.run.root.name, "checkpoint": f"{step.parent.name}/{step.name}"}
            config = pretrained.save_pretrained(spec, params, meta, out, source)
        except (OSError, ValueError) as e:
            return fail(str(e))
        print(
            f"wrote {out / pretrained.WEIGHTS_FILE} and {out / pretrained.CONFIG_FILE} "
            f"(FCN-{spec.variant}, {spec.num_classes} classes)"
        )
        print(f"sha256 {config['weights']['sha256']}")
        return 0

    if fmt == "onnx":
        from fcn_jax import onnx_export

        try:
            side = onnx_export.export_onnx(
                model,
                params,
                meta,
                out,
                batch=args.batch,
                height=args.height,
                width=args.width,
                output=args.output,
            )
        except (ValueError, OSError) as e:
            return fail(str(e))
        shape = ["any" if d is None else d for d in side["input"]]
        print(
            f"wrote {out} (ONNX opset {side['opset']}, input uint8 {shape}, outputs "
            f"{', '.join(side['outputs'])}, {side['bytes'] / 2**20:.0f} MiB)"
        )
        print(f"sha256 {side['sha256']}")
        return 0

    height = 360 if args.height is None else args.height
    width = 480 if args.width is None else args.width
    try:
        side = export.export_model(
            model, params, meta, out, height, width, args.batch, args.output, platforms
        )
    except (ValueError, OSError) as e:
        return fail(str(e))
    print(
        f"wrote {args.out} ({side['platforms']}, input uint8 {side['input']['shape']}, "
        f"outputs {', '.join(side['outputs'])}), {export.weights_path(args.out)} and "
        f"{export.sidecar_path(args.out)}"
    )
    return 0
