"""Where every FCN feature map sits on the image: paddings and crops, derived.

The Caffe FCN pads its input by a magic 100 pixels and crops by magic offsets
(19, 5, 9, ...) that differ between backbones. Here every number comes from the
layer table below: each feature map is a *grid* of points in image coordinates
(offset + stride * index, the centre of each cell's receptive field), and the
paddings and crops are solved so that

* every upsampled map has a point on or beyond every image border, so every
  output pixel is an interpolation between two score cells (no border decay);
* every map fused with another lands on exactly the same points (integer crop);
* output pixel (i, j) is image pixel (i, j) exactly (no half-pixel drift): each
  upsampling kernel is chosen from where the fine points lie relative to the coarse
  cells (`upsampling_kernel`): odd, 2f-1, centred on the coarse cell when they include
  the coarse cells (AlexNet: a 3x3 stride-2 pool's cell sits on its middle input
  cell), even, 2f, when they lie midway between (VGG16: a 2x2 pool's cell sits between
  two input cells, so VGG16's score cells are half a pixel off the image grid).

Two backbones share the code (`BACKBONES`): torchvision's AlexNet and VGG16, each a
layer table (convolutions and pools, then fc6 and fc7) and the pooling outputs fused
at strides 16 and 8. Nothing else differs: paddings, crops and kernels follow from
the tables.

All values are plain Python ints, computed at trace time from static shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from fractions import Fraction


@dataclasses.dataclass(frozen=True)
class Window:
    """A square convolution or pooling window along one axis."""

    kernel: int
    stride: int = 1
    padding: int = 0


# torchvision AlexNet, with the classifier convolutionalised (fc6 = 6x6, fc7 = 1x1).
ALEXNET_LAYERS: Mapping[str, Window] = {
    "conv1": Window(11, 4, 2),
    "pool1": Window(3, 2),
    "conv2": Window(5, 1, 2),
    "pool2": Window(3, 2),
    "conv3": Window(3, 1, 1),
    "conv4": Window(3, 1, 1),
    "conv5": Window(3, 1, 1),
    "pool5": Window(3, 2),
    "fc6": Window(6),
    "fc7": Window(1),
}


def _vgg_layers(convs_per_block: tuple[int, ...]) -> dict[str, Window]:
    layers = {}
    for block, convs in enumerate(convs_per_block, start=1):
        for i in range(1, convs + 1):
            layers[f"conv{block}_{i}"] = Window(3, 1, 1)
        layers[f"pool{block}"] = Window(2, 2)
    return {**layers, "fc6": Window(7), "fc7": Window(1)}


# torchvision VGG16 (configuration D): 13 3x3 convolutions, 5 2x2 pools; the classifier
# convolutionalised (fc6 = 7x7 over pool5's 512 channels, fc7 = 1x1).
VGG16_LAYERS: Mapping[str, Window] = _vgg_layers((2, 2, 3, 3, 3))

VARIANTS = ("32s", "16s", "8s")
# The pooling output whose 1x1 score layer is fused at each stride (AlexNet's
# pool2 is at stride 16 and pool1 at stride 8, where VGG has pool4 and pool3).
SKIP_TAPS = {16: "pool2", 8: "pool1"}  # AlexNet's; `BACKBONES` holds each backbone's


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A backbone's layer table (its convolutions and pools in order, then fc6 and fc7)
    and the pooling output whose score map is fused at each stride below 32."""

    name: str
    layers: Mapping[str, Window]
    skip_taps: Mapping[int, str]


BACKBONES: Mapping[str, Backbone] = {
    "alexnet": Backbone("alexnet", ALEXNET_LAYERS, SKIP_TAPS),
    "vgg16": Backbone("vgg16", VGG16_LAYERS, {16: "pool4", 8: "pool3"}),
}


