"""Export a trained FCN as one ONNX file, for ONNX Runtime, TensorRT and other ONNX runtimes.

`export_onnx(model, params, meta, "fcn8s.onnx")` (or `fcn-jax export --checkpoint RUN
--format onnx --out fcn8s.onnx`) writes a self-contained ONNX model (opset 17, weights inside):

    input   "images"  uint8 (B, H, W, 3) RGB; B, H and W dynamic unless fixed at export
    outputs "labels"  int32 (B, H, W): the arg-max class of every pixel
            "logits"  float32 (B, H, W, C)
            (output="both"; "labels" or "logits" keeps one)

the same interface as the `jax.export` artifact (fcn_jax.export): raw pixels in, the
normalisation inside the graph (Cast, Mul, Add with the constants of
`fcn_jax.data.normalize`, checked against it at export), NHWC in and out. Class names,
palette, ignore value and variant travel in the model's metadata_props (ONNX Runtime:
`session.get_modelmeta().custom_metadata_map`), so a deployment needs no sidecar file.

Why a direct lowering rather than a converter: jax2onnx, the maintained JAX/Flax converter,
requires orbax-checkpoint < 0.11.37 (this project pins 0.12.8) and pulls equinox, dm-pix and
netron in; converters also trace whatever formulation the model trained with (Winograd
transforms, the sub-pixel upsampling GEMM), which would put those into the graph. The FCN is
a dozen or two layers described by one table (the backbone's in `geometry.BACKBONES`, its
channels in `models.BACKBONE_CHANNELS`), so the graph is built from that table with
`onnx.helper`, in the plain formulation (`ops.OpSet.reference()`, whatever ops the run trained
with): Conv for the backbone's convolutions, fc6, fc7 and the score layers (with
`model.norm="group"`, each backbone convolution's group norm as Reshape,
InstanceNormalization, Reshape, Mul, Add), MaxPool, Relu,
ConvTranspose with the kernel the geometry chose (2f-1 or 2f taps) for the upsampling, Slice
for the crops the geometry derives, Add for the skip fusion, ArgMax. Runtimes
pick their own convolution algorithms for these standard ops. tests/test_deploy.py checks the
graph against the Flax model (values within 1e-4 of the logits' scale) for all three variants
(and tests/test_vgg16.py for FCN-VGG16).

Why H and W can be dynamic: the model pads its input by a fixed amount before the image and by
the least amount after it that puts a stride-32 score cell on or beyond the border
(`geometry.plan_axis`). For every side length n that after-padding is
`stride * ceil((n - shift) / stride) + extra - n` with `shift` and `extra` fixed by the layer
table (AlexNet: shift 1), and
every crop (skip fusion and final) starts at an offset that does not depend on n. Both facts
are derived from the geometry and verified at export (`dynamic_padding`) for every size of the
first two stride periods and for common large sizes,
so the graph computes the padding from the input's shape with a few integer ops, and one ONNX
file serves any image size (>= 1 pixel). Fixing --height/--width makes them constants instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fcn_jax import geometry
from fcn_jax.models import NORM_EPSILON, NORM_GROUPS, check_norm

OPSET = 17  # ONNX Runtime >= 1.13, TensorRT >= 8.6
IR_VERSION = 8  # the IR of opset 17: readable by runtimes older than the onnx package writing it
OUTPUTS = ("both", "labels", "logits")
# Common large sides on which the in-graph padding formula is checked (besides every side of
# the first two stride periods); not all sides: `geometry.plan_axis` costs ~10 ms a call.
CHECKED_SIDES = (360, 480, 512, 720, 1024, 1080, 1280, 1920, 2048, 3840, 4096)


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'fcn_jax[deploy]'") from e
    return onnx


def normalization_constants() -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), float32 (3,): `x * scale + offset` on float32 pixels equals
    `fcn_jax.data.normalize` bit for bit (checked on all 256 values: ValueError if not)."""
    from fcn_jax.data import IMAGENET_MEAN, IMAGENET_STD
    from fcn_jax.export import normalization_table

    scale = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
    offset = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
    values = np.arange(256, dtype=np.float32)[:, None]
    if not np.array_equal(values * scale + offset, normalization_table()):
        raise ValueError("the ONNX normalisation constants no longer reproduce fcn_jax.data.normalize")
    return scale, offset


