"""The network layer by layer, for one input size: `fcn-jax describe` and `describe()`.

AlexNet -> FCN is taught with two tables: AlexNet's layers with their output sizes
(224 -> 55 -> 27 -> 13 -> 6 -> 1) and parameter counts, and what happens to those sizes
when fc6/fc7 become convolutions and the input grows. Someone choosing an input size, a
crop or a batch for a memory budget needs that table for their own case, so it is built
here from what the model itself is built from, never retyped:

* windows (kernel, stride, padding) and skip taps from the backbone's table in
  `geometry.BACKBONES` (AlexNet or VGG16), channels from `models.BACKBONE_CHANNELS`;
* sizes, output strides and where cell 0's receptive field is centred from the
  geometry's grids (`Grid.through` / `Grid.upsampled`), with the input padding and skip
  crops and upsampling kernels that `geometry.plan` chooses for the FCN;
* parameter counts from the shapes of `model.init` (`jax.eval_shape`: nothing runs);
* FLOPs counted analytically the way XLA's cost analysis counts the straightforward
  program (`ops.OpSet.reference()`), which is what benchmarks/throughput.py reports as
  "model FLOPs" (`Row.flops` says what is included).

In a notebook: `d = describe("fcn", (360, 480), "8s", num_classes=11)` (`backbone="vgg16"`
for FCN-VGG16, `describe("vgg16")` for the classifier); `d.rows` (or
`d.to_dict()["rows"]`, e.g. for a pandas DataFrame), `d.totals()`, `format_table(d)`.

tests/test_describe.py checks sizes and strides against the shapes the model produces,
receptive fields against which cells a NaN pixel reaches, and the totals against the
initialised model and XLA's count.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from fcn_jax import geometry
from fcn_jax.geometry import Grid, Window

MODELS = ("alexnet", "vgg16", "fcn")  # the two classifiers, and the FCN on either (backbone)
CLASSIFIER_NAMES = {"alexnet": "AlexNet", "vgg16": "VGG16"}
# torchvision's AlexNet crop: there the classifier sees pool5 as the 6x6 map fc6 was
# trained on, i.e. one fc7 cell (a test checks it against the geometry).
ALEXNET_INPUT = 224
ALEXNET_CLASSES = 1000  # ImageNet
BYTES_PER_VALUE = 4  # float32 activations
# The train step's optimizer as XLA counts it, per parameter: SGD with momentum and weight
# decay, the base config's (and the throughput benchmark's) recipe. A kernel: decay
# (multiply, add), momentum (multiply, add), learning rate (multiply), update (add); a bias
# has no decay. Plus the step's gradient and parameter norms: a square and an add each.
SGD_FLOPS = {"kernel": 6, "bias": 4}
NORM_FLOPS = 4


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer of the table, per image."""

    name: str
    kind: str  # input, pad, conv, pool, fc as conv, score, upsample, crop + sum, upsample + crop
    source: str  # the row(s) it reads
    window: str  # kernel, stride, padding: "11x11 s4 p2"; "3x3 s1/2" for a 2x upsampling
    size: tuple[int, int]  # output (H, W)
    channels: int
    out_stride: Fraction  # image pixels between neighbouring output cells
    # Receptive field: how many image pixels (zero padding included) along each axis one
    # output cell depends on; where cells differ (upsampled maps: a cell between two coarse
    # cells reads both) the widest, `Description.reach` has every cell's. `centre`: the
    # image coordinate (y, x) of cell (0, 0)'s field centre, negative in the FCN's padding.
    receptive_field: int
    centre: tuple[Fraction, Fraction]
    params: int
    # Forward FLOPs as XLA's cost analysis counts the reference program: 2 per
    # multiply-add of a convolution, matrix product or transposed convolution (only taps
    # on real input cells, not on a convolution's implicit zero padding; the reference
    # upsampling is the whole transposed convolution, cropped afterwards), 1 per bias
    # add, ReLU and sum, and k*k - 1 comparisons per pooling output.
    flops: int
    # Forward, plus the backward products (input gradient and weight gradient, each as
    # many multiply-adds as the forward; no input gradient for the image) and 1 FLOP per
    # output for the elementwise backward (ReLU, bias, pooling).
    train_flops: int
    note: str = ""

    @property
    def elements(self) -> int:
        return self.size[0] * self.size[1] * self.channels

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["out_stride"] = _number(self.out_stride)
        d["centre"] = [_number(c) for c in self.centre]
        return d