def get_backbone(name: str) -> Backbone:
    """The backbone called `name` (ValueError naming the choices otherwise)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def output_stride(variant: str) -> int:
    check_variant(variant)
    return int(variant[:-1])


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


@dataclasses.dataclass(frozen=True)
class Grid:
    """Cell i of a feature map sits at image coordinate offset + stride * i."""

    offset: Fraction
    stride: Fraction
    size: int

    def through(self, w: Window) -> Grid:
        size = (self.size + 2 * w.padding - w.kernel) // w.stride + 1
        offset = self.offset + self.stride * (Fraction(w.kernel - 1, 2) - w.padding)
        return Grid(offset, self.stride * w.stride, size)

    def upsampled(self, factor: int, kernel: int | None = None) -> Grid:
        """The part of a stride-`factor` transposed conv output between the first and last
        input cells. A (2f-1)-tap kernel (the default) puts fine points on the coarse cells
        and f - 1 between; a 2f-tap kernel puts f points between, offset by half a fine cell."""
        kernel = 2 * factor - 1 if kernel is None else kernel
        if kernel == 2 * factor - 1:
            return Grid(self.offset, self.stride / factor, (self.size - 1) * factor + 1)
        if kernel == 2 * factor:
            fine = self.stride / factor
            return Grid(self.offset + fine / 2, fine, (self.size - 1) * factor)
        raise ValueError(
            f"an upsampling kernel by {factor} has {2 * factor - 1} or {2 * factor} taps, got {kernel}"
        )

    def start_of(self, other: Grid) -> int:
        """Index of this grid's cell that coincides with `other`'s first cell."""
        if self.stride != other.stride:
            raise ValueError(f"cannot align grids of strides {self.stride} and {other.stride}")
        start = (other.offset - self.offset) / self.stride
        if start.denominator != 1 or start < 0 or start + other.size > self.size:
            raise ValueError(f"grid {other} is not a sub-grid of {self}")
        return int(start)

    @property
    def last(self) -> Fraction:
        return self.offset + self.stride * (self.size - 1)


def upsampling_kernel(coarse: Grid, target: Grid, factor: int) -> int:
    """Taps of the bilinear kernel that upsamples `coarse` by `factor` onto `target`'s
    points: 2f-1 where those points include the coarse cells, 2f where they lie half a
    fine cell off them (ValueError for any other phase: no symmetric kernel reaches it)."""
    fine = coarse.stride / factor
    if target.stride != fine:
        raise ValueError(
            f"upsampling stride {coarse.stride} by {factor} does not give stride {target.stride}"
        )
    phase = ((target.offset - coarse.offset) / fine) % 1
    if phase == 0:
        return 2 * factor - 1
    if phase == Fraction(1, 2):
        return 2 * factor
    raise ValueError(f"grid {target} lies {phase} of a cell off the upsampled {coarse}")


def trace(
    length: int, upto: str, offset: Fraction = Fraction(0), backbone: str = "alexnet"
) -> dict[str, Grid]:
    """Grids of every `backbone` layer output up to `upto`, for an input axis of `length`."""
    grids = {}
    grid = Grid(Fraction(offset), Fraction(1), length)
    for name, window in get_backbone(backbone).layers.items():
        grid = grid.through(window)
        grids[name] = grid
        if name == upto:
            return grids
    raise KeyError(upto)


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """Padding, crops and upsampling kernels along one image axis for one FCN variant."""

    length: int
    pad: tuple[int, int]  # zero padding (before, after) of the normalised input
    skip_starts: dict[str, int]  # tap name -> first cell of its score map that is fused
    fused_size: dict[int, int]  # stride -> number of cells of the fused map at that stride
    out_start: int  # first pixel of the final upsampled map that is image pixel 0
    # Stride of an upsampled map (16, 8; 1 for the final one) -> taps of its kernel per axis
    # (`upsampling_kernel`); a property of the backbone, the same for every length.
    kernels: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Chain:
    """The grids from the score map to the output along one axis, for one padding."""

    score: Grid
    kernels: dict[int, int]  # as AxisPlan.kernels
    skips: dict[str, tuple[Grid, Grid]]  # tap -> (its grid, the upsampled grid fused with it)
    final: Grid  # the last upsampled map, before the crop to the image


def _chain(length: int, pad: tuple[int, int], variant: str, backbone: Backbone) -> _Chain:
    grids = trace(length + sum(pad), "fc7", Fraction(-pad[0]), backbone.name)
    score = fused = grids["fc7"]
    kernels, skips = {}, {}
    stride = int(score.stride)
    while stride > output_stride(variant):
        stride //= 2
        tap = backbone.skip_taps[stride]
        kernels[stride] = upsampling_kernel(fused, grids[tap], 2)
        fused = fused.upsampled(2, kernels[stride])
        skips[tap] = (grids[tap], fused)
    kernels[1] = upsampling_kernel(fused, Grid(Fraction(0), Fraction(1), length), stride)
    return _Chain(score, kernels, skips, fused.upsampled(stride, kernels[1]))


def plan_axis(length: int, variant: str, backbone: str = "alexnet") -> AxisPlan:
    """Smallest zero padding that puts a point of the last upsampled map (hence of every
    coarser map) on or beyond both image borders."""
    check_variant(variant)
    b = get_backbone(backbone)
    if length < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {length}")
    # Before: each upsampling puts its first point at a fixed distance from the first score
    # cell (0 for a 2f-1 kernel, half a fine cell for 2f), so without padding the last map
    # starts at an image coordinate that does not depend on the length; pad by exactly that.
    start = _chain(1 << 12, (0, 0), variant, b).final.offset
    assert start.denominator == 1 and start >= 0, start  # in phase with the image grid
    pad_before, pad_after = int(start), 0
    while True:
        chain = _chain(length, (pad_before, pad_after), variant, b)
        if chain.final.size >= 1 and chain.final.last >= length - 1:
            break
        pad_after += 1
    assert chain.final.offset == 0
    stride = int(chain.score.stride)
    fused_size = {stride: chain.score.size}
    skip_starts = {}
    for tap, (grid, fused) in chain.skips.items():
        stride //= 2
        skip_starts[tap] = grid.start_of(fused)
        fused_size[stride] = fused.size
    image = Grid(Fraction(0), Fraction(1), length)
    return AxisPlan(
        length, (pad_before, pad_after), skip_starts, fused_size, chain.final.start_of(image), chain.kernels
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-axis plans for an (H, W) input."""

    height: AxisPlan
    width: AxisPlan

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.height.pad, self.width.pad

    @property
    def padded(self) -> tuple[int, int]:
        """(H, W) the network runs on: the image and its padding."""
        return self.height.length + sum(self.height.pad), self.width.length + sum(self.width.pad)

    @property
    def kernels(self) -> dict[int, int]:
        """Upsampled stride -> square kernel taps (the same along both axes)."""
        assert self.height.kernels == self.width.kernels
        return self.height.kernels


def plan(height: int, width: int, variant: str, backbone: str = "alexnet") -> Plan:
    return Plan(plan_axis(height, variant, backbone), plan_axis(width, variant, backbone))


def bilinear_kernel_1d(factor: int, size: int | None = None):
    """A triangle of `size` taps (2f-1, the default, or 2f) centred on the kernel: exact
    linear interpolation onto fine points on (2f-1) or half a fine cell off (2f) the coarse cells."""
    import numpy as np

    size = 2 * factor - 1 if size is None else size
    if size not in (2 * factor - 1, 2 * factor):
        raise ValueError(
            f"a bilinear kernel by {factor} has {2 * factor - 1} or {2 * factor} taps, got {size}"
        )
    t = np.arange(size, dtype=np.float64)
    return (1.0 - np.abs(t - (size - 1) / 2) / factor).astype(np.float32)
