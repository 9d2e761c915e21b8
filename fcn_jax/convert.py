"""torchvision AlexNet / VGG16 state_dict -> Flax parameters, and transplant into an FCN.

The whole mapping is one table per architecture (`torch_layout`, `TORCH_TO_FLAX` for
AlexNet): PyTorch key prefix -> Flax layer and how its weight is laid out, derived from
the layer table in `fcn_jax.geometry` and torchvision's module order. Conversion needs
no torch import (numpy arrays work); torch is needed only to read a `.pth` file.

Parameter files are safetensors (`.safetensors`: keys "layer/name", Flax layouts, float32;
what the Hugging Face Hub and other frameworks read without unpickling anything) or flax
msgpack (any other name; the format before safetensors). `load_params` reads both, whatever
the file is called, from its first bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np

from fcn_jax import geometry
from fcn_jax.fsutil import atomic_write_bytes, atomic_write_text
from fcn_jax.models import BACKBONE_CHANNELS, FCN, init_params

ARCHS = ("alexnet", "vgg16")  # torchvision architectures that convert (geometry.BACKBONES)
# torchvision's classifier Sequential: the indices of its three Linear layers (fc6, fc7, fc8).
# AlexNet puts a Dropout before fc6 and fc7, VGG after them.
_CLASSIFIER_INDICES = {"alexnet": (1, 4, 6), "vgg16": (0, 3, 6)}


def torch_layout(arch: str) -> dict[str, tuple[str, str]]:
    """PyTorch prefix -> (Flax layer, kind) for torchvision's `arch`.

    torchvision's `features` Sequential holds a Conv2d and a ReLU per convolution and a
    MaxPool2d per pool, in the layer table's order, so the indices follow from the table.
    Kinds: "conv": weight (O, I, kh, kw) -> kernel (kh, kw, I, O); "flatten" (fc6):
    weight (O, C*H*W), pool5 flattened in C, H, W order -> kernel (H, W, C, O); "linear":
    weight (O, I) -> 1x1 kernel.
    """
    layout, index = {}, 0
    for name in geometry.get_backbone(arch).layers:
        if name.startswith("fc"):
            break
        if name.startswith("pool"):
            index += 1
        else:
            layout[f"features.{index}"] = (name, "conv")
            index += 2
    fc = (("fc6", "flatten"), ("fc7", "linear"), ("fc8", "linear"))
    for i, entry in zip(_CLASSIFIER_INDICES[arch], fc):
        layout[f"classifier.{i}"] = entry
    return layout


TORCH_TO_FLAX = torch_layout("alexnet")


def transplanted(arch: str) -> tuple[str, ...]:
    """Layers of the classifier that the FCN keeps: every convolution, fc6 and fc7 (fc8 is
    replaced by score layers)."""
    return tuple(name for name in geometry.get_backbone(arch).layers if not name.startswith("pool"))


TRANSPLANTED = transplanted("alexnet")


def _fc6_input(arch: str) -> tuple[int, int, int]:
    """(C, H, W) of pool5 as torchvision flattens it before fc6 (7x7 after VGG's and
    6x6 after AlexNet's adaptive average pool: fc6's window)."""
    layers, channels = geometry.get_backbone(arch).layers, BACKBONE_CHANNELS[arch]
    last_conv = [n for n in layers if n.startswith("conv")][-1]
    return (channels[last_conv], layers["fc6"].kernel, layers["fc6"].kernel)


def _expected_shapes(arch: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    layers, channels = geometry.get_backbone(arch).layers, BACKBONE_CHANNELS[arch]
    shapes, inputs = {}, 3
    for prefix, (layer, kind) in torch_layout(arch).items():
        out = channels.get(layer, num_classes)
        if kind == "conv":
            k = layers[layer].kernel
            shapes[f"{prefix}.weight"] = (out, inputs, k, k)
        elif kind == "flatten":
            shapes[f"{prefix}.weight"] = (out, int(np.prod(_fc6_input(arch))))
        else:
            shapes[f"{prefix}.weight"] = (out, inputs)
        shapes[f"{prefix}.bias"] = (out,)
        inputs = out
    return shapes


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _weight_to_kernel(w: np.ndarray, kind: str, arch: str) -> np.ndarray:
    if kind == "conv":
        return w.transpose(2, 3, 1, 0)
    if kind == "flatten":
        return w.reshape(w.shape[0], *_fc6_input(arch)).transpose(2, 3, 1, 0)
    return w.T[None, None]


def _is_array(value: Any) -> bool:
    """A torch tensor (recognised without importing torch), a numpy or a jax array."""
    return hasattr(value, "detach") or isinstance(value, (np.ndarray, jax.Array))


def alexnet_from_torch(state_dict: Mapping[str, Any]) -> dict:
    """Flax params for `fcn_jax.models.AlexNet` from a torchvision-layout state_dict
    (`from_torch`)."""
    return from_torch(state_dict, "alexnet")


def vgg16_from_torch(state_dict: Mapping[str, Any]) -> dict:
    """Flax params for `fcn_jax.models.VGG16` from a torchvision-layout state_dict
    (`features.0` ... `features.28`, `classifier.0/3/6`; `from_torch`)."""
    return from_torch(state_dict, "vgg16")


ARCH_NAMES = {"alexnet": "AlexNet", "vgg16": "VGG16"}


def from_torch(state_dict: Mapping[str, Any], arch: str) -> dict:
    """Flax params for the classifier `arch` (`ARCHS`) from a torchvision-layout state_dict.

    Tensors or numpy arrays are accepted. Any other value (a number, a string, a nested
    dict: signs of a training checkpoint rather than a state_dict) is refused naming its key,
    instead of being turned into a 0-d array or failing inside numpy. Missing, unexpected and
    wrongly shaped entries are all reported in one error.
    """
    not_arrays = [f"{k!r} ({type(v).__name__})" for k, v in state_dict.items() if not _is_array(v)]
    if not_arrays:
        raise ValueError(
            f"state_dict values that are not tensors or arrays: {', '.join(not_arrays)}; "
            "a state_dict maps parameter names to tensors"
        )
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
    num_classes = arrays["classifier.6.bias"].shape[0] if "classifier.6.bias" in arrays else 1000
    expected = _expected_shapes(arch, num_classes)
    problems = [f"missing: {k} (expected shape {s})" for k, s in expected.items() if k not in arrays]
    problems += [f"unexpected: {k} (shape {arrays[k].shape})" for k in arrays if k not in expected]
    problems += [
        f"wrong shape: {k} is {arrays[k].shape}, expected {s}"
        for k, s in expected.items()
        if k in arrays and arrays[k].shape != s
    ]
    if problems:
        raise ValueError(
            f"state_dict does not match torchvision's {ARCH_NAMES[arch]}:\n  " + "\n  ".join(problems)
        )
    return {
        layer: {
            "kernel": _weight_to_kernel(arrays[f"{prefix}.weight"], kind, arch),
            "bias": arrays[f"{prefix}.bias"],
        }
        for prefix, (layer, kind) in torch_layout(arch).items()
    }


def fcn_from_alexnet(
    alexnet_params: Mapping, num_classes: int, variant: str, rng: jax.Array, **model_kwargs
) -> dict:
    """FCN params: conv1-5, fc6 and fc7 from AlexNet; score and upsampling layers initialised
    fresh (`fcn_from_classifier`)."""
    return fcn_from_classifier(alexnet_params, num_classes, variant, rng, **model_kwargs)


def fcn_from_classifier(
    classifier_params: Mapping, num_classes: int, variant: str, rng: jax.Array, **model_kwargs
) -> dict:
    """FCN params on the backbone `model_kwargs["backbone"]` (default alexnet): its
    convolutions, fc6 and fc7 (`transplanted`) from the converted classifier; score and
    upsampling layers initialised fresh."""
    model = FCN(num_classes, variant, **model_kwargs)
    params = flax.core.unfreeze(init_params(model, rng))
    for layer in transplanted(model.backbone):
        for name, value in classifier_params[layer].items():
            value = np.asarray(value, np.float32)
            if value.shape != params[layer][name].shape:
                raise ValueError(
                    f"{layer}.{name}: shape {value.shape}, FCN expects {params[layer][name].shape}"
                )
            params[layer][name] = value
    return jax.tree.map(np.asarray, params)


# -- files -------------------------------------------------------------------------


# safetensors header metadata of the files written here: ONE key, as transformers writes for
# Flax weights. safetensors 0.8 orders the metadata through a hash map, so with several keys
# the same parameters would give other bytes (and another sha256) from one save to the next.
SAFETENSORS_METADATA = {"format": "flax"}


def params_to_bytes(params: Mapping, format: str = "msgpack") -> bytes:
    """Deterministic bytes (float32 leaves) in `format` "msgpack" or "safetensors": the
    checksum of the same parameters is reproducible."""
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), dict(params))
    if format == "safetensors":
        from safetensors.numpy import save

        from fcn_jax.export import flatten_params

        # Contiguous copies: safetensors writes an array's memory as it lies, so a transposed
        # view (every converted kernel) would come back scrambled.
        flat = {k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}
        return save(flat, metadata=SAFETENSORS_METADATA)
    if format != "msgpack":
        raise ValueError(f"format must be msgpack or safetensors, got {format!r}")
    return flax.serialization.msgpack_serialize(params)


def is_safetensors(data: bytes) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 8 + n <= len(data) and data[8:9] == b"{"


def params_from_bytes(data: bytes) -> dict:
    """Nested dicts of numpy arrays from safetensors or msgpack bytes (ValueError if neither)."""
    if is_safetensors(data):
        from safetensors import SafetensorError
        from safetensors.numpy import load

        from fcn_jax.export import unflatten_params

        try:
            return unflatten_params(load(data))
        except (SafetensorError, ValueError) as e:
            raise ValueError(f"damaged safetensors data ({e})") from None
    try:
        return flax.serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"neither safetensors nor flax msgpack ({type(e).__name__}: {e})") from None


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_params(params: Mapping, path: str | os.PathLike) -> str:
    """Write params atomically, as safetensors if `path` ends with .safetensors, else as
    msgpack; return their sha256 (also written beside as PATH.sha256)."""
    path = Path(path)
    data = params_to_bytes(params, "safetensors" if path.suffix == ".safetensors" else "msgpack")
    digest = checksum(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


def load_params(path: str | os.PathLike, sha256: str | None = None) -> dict:
    """Load params written by `save_params` / `fcn-jax convert` (safetensors or msgpack, told
    apart by content), checking the checksum if given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no parameter file at {path}")
    data = path.read_bytes()
    if sha256 is not None and checksum(data) != sha256:
        raise ValueError(f"{path}: sha256 {checksum(data)} does not match the expected {sha256}")
    try:
        return params_from_bytes(data)
    except ValueError as e:
        raise ValueError(f"{path} is not a parameter file written by fcn-jax convert: {e}") from None


