"""PyTorch twins of the project's networks, for parity tests and speed comparisons.

torchvision does not import beside the CPU torch wheel used here, so its AlexNet
layout is written out in plain torch: the same module indices, hence the same
state_dict keys (features.0 ... classifier.6).
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


# -- FCN -------------------------------------------------------------------------


def _bilinear_weight(channels: int, factor: int) -> torch.Tensor:
    """ConvTranspose2d weight (in, out, 2f-1, 2f-1): per-class bilinear, no mixing."""
    import numpy as np

    from fcn_jax import geometry

    k = geometry.bilinear_kernel_1d(factor)
    w = np.einsum("i,j,ab->abij", k, k, np.eye(channels, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


class TorchUpsample(nn.Module):
    """ConvTranspose2d(C, C, 2f-1, stride f, no bias), bilinear init; keeps the
    (n-1)*f+1 cells between the first and last input cell, as fcn_jax's Upsample."""

    def __init__(self, channels: int, factor: int, trainable: bool = True):
        super().__init__()
        self.factor = factor
        self.deconv = nn.ConvTranspose2d(channels, channels, 2 * factor - 1, stride=factor, bias=False)
        with torch.no_grad():
            self.deconv.weight.copy_(_bilinear_weight(channels, factor))
        self.deconv.weight.requires_grad_(trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, (h, w) = self.factor, x.shape[-2:]
        y = self.deconv(x)
        return y[:, :, f - 1 : f - 1 + (h - 1) * f + 1, f - 1 : f - 1 + (w - 1) * f + 1]


class TorchFCN(nn.Module):
    """fcn_jax.models.FCN in PyTorch (NCHW): same layers, paddings and crops (from
    fcn_jax.geometry.plan), transposed-conv upsampling and zero-initialised score layers.

    Input: normalised images (N, 3, H, W); output: logits (N, C, H, W).
    """

    def __init__(
        self, num_classes: int, variant: str = "32s", dropout: float = 0.5, trainable_upsampling: bool = True
    ):
        super().__init__()
        from fcn_jax import geometry
        from fcn_jax.models import CHANNELS

        geometry.check_variant(variant)
        self.num_classes, self.variant = num_classes, variant
        self.features = TorchAlexNet().features  # indices 0..12, torchvision layout
        self.fc6 = nn.Conv2d(256, CHANNELS["fc6"], geometry.ALEXNET_LAYERS["fc6"].kernel)
        self.fc7 = nn.Conv2d(CHANNELS["fc6"], CHANNELS["fc7"], 1)
        self.drop = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(CHANNELS["fc7"], num_classes, 1)
        self.ups = nn.ModuleDict()
        self.skips = nn.ModuleDict()
        tap_channels = {"pool2": CHANNELS["conv2"], "pool1": CHANNELS["conv1"]}
        stride = 32
        while stride > geometry.output_stride(variant):
            stride //= 2
            tap = geometry.SKIP_TAPS[stride]
            self.ups[f"upscore{stride}"] = TorchUpsample(num_classes, 2, trainable_upsampling)
            self.skips[f"score_{tap}"] = nn.Conv2d(tap_channels[tap], num_classes, 1)
        self.ups[f"upscore_final{stride}"] = TorchUpsample(num_classes, stride, trainable_upsampling)
        for conv in [self.score_fr, *self.skips.values()]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from fcn_jax import geometry

        h, w = x.shape[-2:]
        plan = geometry.plan(h, w, self.variant)
        (top, bottom), (left, right) = plan.pads
        x = nn.functional.pad(x, (left, right, top, bottom))
        taps = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 2:
                taps["pool1"] = x
            elif i == 5:
                taps["pool2"] = x
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        score = self.score_fr(x)
        stride = 32
        while stride > geometry.output_stride(self.variant):
            stride //= 2
            tap = geometry.SKIP_TAPS[stride]
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


# fcn_jax FCN layer name -> TorchFCN module path.
_FLAX_TO_TORCH_FCN = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "fc6",
    "fc7": "fc7",
    "score_fr": "score_fr",
    "score_pool2": "skips.score_pool2",
    "score_pool1": "skips.score_pool1",
}


def load_flax_fcn_params(model: TorchFCN, params) -> TorchFCN:
    """Copy fcn_jax FCN params (nested dict of arrays) into `model`, in place.

    Conv kernels (kh, kw, I, O) -> weight (O, I, kh, kw); upsampling kernels in the
    scatter convention (kh, kw, I, O) -> ConvTranspose2d weight (I, O, kh, kw).
    """
    import numpy as np

    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer, values in params.items():
            kernel = np.asarray(values["kernel"], np.float32)
            if layer.startswith("upscore"):
                weight = modules[f"ups.{layer}.deconv"].weight
                weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))))
                continue
            conv = modules[_FLAX_TO_TORCH_FCN[layer]]
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(np.array(values["bias"], np.float32)))
    return model