@dataclasses.dataclass(frozen=True)
class Description:
    """The rows, and what the table's footer says about them."""

    model: str
    variant: str | None
    size: tuple[int, int]
    num_classes: int
    batch: int
    rows: tuple[Row, ...]
    optimizer_flops: int  # per train step (shared by the batch)
    padding: tuple[tuple[int, int], tuple[int, int]] | None  # FCN: ((top, bottom), (left, right))
    skip_crops: dict[str, tuple[int, int]]  # tap -> (row, col) of its score map where the fused part starts
    output_crop: tuple[int, int] | None  # FCN: (row, col) of the last upsampled map that is pixel (0, 0)
    classifier: dict[str, dict]  # "224x224" and "HxW" -> what the classifier outputs there
    # Row name -> per axis, per cell: the first and last image pixel (zero padding included)
    # the cell depends on. The receptive-field column is the widest of these.
    reach: dict[str, tuple[Spans, Spans]] = dataclasses.field(default_factory=dict, repr=False)
    backbone: str = "alexnet"  # the classifier's own layers, or the FCN's backbone

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def forward_flops(self) -> int:
        """Per image, as XLA counts `model.apply` of the reference program."""
        return sum(r.flops for r in self.rows)

    @property
    def train_flops(self) -> float:
        """Per image at the batch: every row's forward and backward, and the optimizer step
        divided by the batch. Not counted: the loss (~5 FLOPs per pixel and class) and the
        dropout masks' random bits: with them, XLA's count was 0.07-0.11 % higher from 33x97
        to 360x480 (the test allows 0.5 %)."""
        return sum(r.train_flops for r in self.rows) + self.optimizer_flops / self.batch

    @property
    def activation_bytes(self) -> int:
        """float32 output of every row, once, at the batch: the least a train step keeps for
        its backward pass (a layer's output is the next one's input, and gives its ReLU's
        mask). Compiled train steps hold more: pre-ReLU values, activation gradients and
        temporaries (XLA on CPU, reference ops: 1.6-2.6x this per image for the FCN, measured
        from 97x129 to 360x480); parameters, gradients and optimizer state (3x `params` in
        float32) come on top."""
        return sum(r.elements for r in self.rows) * BYTES_PER_VALUE * self.batch

    def totals(self) -> dict:
        return {
            "params": self.params,
            "params_mib": self.params * BYTES_PER_VALUE / 2**20,
            "forward_gflop_per_image": self.forward_flops / 1e9,
            "train_gflop_per_image": self.train_flops / 1e9,
            "activation_mib": self.activation_bytes / 2**20,
            "batch": self.batch,
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "backbone": self.backbone,
            "variant": self.variant,
            "size": list(self.size),
            "num_classes": self.num_classes,
            "batch": self.batch,
            "rows": [r.to_dict() for r in self.rows],
            "padding": None if self.padding is None else [list(p) for p in self.padding],
            "skip_crops": {k: list(v) for k, v in self.skip_crops.items()},
            "output_crop": None if self.output_crop is None else list(self.output_crop),
            "classifier": self.classifier,
            "totals": self.totals(),
        }