@functools.lru_cache(maxsize=8)
def dynamic_padding(
    variant: str, backbone: str = "alexnet"
) -> tuple[int, int, int, int, dict[str, int], int]:
    """(pad_before, stride, shift, extra, skip_starts, out_start) such that for every side n
    the model's plan is: pad (pad_before, stride * ceil((n - shift) / stride) + extra - n), the
    given skip crops and final crop. shift is where the padded length first grows (AlexNet:
    1, sides (32(k-1)+1, 32k+1] share it; VGG16: 0, 16 or 8 by variant, its even upsampling
    kernels taking half a fine cell off each side). Verified against `geometry.plan_axis` for
    every n of the first two stride periods and for CHECKED_SIDES; ValueError if the geometry
    does not fit."""
    first = geometry.plan_axis(1, variant, backbone)
    stride = int(geometry.trace(1 << 12, "fc7", backbone=backbone)["fc7"].stride)
    pad_before = first.pad[0]
    total = lambda n: n + sum(geometry.plan_axis(n, variant, backbone).pad)
    grows = next(n for n in range(2, stride + 2) if total(n) != total(n - 1))
    shift = (grows - 1) % stride
    after = lambda n, extra: stride * -(-(n - shift) // stride) + extra - n
    extra = first.pad[1] - after(1, 0)
    for n in [*range(1, 2 * stride + 2), *CHECKED_SIDES]:
        p = geometry.plan_axis(n, variant, backbone)
        if (
            p.pad != (pad_before, after(n, extra))
            or p.skip_starts != first.skip_starts
            or p.out_start != first.out_start
        ):
            raise ValueError(
                f"FCN-{variant}: the padding plan of side {n} does not fit the dynamic-size graph; "
                "export with a fixed --height and --width"
            )
    return pad_before, stride, shift, extra, dict(first.skip_starts), first.out_start


class _Graph:
    """Nodes, initializers and unique names for one ONNX graph."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, out: str | None = None, **attrs):
        out = out or self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def ints(self, hint: str, values) -> str:
        return self.const(self.name(hint), np.asarray(values, np.int64))


def _kernel_oihw(kernel) -> np.ndarray:
    """Flax HWIO -> ONNX Conv's OIHW (both cross-correlation: no flip)."""
    return np.asarray(kernel, np.float32).transpose(3, 2, 0, 1)


def _upsample_kernel(
    params: Mapping, name: str, factor: int, taps: int, channels: int, trainable: bool
) -> np.ndarray:
    """The taps^2 scatter kernel (kh, kw, C, C) -> ConvTranspose's (C_in, C_out, kh, kw).

    Flax's Upsample scatters out[f*i + t] += x[i] @ K[t], which is exactly ConvTranspose's
    definition (and PyTorch's), so the kernel is only transposed, not flipped. An untrainable
    upsampling is the constant bilinear kernel the model builds."""
    if trainable:
        kernel = np.asarray(params[name]["kernel"], np.float32)
    else:
        from fcn_jax.models import bilinear_init

        kernel = np.asarray(bilinear_init(factor, taps)(None, (taps, taps, channels, channels)), np.float32)
    return kernel.transpose(2, 3, 0, 1)


def build_onnx(
    model,
    params: Mapping,
    meta=None,
    *,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    output: str = "both",
):
    """The FCN `model` (an `fcn_jax.models.FCN`) with `params` as an `onnx.ModelProto` (see
    the module doc). `batch`, `height`, `width`: None keeps that dimension dynamic. Nothing
    is written; `export_onnx` writes the file."""
    onnx = _require_onnx()
    from onnx import TensorProto

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    for what, v in (("batch", batch), ("height", height), ("width", width)):
        if v is not None and int(v) < 1:
            raise ValueError(f"{what} must be >= 1 (or None for any size), got {v}")
    if (height is None) != (width is None):
        raise ValueError("fix both height and width, or neither")
    variant, c = model.variant, int(model.num_classes)
    backbone = getattr(model, "backbone", "alexnet")
    geometry.check_variant(variant)
    layers = geometry.get_backbone(backbone).layers
    kernels = geometry.plan_axis(1, variant, backbone).kernels  # the same for every size
    params = {k: dict(v) for k, v in params.items()}
    g = _Graph(onnx)
    h = g.helper

    # -- uint8 NHWC -> normalised float NCHW, padded as the model pads -----------------------
    scale, offset = normalization_constants()
    x = g.op("Cast", ["images"], "pixels", to=TensorProto.FLOAT)
    x = g.op("Mul", [x, g.const("norm_scale", scale)], "scaled")
    x = g.op("Add", [x, g.const("norm_offset", offset)], "normalized")
    x = g.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    if height is not None:
        plan = geometry.plan(int(height), int(width), variant, backbone)
        (bh, ah), (bw, aw) = plan.pads
        pads = g.ints("pads", [0, 0, bh, bw, 0, 0, ah, aw])
        skip_starts = {
            t: (plan.height.skip_starts[t], plan.width.skip_starts[t]) for t in plan.height.skip_starts
        }
        out_start = (plan.height.out_start, plan.width.out_start)
        image_hw = g.ints("image_hw", [int(height), int(width)])
    else:
        before, stride, shift, extra, starts, start = dynamic_padding(variant, backbone)
        skip_starts = {t: (s, s) for t, s in starts.items()}
        out_start = (start, start)
        image_hw = g.op("Slice", [g.op("Shape", ["images"]), g.ints("k", [1]), g.ints("k", [3])], "image_hw")
        # after = stride * ceil((n - shift) / stride) + extra - n; n >= 1 > shift - stride, so
        # Div (truncating) floors n - shift + stride - 1 >= 0.
        up = stride - 1 - shift
        cells = g.op("Div", [g.op("Add", [image_hw, g.ints("k", [up, up])]), g.ints("k", [stride])])
        after = g.op(
            "Sub",
            [g.op("Add", [g.op("Mul", [cells, g.ints("k", [stride])]), g.ints("k", [extra])]), image_hw],
        )
        pads = g.op("Concat", [g.ints("k", [0, 0, before, before, 0, 0]), after], "pads", axis=0)
    x = g.op("Pad", [x, pads], "padded", mode="constant")

    # -- the backbone's convolutions and pools (its layer table), fc6, fc7 --------------------
    norm = getattr(model, "norm", "none")
    check_norm(norm)

    def group_norm(x: str, name: str) -> str:
        # Opset 17 has no GroupNormalization: InstanceNormalization over (N, groups, C/groups*H*W)
        # normalises each group, then the per-channel scale and bias apply in (N, C, H, W).
        p = params[f"{name}_norm"]
        ones, zeros = np.ones(NORM_GROUPS, np.float32), np.zeros(NORM_GROUPS, np.float32)
        grouped = g.op("Reshape", [x, g.ints("k", [0, NORM_GROUPS, -1])], f"{name}_groups")
        grouped = g.op(
            "InstanceNormalization",
            [grouped, g.const(f"{name}_norm.ones", ones), g.const(f"{name}_norm.zeros", zeros)],
            f"{name}_grouped_norm",
            epsilon=NORM_EPSILON,
        )
        x = g.op("Reshape", [grouped, g.op("Shape", [x])], f"{name}_norm_nchw")
        per_channel = {k: np.asarray(p[k], np.float32).reshape(1, -1, 1, 1) for k in ("scale", "bias")}
        x = g.op("Mul", [x, g.const(f"{name}_norm.scale", per_channel["scale"])], f"{name}_norm_scaled")
        return g.op("Add", [x, g.const(f"{name}_norm.bias", per_channel["bias"])], f"{name}_norm")

    taps = {}
    for name, w in layers.items():
        if name.startswith("fc"):
            break
        if name.startswith("pool"):
            x = g.op("MaxPool", [x], name, kernel_shape=[w.kernel, w.kernel], strides=[w.stride, w.stride])
            taps[name] = x
            continue
        p = params[name]
        x = g.op(
            "Conv",
            [
                x,
                g.const(f"{name}.weight", _kernel_oihw(p["kernel"])),
                g.const(f"{name}.bias", np.asarray(p["bias"], np.float32)),
            ],
            name,
            kernel_shape=[w.kernel, w.kernel],
            strides=[w.stride, w.stride],
            pads=[w.padding] * 4,
        )
        if norm == "group":
            x = group_norm(x, name)
        x = g.op("Relu", [x], f"{name}_relu")

    def conv1x1_or_dense(x: str, name: str) -> str:
        p = params[name]
        kernel = _kernel_oihw(p["kernel"])
        return g.op(
            "Conv",
            [
                x,
                g.const(f"{name}.weight", kernel),
                g.const(f"{name}.bias", np.asarray(p["bias"], np.float32)),
            ],
            name,
            kernel_shape=list(kernel.shape[2:]),
        )

    for name in ("fc6", "fc7"):  # dropout is the identity at inference
        x = g.op("Relu", [conv1x1_or_dense(x, name)], f"{name}_relu")
    score = conv1x1_or_dense(x, "score_fr")

    def upsample(x: str, name: str, factor: int, taps: int) -> str:
        kernel = _upsample_kernel(params, name, factor, taps, c, bool(model.trainable_upsampling))
        return g.op(
            "ConvTranspose",
            [x, g.const(f"{name}.weight", kernel)],
            name,
            kernel_shape=[taps] * 2,
            strides=[factor, factor],
            # Keeps the cells between the first and last input cell: (n-1)f+1 with 2f-1 taps,
            # (n-1)f with 2f (ops.upsample_reference).
            pads=[taps - factor] * 4,
        )

    def crop(x: str, start: tuple[int, int], size: str, hint: str) -> str:
        starts = g.ints("k", list(start))
        return g.op("Slice", [x, starts, g.op("Add", [starts, size]), g.ints("k", [2, 3])], hint)

    # -- skip fusion and the final upsampling -----------------------------------------------
    stride = 32
    while stride > geometry.output_stride(variant):
        stride //= 2
        tap = geometry.get_backbone(backbone).skip_taps[stride]
        up = upsample(score, f"upscore{stride}", 2, kernels[stride])
        skip = conv1x1_or_dense(taps[tap], f"score_{tap}")
        up_hw = g.op("Slice", [g.op("Shape", [up]), g.ints("k", [2]), g.ints("k", [4])], "up_hw")
        score = g.op("Add", [up, crop(skip, skip_starts[tap], up_hw, f"score_{tap}_crop")], f"fuse{stride}")
    up = upsample(score, f"upscore_final{stride}", stride, kernels[1])
    logits_nchw = crop(up, out_start, image_hw, "logits_nchw")

    b = batch if batch is not None else "batch"
    hh = height if height is not None else "height"
    ww = width if width is not None else "width"
    outputs = []
    if output in ("both", "labels"):
        g.op(
            "Cast",
            [g.op("ArgMax", [logits_nchw], "argmax", axis=1, keepdims=0)],
            out="labels",
            to=TensorProto.INT32,
        )
        outputs.append(h.make_tensor_value_info("labels", TensorProto.INT32, [b, hh, ww]))
    if output in ("both", "logits"):
        g.op("Transpose", [logits_nchw], out="logits", perm=[0, 2, 3, 1])
        outputs.append(h.make_tensor_value_info("logits", TensorProto.FLOAT, [b, hh, ww, c]))

    graph = h.make_graph(
        g.nodes,
        f"fcn_{backbone}_{variant}",
        [h.make_tensor_value_info("images", TensorProto.UINT8, [b, hh, ww, 3])],
        outputs,
        initializer=g.initializers,
    )
    proto = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="fcn_jax",
        doc_string=(
            f"FCN-{backbone} {variant}: uint8 RGB images (B, H, W, 3) in, normalised inside; "
            "labels int32 (B, H, W) and/or logits float32 (B, H, W, C) out"
        ),
    )
    h.set_model_props(proto, metadata(model, meta))
    onnx.checker.check_model(proto)
    return proto


