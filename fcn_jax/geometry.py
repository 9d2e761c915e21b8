"""Where every FCN feature map sits on the image: paddings and crops, derived.

The Caffe FCN pads its input by a magic 100 pixels and crops by magic offsets
(19, 5, 9, ...) that differ between backbones. Here every number comes from the
layer table below: each feature map is a *grid* of points in image coordinates
(offset + stride * index, the centre of each cell's receptive field), and the
paddings and crops are solved so that

* the coarsest score map has a cell on or beyond every image border, so every
  output pixel is an interpolation between two score cells (no border decay);
* every map fused with another lands on exactly the same points (integer crop);
* output pixel (i, j) is image pixel (i, j) exactly (no half-pixel drift:
  upsampling kernels are odd, 2f-1, centred on the coarse cell).

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

VARIANTS = ("32s", "16s", "8s")
# The pooling output whose 1x1 score layer is fused at each stride (AlexNet's
# pool2 is at stride 16 and pool1 at stride 8, where VGG has pool4 and pool3).
SKIP_TAPS = {16: "pool2", 8: "pool1"}


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

    def upsampled(self, factor: int) -> Grid:
        """The part of a stride-`factor` transposed conv output between the first and last input cells."""
        return Grid(self.offset, self.stride / factor, (self.size - 1) * factor + 1)

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


def trace(length: int, upto: str, offset: Fraction = Fraction(0)) -> dict[str, Grid]:
    """Grids of every AlexNet layer output up to `upto`, for an input axis of `length`."""
    grids = {}
    grid = Grid(Fraction(offset), Fraction(1), length)
    for name, window in ALEXNET_LAYERS.items():
        grid = grid.through(window)
        grids[name] = grid
        if name == upto:
            return grids
    raise KeyError(upto)


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """Padding and crops along one image axis for one FCN variant."""

    length: int
    pad: tuple[int, int]  # zero padding (before, after) of the normalised input
    skip_starts: dict[str, int]  # tap name -> first cell of its score map that is fused
    fused_size: dict[int, int]  # stride -> number of cells of the fused map at that stride
    out_start: int  # first pixel of the final upsampled map that is image pixel 0


def _score_grid(length: int, pad_before: int, pad_after: int) -> Grid:
    return trace(length + pad_before + pad_after, "fc7", offset=Fraction(-pad_before))["fc7"]


def plan_axis(length: int, variant: str) -> AxisPlan:
    """Smallest zero padding that puts score cells on or beyond both image borders."""
    check_variant(variant)
    if length < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {length}")
    # Before: the first score cell at image coordinate 0 (offset of fc7 with no padding).
    pad_before = int(trace(1 << 12, "fc7")["fc7"].offset)
    pad_after = 0
    while True:
        score = _score_grid(length, pad_before, pad_after)
        if score.size >= 1 and score.last >= length - 1:
            break
        pad_after += 1
    assert score.offset == 0

    grids = trace(length + pad_before + pad_after, "pool5", offset=Fraction(-pad_before))
    fused, skip_starts, fused_size = score, {}, {32: score.size}
    stride = 32
    while stride > output_stride(variant):
        fused = fused.upsampled(2)
        stride //= 2
        tap = SKIP_TAPS[stride]
        skip_starts[tap] = grids[tap].start_of(fused)
        fused_size[stride] = fused.size
    final = fused.upsampled(stride)
    image = Grid(Fraction(0), Fraction(1), length)
    return AxisPlan(length, (pad_before, pad_after), skip_starts, fused_size, final.start_of(image))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-axis plans for an (H, W) input."""

    height: AxisPlan
    width: AxisPlan

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.height.pad, self.width.pad


def plan(height: int, width: int, variant: str) -> Plan:
    return Plan(plan_axis(height, variant), plan_axis(width, variant))


def bilinear_kernel_1d(factor: int):
    """Odd (2f-1) triangle centred on the coarse cell: exact linear interpolation."""
    import numpy as np

    t = np.arange(2 * factor - 1, dtype=np.float64)
    return (1.0 - np.abs(t - (factor - 1)) / factor).astype(np.float32)
