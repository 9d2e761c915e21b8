"""AlexNet and VGG16 with convolutionalised classifiers, and FCN-32s/16s/8s on top of either.

All are Flax Linen modules: pure functions of (params, images). Layer names are
flat (conv1 ... fc7 for AlexNet, conv1_1 ... conv5_3, fc6, fc7 for VGG16) and shared
by a classifier and the FCN on its backbone, so classifier weights transplant into
the FCN by key. Window sizes, strides and paddings come from the backbone's layer
table in `fcn_jax.geometry`, which also derives the FCN's input padding, crops and
upsampling kernels; the layers are built by walking that table (`features`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import geometry
from fcn_jax.ops import OpSet

Dtype = Any

FC_CHANNELS = 4096  # fc6 and fc7 of both classifiers
# Output channels of torchvision's AlexNet.
CHANNELS = {
    "conv1": 64,
    "conv2": 192,
    "conv3": 384,
    "conv4": 256,
    "conv5": 256,
    "fc6": FC_CHANNELS,
    "fc7": FC_CHANNELS,
}
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
POOLS = ("pool1", "pool2", "pool5")
# Output channels of torchvision's VGG16: 64, 128, 256, 512, 512 per block.
VGG16_CHANNELS = {
    **{n: (64, 128, 256, 512, 512)[int(n[4]) - 1] for n in geometry.VGG16_LAYERS if n.startswith("conv")},
    "fc6": FC_CHANNELS,
    "fc7": FC_CHANNELS,
}
BACKBONE_CHANNELS = {"alexnet": CHANNELS, "vgg16": VGG16_CHANNELS}
# Normalisation after each backbone convolution, before its ReLU. The classifiers have none
# (their weights transplant only into "none"). From scratch, a group norm takes the scale of
# each layer's activations out of each image's hands (a brighter or flatter frame reaches the
# next layer at the usual scale) and needs no batch statistics, unlike batch norm, so it works
# at any batch size and a run's state holds nothing new. Its statistics include the zero
# padding the FCN adds around its input, so they depend on the image's size (a reading of the
# held-out result in docs/experiments.md, "Around the recipe").
NORMS = ("none", "group")
NORM_GROUPS = 32  # divides every backbone convolution's channels (64 ... 512)
NORM_EPSILON = 1e-6  # nn.GroupNorm's; named, as the ONNX export computes the same


# Winograd tile (F(t x t, k x k)) of each stride-1 convolution on CPU in float32:
# measured fastest there (benchmarks/PERF_NOTES.md); None (or absent) keeps XLA's convolution.
# VGG16's conv1_1 reads 3 channels, too few for Winograd's per-point matrix products to pay
# for its transforms; its other layers train faster with it, though a forward pass alone is
# slower on the 64-channel and small maps (numbers: docs/vgg16.md, benchmarks/winograd_layers.py).
WINOGRAD_TILE = {
    "alexnet": {"conv1": None, "conv2": 4, "conv3": 4, "conv4": 4, "conv5": 4},
    "vgg16": {name: (None if name == "conv1_1" else 4) for name in VGG16_CHANNELS if name.startswith("conv")},
}


def _conv(name: str, features: int, dtype: Dtype, op_set: OpSet, backbone: str, **kwargs) -> nn.Module:
    w = geometry.get_backbone(backbone).layers[name]
    if w.stride == 1:
        tile = WINOGRAD_TILE[backbone].get(name)
        return SameConv(features, w.kernel, w.padding, tile, op_set, dtype, name=name, **kwargs)
    return nn.Conv(
        features,
        (w.kernel, w.kernel),
        strides=(w.stride, w.stride),
        padding=((w.padding, w.padding), (w.padding, w.padding)),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **kwargs,
    )


class SameConv(nn.Module):
    """A stride-1, zero-padded convolution (AlexNet's conv2-conv5) in the formulation
    `op_set.conv` names: Winograd's algorithm (`ops.conv_winograd`, with tile `tile`) on
    CPU in float32, XLA's convolution otherwise. Parameters, names and initialisers are
    nn.Conv's."""

    features: int
    kernel_size: int
    padding: int
    tile: int | None
    op_set: OpSet = OpSet()
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return self.op_set.apply_conv(x, kernel, self.padding, self.tile) + bias.astype(self.dtype)


class DenseConv(nn.Module):
    """A VALID, stride-1 convolution (fc6, fc7, score layers), by default computed as one
    matrix product (`ops.conv_as_matmul`). Parameters, names and initialisers are those of
    `nn.Conv` with the same arguments, so checkpoints and init values are unchanged."""

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    op_set: OpSet = OpSet()
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        return self.op_set.apply_dense(x, kernel.astype(self.dtype), bias.astype(self.dtype))


class Dropout(nn.Module):
    """nn.Dropout (same "dropout" rng stream, same scaling); by default its mask comes from
    `ops.dropout`, which spends as few random bits per element as the rate needs."""

    rate: float
    op_set: OpSet = OpSet()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return self.op_set.apply_dropout(self.make_rng("dropout"), x, self.rate)


def _dense(
    name: str, features: int, dtype: Dtype, op_set: OpSet, backbone: str = "alexnet", **kwargs
) -> DenseConv:
    """fc6 / fc7 / fc8: the convolutionalised classifier layers (VALID, stride 1)."""
    w = geometry.get_backbone(backbone).layers.get(name)
    kernel = (w.kernel, w.kernel) if w is not None else (1, 1)
    assert w is None or (w.stride, w.padding) == (1, 0), name
    return DenseConv(features, kernel, op_set, dtype=dtype, name=name, **kwargs)


def _pool(x: jax.Array, name: str, op_set: OpSet, backbone: str) -> jax.Array:
    w = geometry.get_backbone(backbone).layers[name]
    return op_set.apply_pool(x, w.kernel, w.stride)  # = nn.max_pool(..., padding="VALID")


def features(
    x: jax.Array, backbone: str, dtype: Dtype, op_set: OpSet, kernel_init=None, norm: str = "none"
) -> dict[str, jax.Array]:
    """The backbone's convolutions (each followed by `norm`, then a ReLU) and pools up to
    pool5, in its layer table's order, in the calling module's scope; returns the pooling
    outputs. A group norm after `convN` is named `convN_norm`."""
    extra = {} if kernel_init is None else {"kernel_init": kernel_init}
    channels = BACKBONE_CHANNELS[backbone]
    taps = {}
    for name in geometry.get_backbone(backbone).layers:
        if name.startswith("fc"):
            break
        if name.startswith("pool"):
            x = taps[name] = _pool(x, name, op_set, backbone)
        else:
            x = _conv(name, channels[name], dtype, op_set, backbone, **extra)(x)
            if norm == "group":
                x = nn.GroupNorm(
                    NORM_GROUPS,
                    epsilon=NORM_EPSILON,
                    dtype=dtype,
                    param_dtype=jnp.float32,
                    name=f"{name}_norm",
                )(x)
            x = nn.relu(x)
    return taps


class AlexNet(nn.Module):
    """torchvision's AlexNet as a fully convolutional net.

    On a 224x224 input it returns (N, 1, 1, num_classes), equal to the PyTorch
    classifier's logits; on a larger input, a coarse score map (stride 32).
    torchvision's AdaptiveAvgPool2d(6) is the identity at 224x224 and is left out:
    it is what would tie the classifier to one input size.
    """

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    ops: OpSet = OpSet()  # which formulation of each costly layer runs (fcn_jax.ops.OpSet)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = features(images.astype(self.dtype), "alexnet", self.dtype, self.ops)["pool5"]
        # torchvision order: Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8.
        x = Dropout(self.dropout_rate, self.ops)(x, deterministic=not train)
        x = nn.relu(_dense("fc6", CHANNELS["fc6"], self.dtype, self.ops)(x))
        x = Dropout(self.dropout_rate, self.ops)(x, deterministic=not train)
        x = nn.relu(_dense("fc7", CHANNELS["fc7"], self.dtype, self.ops)(x))
        x = _dense("fc8", self.num_classes, self.dtype, self.ops)(x)
        return x.astype(jnp.float32)


class VGG16(nn.Module):
    """torchvision's VGG16 as a fully convolutional net.

    On a 224x224 input it returns (N, 1, 1, num_classes), equal to the PyTorch
    classifier's logits; on a larger input, a coarse score map (stride 32).
    torchvision's AdaptiveAvgPool2d(7) is the identity at 224x224 and is left out, as
    AlexNet's is.
    """

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    ops: OpSet = OpSet()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = features(images.astype(self.dtype), "vgg16", self.dtype, self.ops)["pool5"]
        # torchvision order: fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8.
        for name in ("fc6", "fc7"):
            x = nn.relu(_dense(name, VGG16_CHANNELS[name], self.dtype, self.ops, "vgg16")(x))
            x = Dropout(self.dropout_rate, self.ops)(x, deterministic=not train)
        x = _dense("fc8", self.num_classes, self.dtype, self.ops, "vgg16")(x)
        return x.astype(jnp.float32)


def bilinear_init(factor: int, size: int | None = None):
    """Kernel initialiser: per-class bilinear interpolation (`size` taps: 2f-1, the
    default, or 2f; `geometry.bilinear_kernel_1d`), no mixing across classes."""

    def init(key, shape, dtype=jnp.float32):
        del key
        k = geometry.bilinear_kernel_1d(factor, size)
        kh, kw, cin, cout = shape
        if (kh, kw) != (k.size, k.size) or cin != cout:
            raise ValueError(f"bilinear kernel needs shape ({k.size}, {k.size}, C, C), got {shape}")
        return jnp.asarray(np.einsum("i,j,ab->ijab", k, k, np.eye(cin, dtype=np.float32)), dtype)

    return init


class Upsample(nn.Module):
    """Stride-`factor` transposed convolution, initialised to bilinear interpolation.

    Returns only the cells between the first and the last input cell
    ((n - 1) * factor + 1 of them with the default 2f-1 taps, centred on the input cells;
    (n - 1) * factor with `kernel_size` 2f, half a fine cell off them), where the
    interpolation has both neighbours; `geometry.Grid.upsampled` describes the same
    grid. With `trainable=False` the
    kernel is a constant, not a parameter. `crop=(start_h, start_w, size_h, size_w)`
    returns only that window of the result (and skips the work outside it).

    By default computed as `ops.upsample` (2x2 neighbourhoods times a rearranged kernel,
    then depth-to-space), equal to the transposed convolution `ops.upsample_reference`.
    """

    factor: int
    trainable: bool = True
    dtype: Dtype = jnp.float32
    op_set: OpSet = OpSet()
    kernel_size: int | None = None  # 2f-1 (None) or 2f: `geometry.upsampling_kernel`

    @nn.compact
    def __call__(self, x: jax.Array, crop: tuple[int, int, int, int] | None = None) -> jax.Array:
        f, channels = self.factor, x.shape[-1]
        k = 2 * f - 1 if self.kernel_size is None else self.kernel_size
        shape = (k, k, channels, channels)
        if self.trainable:
            kernel = self.param("kernel", bilinear_init(f, k), shape, jnp.float32)
        else:
            kernel = bilinear_init(f, k)(None, shape)
        # Scatter form out[f*i + t] += x[i] @ kernel[t], as PyTorch's ConvTranspose2d.
        return self.op_set.apply_upsample(x.astype(self.dtype), kernel.astype(self.dtype), f, crop)


def _crop(x: jax.Array, start_h: int, start_w: int, size_h: int, size_w: int) -> jax.Array:
    return x[:, start_h : start_h + size_h, start_w : start_w + size_w]


class FCN(nn.Module):
    """FCN-AlexNet or FCN-VGG16 (Long, Shelhamer, Darrell): 32s, 16s or 8s.

    `apply({"params": p}, images, train=False)` maps normalised images (N, H, W, 3)
    of any size to logits (N, H, W, num_classes), pixel-aligned with the input.
    Score layers start at zero and upsampling at bilinear, as in the paper.
    """

    num_classes: int
    variant: str = "32s"
    dropout_rate: float = 0.5
    trainable_upsampling: bool = True
    dtype: Dtype = jnp.float32
    # Which formulation of each costly layer runs (fcn_jax.ops.OpSet). The default's
    # Winograd conv2-conv5 (CPU, float32) trades a longer compile and rounding that is
    # not bitwise independent of how a batch is split across devices for faster steps;
    # OpSet(conv="xla") keeps XLA's convolution.
    ops: OpSet = OpSet()
    backbone: str = "alexnet"  # or "vgg16" (geometry.BACKBONES)
    # Output channels of fc6 and fc7. The classifiers' own width (4096, both backbones) is
    # what transplanting their weights needs; a model trained from scratch may be narrower:
    # fc6 and fc7 hold most of the parameters, and on a CPU much of a small crop's step.
    fc_channels: int = FC_CHANNELS
    norm: str = "none"  # after each backbone convolution: NORMS

    def setup_check(self) -> None:
        geometry.check_variant(self.variant)
        geometry.get_backbone(self.backbone)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.fc_channels < 1:
            raise ValueError(f"fc_channels must be >= 1, got {self.fc_channels}")
        check_norm(self.norm)

    def _score(self, name: str) -> DenseConv:
        zeros = nn.initializers.zeros
        return DenseConv(
            self.num_classes, (1, 1), self.ops, self.dtype, kernel_init=zeros, bias_init=zeros, name=name
        )

    def _upsample(self, factor: int, kernel_size: int, name: str) -> Upsample:
        return Upsample(factor, self.trainable_upsampling, self.dtype, self.ops, kernel_size, name=name)

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, window: tuple[int, int] | None = None
    ) -> jax.Array:
        """Scores (N, H, W, classes) for images (N, H, W, 3), which the network sees padded
        with zeros (`geometry.plan`).

        With `window` = (h, w), the images already carry that padding around an (h, w)
        window, filled with whatever surrounds the window (a training crop with its context,
        `data.crop_context`): they are (N, *geometry.plan(h, w).padded, 3), run as they are,
        and the scores are the window's, (N, h, w, classes)."""
        self.setup_check()
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
        h, w = images.shape[1:3] if window is None else window
        plan = geometry.plan(h, w, self.variant, self.backbone)
        x = images.astype(self.dtype)
        if window is None:
            x = jnp.pad(x, ((0, 0), plan.height.pad, plan.width.pad, (0, 0)))
        elif images.shape[1:3] != plan.padded:
            raise ValueError(
                f"images with a {h}x{w} window must be its padded size {plan.padded}, got {images.shape[1:3]}"
            )

        taps = features(x, self.backbone, self.dtype, self.ops, norm=self.norm)
        for name, value in taps.items():  # for inspection: apply(..., mutable="intermediates")
            self.sow("intermediates", name, value)
        x = taps["pool5"]
        for name in ("fc6", "fc7"):
            x = nn.relu(_dense(name, self.fc_channels, self.dtype, self.ops, self.backbone)(x))
            x = Dropout(self.dropout_rate, self.ops)(x, deterministic=not train)
        score = self._score("score_fr")(x)

        stride = 32
        skip_taps = geometry.get_backbone(self.backbone).skip_taps
        while stride > geometry.output_stride(self.variant):
            stride //= 2
            tap = skip_taps[stride]
            up = self._upsample(2, plan.kernels[stride], f"upscore{stride}")(score)
            skip = self._score(f"score_{tap}")(taps[tap])
            skip = _crop(skip, plan.height.skip_starts[tap], plan.width.skip_starts[tap], *up.shape[1:3])
            score = up + skip
        out = self._upsample(stride, plan.kernels[1], f"upscore_final{stride}")(
            score, crop=(plan.height.out_start, plan.width.out_start, h, w)
        )
        return out.astype(jnp.float32)


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def init_params(model: nn.Module, rng: jax.Array, size: tuple[int, int] = (64, 64)) -> dict:
    """Parameters of `model`; their shapes do not depend on the image size."""
    images = jnp.zeros((1, *size, 3), jnp.float32)
    return jax.jit(lambda r: model.init(r, images)["params"])(rng)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that defines an FCN, resolved: a run records it when it starts
    (`fcn_jax.run`) and every later use of the run builds its model from it, so
    evaluation, prediction and export compute what training computed."""

    num_classes: int
    variant: str
    dropout_rate: float
    trainable_upsampling: bool
    dtype: str
    ops: OpSet
    # Absent from the model.json of runs (and config.json of pretrained folders) written
    # before VGG16 existed: those are AlexNet FCNs.
    backbone: str = "alexnet"
    # Absent from records written before it was a choice: those have the classifiers' width.
    fc_channels: int = FC_CHANNELS
    # Absent from records written before it was a choice: those have none.
    norm: str = "none"

    def __post_init__(self):
        geometry.check_variant(self.variant)
        geometry.get_backbone(self.backbone)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if type(self.fc_channels) is not int or self.fc_channels < 1:
            raise ValueError(f"fc_channels must be a positive integer, got {self.fc_channels!r}")
        check_norm(self.norm)

    @classmethod
    def from_config(cls, model_config, num_classes: int) -> ModelSpec:
        """From the `model` section of an experiment config (every key required: the
        defaults live in `fcn_jax.config.base_config`) and the dataset's class count."""
        m = dict(model_config)
        return cls(
            num_classes=int(num_classes),
            variant=str(m["variant"]),
            dropout_rate=float(m["dropout_rate"]),
            trainable_upsampling=bool(m["trainable_upsampling"]),
            dtype=str(m["dtype"]),
            ops=OpSet(**dict(m["ops"])),
            backbone=str(m["backbone"]),
            fc_channels=m["fc_channels"],
            norm=str(m["norm"]),
        )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ops": self.ops.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """The inverse of to_dict; unknown or missing keys are errors (KeyError/TypeError),
        except `backbone`, which older records lack (alexnet)."""
        return cls(**{**d, "ops": OpSet(**d["ops"])})

    def build(self) -> FCN:
        return FCN(
            self.num_classes,
            self.variant,
            dropout_rate=self.dropout_rate,
            trainable_upsampling=self.trainable_upsampling,
            dtype=jnp.dtype(self.dtype),
            ops=self.ops,
            backbone=self.backbone,
            fc_channels=self.fc_channels,
            norm=self.norm,
        )