def metadata(model, meta) -> dict[str, str]:
    """What a deployment needs to read the outputs, as ONNX metadata_props (strings)."""
    from fcn_jax.data import IMAGENET_MEAN, IMAGENET_STD

    c = int(model.num_classes)
    return {
        "format": "fcn_jax.onnx/1",
        "variant": str(model.variant),
        "backbone": str(getattr(model, "backbone", "alexnet")),
        "num_classes": str(c),
        "class_names": json.dumps(list(meta.class_names) if meta is not None else [str(i) for i in range(c)]),
        "palette": json.dumps(np.asarray(meta.palette).tolist() if meta is not None else None),
        "ignore_index": json.dumps(int(meta.ignore_index) if meta is not None else None),
        "normalization": json.dumps(
            {
                "inside": "(x / 255 - mean) / std per RGB channel",
                "mean": IMAGENET_MEAN.tolist(),
                "std": IMAGENET_STD.tolist(),
            }
        ),
        "formulation": "plain (XLA-reference ops: Conv, MaxPool, ConvTranspose), float32",
    }


def export_onnx(
    model,
    params: Mapping,
    meta,
    out,
    *,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    output: str = "both",
) -> dict[str, Any]:
    """Write the ONNX file atomically (a failure leaves an existing file at `out` as it was);
    returns a summary: input shape (None = dynamic), outputs, size in bytes, sha256."""
    import hashlib

    from fcn_jax.fsutil import atomic_write_bytes, check_writable_dir

    out = Path(out)
    if out.is_dir():
        raise OSError(f"output {out}: is a directory; give a file name")
    check_writable_dir(out.parent, "output directory")
    proto = build_onnx(model, params, meta, batch=batch, height=height, width=width, output=output)
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    return {
        "input": [batch, height, width, 3],
        "outputs": [o.name for o in proto.graph.output],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "opset": OPSET,
    }