# Keys under which training scripts commonly store the weights, tried in this order.
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


def unwrap_state_dict(obj: Mapping) -> tuple[Mapping, str | None]:
    """(state_dict, wrapper key): a checkpoint such as {"epoch": 3, "state_dict": {...}} gives
    its inner mapping and "state_dict"; a plain state_dict is returned as is with None.

    Only a mapping that is not itself all tensors is unwrapped, so a state_dict whose
    parameter happens to be called "model" is never mistaken for a wrapper.
    """
    if all(_is_array(v) for v in obj.values()):
        return obj, None
    for key in STATE_DICT_WRAPPERS:
        inner = obj.get(key)
        if hasattr(inner, "state_dict") and not isinstance(inner, Mapping):
            inner = inner.state_dict()
        if isinstance(inner, Mapping) and inner:
            return inner, key
    return obj, None


def load_torch_state_dict(path: str | os.PathLike, note=None) -> dict:
    """Read a `.pth` file (a state_dict, a whole pickled model, or a training checkpoint that
    holds the state_dict under one of `STATE_DICT_WRAPPERS`) with torch.

    `note(message)` is told, in one line, when the state_dict was taken from such a wrapper:
    the other entries (optimizer state, epoch, ...) are then ignored, which the user should see.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading .pth files needs torch: pip install 'fcn_jax[convert]'") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch state_dict ({e})") from e
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(obj).__name__}")
    obj, key = unwrap_state_dict(obj)
    if key is not None and note is not None:
        note(f"{path}: using the state_dict stored under {key!r} (other entries ignored)")
    return dict(obj)
