"""PyTorch twins of the project's networks, for parity tests and speed comparisons.

torchvision does not import beside the CPU torch wheel used here, so its AlexNet
and VGG16 layouts are written out in plain torch: the same module indices, hence the
same state_dict keys (features.0 ... classifier.6).
"""

from __future__ import annotations

import torch
from torch import nn


class TorchAlexNet(nn.Module):
    """torchvision.models.AlexNet, layer for layer."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# torchvision's VGG16 (configuration D): output channels of each 3x3 convolution, "M" a 2x2 pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class TorchVGG16(nn.Module):
    """torchvision.models.vgg16 (no batch norm), layer for layer."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers, channels = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


TORCH_CLASSIFIERS = {"alexnet": TorchAlexNet, "vgg16": TorchVGG16}


# -- FCN -------------------------------------------------------------------------


def _bilinear_weight(channels: int, factor: int, taps: int) -> torch.Tensor:
    """ConvTranspose2d weight (in, out, taps, taps): per-class bilinear, no mixing."""
    import numpy as np

    from fcn_jax import geometry

    k = geometry.bilinear_kernel_1d(factor, taps)
    w = np.einsum("i,j,ab->abij", k, k, np.eye(channels, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


class TorchUpsample(nn.Module):
    """ConvTranspose2d(C, C, taps, stride f, no bias), bilinear init; keeps the cells
    between the first and last input cell, as fcn_jax's Upsample: (n-1)*f+1 of them
    from f-1 with 2f-1 taps (the default), (n-1)*f from f with 2f taps."""

    def __init__(self, channels: int, factor: int, trainable: bool = True, taps: int | None = None):
        super().__init__()
        self.factor = factor
        self.taps = 2 * factor - 1 if taps is None else taps
        self.deconv = nn.ConvTranspose2d(channels, channels, self.taps, stride=factor, bias=False)
        with torch.no_grad():
            self.deconv.weight.copy_(_bilinear_weight(channels, factor, self.taps))
        self.deconv.weight.requires_grad_(trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, (h, w) = self.factor, x.shape[-2:]
        y = self.deconv(x)
        start, extra = self.taps - f, 2 * f - self.taps  # extra: 1 cell more with 2f-1 taps
        return y[:, :, start : start + (h - 1) * f + extra, start : start + (w - 1) * f + extra]


class TorchFCN(nn.Module):
    """fcn_jax.models.FCN in PyTorch (NCHW): same layers, paddings, crops and upsampling
    kernels (from fcn_jax.geometry.plan), transposed-conv upsampling and zero-initialised
    score layers, on torchvision's AlexNet (the default) or VGG16 features.

    Input: normalised images (N, 3, H, W); output: logits (N, C, H, W).
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "32s",
        dropout: float = 0.5,
        trainable_upsampling: bool = True,
        backbone: str = "alexnet",
    ):
        super().__init__()
        from fcn_jax import geometry
        from fcn_jax.models import BACKBONE_CHANNELS

        geometry.check_variant(variant)
        b, channels = geometry.get_backbone(backbone), BACKBONE_CHANNELS[backbone]
        self.num_classes, self.variant, self.backbone = num_classes, variant, backbone
        self.features = TORCH_CLASSIFIERS[backbone]().features  # torchvision layout and indices
        # Which features index outputs which pool (a Conv2d and a ReLU per conv, as the table).
        self.pool_at, index, last_conv = {}, 0, None
        for name in b.layers:
            if name.startswith("fc"):
                break
            if name.startswith("pool"):
                self.pool_at[index] = name
                index += 1
            else:
                index, last_conv = index + 2, name
        self.fc6 = nn.Conv2d(channels[last_conv], channels["fc6"], b.layers["fc6"].kernel)
        self.fc7 = nn.Conv2d(channels["fc6"], channels["fc7"], 1)
        self.drop = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(channels["fc7"], num_classes, 1)
        self.ups = nn.ModuleDict()
        self.skips = nn.ModuleDict()
        # The kernels do not depend on the size (geometry.AxisPlan.kernels).
        kernels = geometry.plan_axis(1, variant, backbone).kernels
        pool_channels, conv = {}, None
        for name in b.layers:
            conv = name if name.startswith("conv") else conv
            if name.startswith("pool"):
                pool_channels[name] = channels[conv]
        stride = 32
        while stride > geometry.output_stride(variant):
            stride //= 2
            tap = b.skip_taps[stride]
            self.ups[f"upscore{stride}"] = TorchUpsample(
                num_classes, 2, trainable_upsampling, kernels[stride]
            )
            self.skips[f"score_{tap}"] = nn.Conv2d(pool_channels[tap], num_classes, 1)
        self.ups[f"upscore_final{stride}"] = TorchUpsample(
            num_classes, stride, trainable_upsampling, kernels[1]
        )
        for conv in [self.score_fr, *self.skips.values()]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from fcn_jax import geometry

        h, w = x.shape[-2:]
        plan = geometry.plan(h, w, self.variant, self.backbone)
        skip_taps = geometry.get_backbone(self.backbone).skip_taps
        (top, bottom), (left, right) = plan.pads
        x = nn.functional.pad(x, (left, right, top, bottom))
        taps = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.pool_at:
                taps[self.pool_at[i]] = x
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        score = self.score_fr(x)
        stride = 32
        while stride > geometry.output_stride(self.variant):
            stride //= 2
            tap = skip_taps[stride]
            up = self.ups[f"upscore{stride}"](score)
            sh, sw = plan.height.skip_starts[tap], plan.width.skip_starts[tap]
            skip = self.skips[f"score_{tap}"](taps[tap])
            score = up + skip[:, :, sh : sh + up.shape[2], sw : sw + up.shape[3]]
        out = self.ups[f"upscore_final{stride}"](score)
        oh, ow = plan.height.out_start, plan.width.out_start
        return out[:, :, oh : oh + h, ow : ow + w]

    def loss(self, images: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """Per-pixel softmax cross entropy averaged over labelled pixels (fcn_jax.training.pixel_loss)."""
        return nn.functional.cross_entropy(self(images), labels.long(), ignore_index=ignore_index)


def _flax_to_torch_fcn(backbone: str) -> dict[str, str]:
    """fcn_jax FCN layer name -> TorchFCN module path (the conversion's layout, reversed)."""
    from fcn_jax import convert, geometry

    paths = {
        layer: prefix for prefix, (layer, kind) in convert.torch_layout(backbone).items() if kind == "conv"
    }
    paths.update(fc6="fc6", fc7="fc7", score_fr="score_fr")
    for tap in geometry.get_backbone(backbone).skip_taps.values():
        paths[f"score_{tap}"] = f"skips.score_{tap}"
    return paths


def load_flax_fcn_params(model: TorchFCN, params) -> TorchFCN:
    """Copy fcn_jax FCN params (nested dict of arrays) into `model`, in place.

    Conv kernels (kh, kw, I, O) -> weight (O, I, kh, kw); upsampling kernels in the
    scatter convention (kh, kw, I, O) -> ConvTranspose2d weight (I, O, kh, kw).
    """
    import numpy as np

    modules = dict(model.named_modules())
    flax_to_torch = _flax_to_torch_fcn(model.backbone)
    with torch.no_grad():
        for layer, values in params.items():
            kernel = np.asarray(values["kernel"], np.float32)
            if layer.startswith("upscore"):
                weight = modules[f"ups.{layer}.deconv"].weight
                weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))))
                continue
            conv = modules[flax_to_torch[layer]]
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(np.array(values["bias"], np.float32)))
    return model