def _number(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


# -- counting -------------------------------------------------------------------------


def _taps(n_in: int, n_out: int, w: Window) -> int:
    """Kernel taps that land on input cells (not on the implicit zero padding), summed over
    the outputs, along one axis: the multiply-adds XLA counts for a padded convolution."""
    total = 0
    for o in range(n_out):
        start = w.stride * o - w.padding
        total += min(n_in, start + w.kernel) - max(0, start)
    return total


Spans = tuple[tuple[Fraction, Fraction], ...]  # per cell along one axis: first and last pixel it reads


def _spans(g: Grid, rf: int) -> Spans:
    half = Fraction(rf - 1, 2)
    return tuple((g.offset + g.stride * i - half, g.offset + g.stride * i + half) for i in range(g.size))


@dataclasses.dataclass(frozen=True)
class _Map:
    """A feature map along both axes: its grids, channels, and which image pixels (zero
    padding included) each of its cells depends on, per axis."""

    h: Grid
    w: Grid
    channels: int
    spans: tuple[Spans, Spans]

    @classmethod
    def uniform(cls, h: Grid, w: Grid, rf: int, channels: int) -> _Map:
        """Every cell reads an rf-pixel window centred on it (convolutions and pools)."""
        return cls(h, w, channels, (_spans(h, rf), _spans(w, rf)))

    @property
    def size(self) -> tuple[int, int]:
        return self.h.size, self.w.size

    @property
    def elements(self) -> int:
        return self.h.size * self.w.size * self.channels

    @property
    def rf(self) -> int:
        """The widest receptive field of a cell."""
        return int(max(hi - lo + 1 for axis in self.spans for lo, hi in axis))

    def through(self, w: Window, channels: int) -> _Map:
        if self != _Map.uniform(self.h, self.w, self.rf, self.channels):
            raise NotImplementedError("a window over a map whose cells read unequal fields")
        # Each further tap of the window reaches one input stride (in pixels) further.
        rf = self.rf + (w.kernel - 1) * int(self.h.stride)
        return _Map.uniform(self.h.through(w), self.w.through(w), rf, channels)

    def upsampled(self, factor: int, taps: int | None = None) -> _Map:
        """`Grid.upsampled`: with 2f-1 taps (the default) fine cell f*m + t reads coarse cell m,
        and m + 1 when t > 0 (the kernel centred on each coarse cell reaches f - 1 cells either
        side); with 2f taps every fine cell f*m + t lies between coarse cells m and m + 1 and
        reads both."""
        odd = taps is None or taps % 2 == 1
        spans = tuple(
            tuple(
                (axis[m][0], axis[m + (t > 0 or not odd)][1])
                for m, t in (divmod(i, factor) for i in range(grid_size))
            )
            for axis, grid_size in ((a, (len(a) - 1) * factor + odd) for a in self.spans)
        )
        return _Map(self.h.upsampled(factor, taps), self.w.upsampled(factor, taps), self.channels, spans)

    def cropped(self, h: Grid, w: Grid) -> _Map:
        """The part of this map on grids h, w (a sub-grid, or ValueError)."""
        sh, sw = self.h.start_of(h), self.w.start_of(w)
        return _Map(h, w, self.channels, (self.spans[0][sh : sh + h.size], self.spans[1][sw : sw + w.size]))

    def plus(self, other: _Map) -> _Map:
        """The sum of two maps on the same grids: each cell reads what both cells read."""
        assert (self.h, self.w) == (other.h, other.w)
        spans = tuple(
            tuple((min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(x, y))
            for x, y in zip(self.spans, other.spans)
        )
        return _Map(self.h, self.w, self.channels, spans)


def _image(h: int, w: int, top: int = 0, left: int = 0) -> _Map:
    """An (h, w) RGB map whose pixel (0, 0) is image pixel (-top, -left)."""
    one = Fraction(1)
    return _Map.uniform(Grid(Fraction(-top), one, h), Grid(Fraction(-left), one, w), 1, 3)


def _window(w: Window) -> str:
    return f"{w.kernel}x{w.kernel} s{w.stride}" + (f" p{w.padding}" if w.padding else "")


class _Builder:
    """Appends rows, keeping every map by name; parameters are looked up by row name."""

    def __init__(self, params: dict, backbone: str = "alexnet"):
        self.params = params
        self.layers = geometry.get_backbone(backbone).layers
        self.rows: list[Row] = []
        self.maps: dict[str, _Map] = {}

    def add(self, name, kind, source, window, m: _Map, flops=0, backward=0, note="") -> _Map:
        params = sum(_count(leaf.shape) for leaf in _leaves(self.params.get(name, {})))
        row = Row(name, kind, source, window, m.size, m.channels, m.h.stride, m.rf, (m.h.offset, m.w.offset),
                  params, flops, flops + backward, note)  # fmt: skip
        self.rows.append(row)
        self.maps[name] = m
        return m

    def conv(self, name: str, src: str, channels: int, kind: str = "conv", relu: bool = True) -> _Map:
        """Layer `name` of the backbone's table, or a 1x1 score / fc8 layer, reading map `src`."""
        x = self.maps[src]
        w = self.layers.get(name, Window(1))
        m = x.through(w, channels)
        macs = x.channels * channels * _taps(x.h.size, m.h.size, w) * _taps(x.w.size, m.w.size, w)
        elementwise = m.elements * (2 if relu else 1)  # bias add (+ ReLU)
        # No input gradient where the input is the image.
        products = 1 if self._row(src).kind in ("input", "pad") else 2
        return self.add(
            name, kind, src, _window(w), m, 2 * macs + elementwise, products * 2 * macs + m.elements
        )

    def pool(self, name: str, src: str) -> _Map:
        x = self.maps[src]
        w = self.layers[name]
        m = x.through(w, x.channels)
        return self.add(name, "pool", src, _window(w), m, (w.kernel**2 - 1) * m.elements, m.elements)

    def upsample(
        self,
        name: str,
        src: str,
        factor: int,
        taps: int | None = None,
        crop: tuple[Grid, Grid] | None = None,
        note="",
    ) -> _Map:
        """Stride-`factor` transposed convolution with a taps^2 kernel (default 2f-1), keeping
        the cells between the first and the last input cell (`Grid.upsampled`), or only `crop`."""
        x = self.maps[src]
        up, kind = x.upsampled(factor, taps), "upsample"
        if crop is not None:
            up, kind = up.cropped(*crop), "upsample + crop"
        k = 2 * factor - 1 if taps is None else taps
        macs = x.h.size * x.w.size * k * k * x.channels * up.channels  # the whole scatter
        return self.add(name, kind, src, f"{k}x{k} s1/{factor}", up, 2 * macs, 2 * 2 * macs, note)

    def _row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def finish(self) -> tuple[tuple[Row, ...], int, dict]:
        """The rows, the optimizer's FLOPs per step, and each row's reach; every parameter
        belongs to a row."""
        unplaced = set(self.params) - {r.name for r in self.rows}
        if unplaced:
            raise AssertionError(f"parameters of {sorted(unplaced)} are in no row")
        optimizer = 0
        for layer in self.params.values():
            for kind, leaf in layer.items():
                optimizer += (SGD_FLOPS[kind] + NORM_FLOPS) * _count(leaf.shape)
        return tuple(self.rows), optimizer, {name: m.spans for name, m in self.maps.items()}


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- the two models ---------------------------------------------------------------------


def _param_shapes(model) -> dict:
    """The parameter tree's shapes (jax.eval_shape: traced, not run)."""
    import jax
    import jax.numpy as jnp

    images = jax.ShapeDtypeStruct((1, ALEXNET_INPUT, ALEXNET_INPUT, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]


def _backbone(b: _Builder, src: str, backbone: str) -> None:
    """The backbone's table in order (conv1 ... fc7) after map `src`."""
    from fcn_jax.models import BACKBONE_CHANNELS

    channels = BACKBONE_CHANNELS[backbone]
    for name in b.layers:
        if name.startswith("pool"):
            b.pool(name, src)
        else:
            b.conv(name, src, channels[name], "fc as conv" if name.startswith("fc") else "conv")
        src = name


def min_classifier_side(backbone: str = "alexnet") -> int:
    """Smallest image side that leaves the classifier one fc7 cell (AlexNet's fc6 needs a
    6x6 pool5, VGG16's a 7x7 one)."""
    side = 1
    while geometry.trace(side, "fc7", backbone=backbone)["fc7"].size < 1:
        side += 1
    return side


def min_alexnet_side() -> int:
    return min_classifier_side("alexnet")


def fcn_defaults() -> tuple[tuple[int, int], int]:
    """The FCN's default size and classes: the base config's training crop, CamVid's classes."""
    from fcn_jax.config import base_config
    from fcn_jax.data.camvid import NUM_CLASSES

    return tuple(base_config().data.crop_size), NUM_CLASSES


def describe(
    model: str = "fcn",
    size: tuple[int, int] | None = None,
    variant: str | None = None,
    num_classes: int | None = None,
    batch: int = 1,
    backbone: str | None = None,
) -> Description:
    """The table for `model` ("alexnet", "vgg16" or "fcn") at `size` (H, W). Defaults: the
    classifiers at 224x224 with 1000 classes; FCN-32s on `backbone` (default alexnet) at the
    base config's crop (360x480) with CamVid's 11 classes. Raises ValueError naming the bad
    argument."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if model != "fcn" and variant is not None:
        raise ValueError("variant applies to the FCN only (model fcn)")
    if model != "fcn" and backbone is not None:
        raise ValueError(f"backbone applies to the FCN only (model fcn); model {model} is a classifier")
    backbone = "alexnet" if backbone is None else backbone
    geometry.get_backbone(backbone)
    if model == "fcn":
        variant = "32s" if variant is None else variant
        geometry.check_variant(variant)
        default_size, default_classes = fcn_defaults()
    else:
        default_size, default_classes = (ALEXNET_INPUT, ALEXNET_INPUT), ALEXNET_CLASSES
    h, w = default_size if size is None else size
    num_classes = default_classes if num_classes is None else num_classes
    if h < 1 or w < 1:
        raise ValueError(f"size must be at least 1x1, got {h}x{w}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if model != "fcn":
        return _describe_classifier(model, h, w, num_classes, batch)
    return _describe_fcn(h, w, variant, num_classes, batch, backbone)


def _sizes(h: int, w: int) -> list[tuple[int, int]]:
    """AlexNet's own input size, then the one asked for (once if they are the same)."""
    return list(dict.fromkeys([(ALEXNET_INPUT, ALEXNET_INPUT), (h, w)]))


def _describe_classifier(arch: str, h: int, w: int, num_classes: int, batch: int) -> Description:
    from fcn_jax.models import VGG16, AlexNet

    side, fc6 = min_classifier_side(arch), geometry.get_backbone(arch).layers["fc6"].kernel
    if h < side or w < side:
        raise ValueError(
            f"{CLASSIFIER_NAMES[arch]} needs at least {side}x{side} pixels (fc6 reads {fc6}x{fc6} "
            f"pool5 cells), got {h}x{w}; the FCN pads smaller images"
        )
    b = _Builder(_param_shapes({"alexnet": AlexNet, "vgg16": VGG16}[arch](num_classes)), arch)
    b.add("image", "input", "", "", _image(h, w))
    _backbone(b, "image", arch)
    b.conv("fc8", "fc7", num_classes, "fc as conv", relu=False)
    rows, optimizer, reach = b.finish()
    classifier = {}
    for hh, ww in _sizes(h, w):
        oh, ow = (geometry.trace(n, "fc7", backbone=arch)["fc7"].size for n in (hh, ww))
        classifier[f"{hh}x{ww}"] = {
            "layer": "fc8",
            "shape": [oh, ow, num_classes],
            "stride": _number(b.maps["fc8"].h.stride),
            "what": "one score vector per image" if (oh, ow) == (1, 1) else "a coarse score map",
        }
    return Description(
        arch, None, (h, w), num_classes, batch, rows, optimizer, None, {}, None, classifier, reach, arch
    )


def _describe_fcn(h: int, w: int, variant: str, num_classes: int, batch: int, backbone: str) -> Description:
    from fcn_jax.models import FCN

    plan = geometry.plan(h, w, variant, backbone)
    (top, bottom), (left, right) = plan.pads
    b = _Builder(_param_shapes(FCN(num_classes, variant, backbone=backbone)), backbone)
    b.add("image", "input", "", "", _image(h, w))
    padded = _image(h + top + bottom, w + left + right, top, left)
    b.add(
        "pad",
        "pad",
        "image",
        "",
        padded,
        note=f"zeros: +{top}/{bottom} rows, +{left}/{right} cols",
    )
    _backbone(b, "pad", backbone)
    score = b.conv("score_fr", "fc7", num_classes, "score", relu=False)
    stride, src = 32, "score_fr"
    while stride > geometry.output_stride(variant):
        stride //= 2
        tap = geometry.get_backbone(backbone).skip_taps[stride]
        up = b.upsample(f"upscore{stride}", src, 2, plan.kernels[stride])
        skip = b.conv(f"score_{tap}", tap, num_classes, "score", relu=False)
        sh, sw = plan.height.skip_starts[tap], plan.width.skip_starts[tap]
        assert (sh, sw) == (skip.h.start_of(up.h), skip.w.start_of(up.w))
        score = up.plus(skip.cropped(up.h, up.w))
        note = f"score_{tap}[{sh}:{sh + up.h.size}, {sw}:{sw + up.w.size}] + upscore{stride}"
        src = f"fuse{stride}"
        b.add(src, "crop + sum", f"upscore{stride}, score_{tap}", "", score, score.elements, 0, note)
    image = _image(h, w)
    oh, ow = plan.height.out_start, plan.width.out_start
    full = score.h.upsampled(stride, plan.kernels[1]).size, score.w.upsampled(stride, plan.kernels[1]).size
    note = f"rows {oh}:{oh + h} of {full[0]}, cols {ow}:{ow + w} of {full[1]}"
    b.upsample(f"upscore_final{stride}", src, stride, plan.kernels[1], crop=(image.h, image.w), note=note)
    rows, optimizer, reach = b.finish()
    classifier = {}
    for hh, ww in _sizes(h, w):
        p = geometry.plan(hh, ww, variant, backbone)
        coarse = [
            geometry.trace(n + sum(a.pad), "fc7", backbone=backbone)["fc7"].size
            for n, a in ((hh, p.height), (ww, p.width))
        ]
        classifier[f"{hh}x{ww}"] = {
            "layer": f"upscore_final{stride}",
            "shape": [hh, ww, num_classes],
            "stride": 1,
            "what": f"a score per pixel, upsampled from {coarse[0]}x{coarse[1]} score_fr cells",
        }
    skips = {
        tap: (plan.height.skip_starts[tap], plan.width.skip_starts[tap]) for tap in plan.height.skip_starts
    }
    return Description(
        "fcn",
        variant,
        (h, w),
        num_classes,
        batch,
        rows,
        optimizer,
        plan.pads,
        skips,
        (oh, ow),
        classifier,
        reach,
        backbone,
    )


# -- the table ---------------------------------------------------------------------------


def format_table(d: Description) -> str:
    """Aligned columns for a terminal, then the geometry's choices and the totals."""
    header = [
        "layer",
        "kind",
        "window",
        "output HxWxC",
        "stride",
        "RF",
        "RF centre",
        "params",
        "MFLOP",
        "note",
    ]
    right = {"stride", "RF", "params", "MFLOP"}
    table = [header]
    for r in d.rows:
        table.append([
            r.name,
            r.kind,
            r.window,
            f"{r.size[0]}x{r.size[1]}x{r.channels}",
            str(r.out_stride),
            str(r.receptive_field),
            f"({r.centre[0]}, {r.centre[1]})",
            f"{r.params:,}",
            f"{r.flops / 1e6:,.1f}",
            r.note,
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [c.rjust(n) if h in right else c.ljust(n) for c, n, h in zip(row, widths, header)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * n for n in widths))

    if d.model == "fcn":
        name = f"FCN-{d.variant}" + ("" if d.backbone == "alexnet" else f" on {CLASSIFIER_NAMES[d.backbone]}")
    else:
        name = CLASSIFIER_NAMES[d.model]
    title = f"{name}, {d.size[0]}x{d.size[1]} input, {d.num_classes} classes"
    foot = [
        "stride: image pixels per output cell. RF: receptive field, pixels per axis one cell reads",
        "(zero padding included; the widest cell's where cells differ). RF centre: image (y, x) of",
        "cell (0, 0)'s field centre. MFLOP: forward per image as XLA counts the reference program",
        "(2 per multiply-add, 1 per bias add, ReLU and sum, k*k-1 per pooling output).",
        "",
    ]
    if d.padding is not None:
        (top, bottom), (left, right) = d.padding
        crops = [f"score_{t} from ({s[0]}, {s[1]})" for t, s in d.skip_crops.items()]
        foot += [
            f"input padding: {top} top, {bottom} bottom, {left} left, {right} right",
            "  (zeros: the least that puts a point of every upsampled map on or beyond each image border)",
            "skip crops: " + (", ".join(crops) if crops else "none (FCN-32s fuses no skips)"),
            f"output crop: {d.rows[-1].name} from ({d.output_crop[0]}, {d.output_crop[1]})",
        ]
    t = d.totals()
    foot += [
        f"parameters: {d.params:,} ({t['params_mib']:.1f} MiB float32)",
        f"forward: {t['forward_gflop_per_image']:.2f} GFLOP per image",
        f"train step: {t['train_gflop_per_image']:.2f} GFLOP per image at batch {d.batch}",
        "  (forward, backward, SGD with momentum; the loss and dropout's random bits not counted)",
        f"activations: {t['activation_mib']:.1f} MiB at batch {d.batch}",
        "  (every layer's float32 output once: the least a backward pass keeps; XLA holds ~1.6-2.6x)",
        "classifier output:",
    ]
    for size, c in d.classifier.items():
        shape = "x".join(str(n) for n in c["shape"])
        foot.append(f"  at {size}: {c['layer']} {shape} (stride {c['stride']}): {c['what']}")
    return "\n".join([title, "", *lines, "", *foot])
