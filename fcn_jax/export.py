"""Export a trained FCN as a `jax.export` artifact that runs without flax or fcn_jax.

`export_model(...)` (or `fcn-jax export --checkpoint runs/x --out model.jaxexport`) writes
three files:

    model.jaxexport               jax.export.Exported.serialize() of the whole forward pass
    model.jaxexport.weights.npz   the parameters, keys "layer/name" (e.g. "conv1/kernel")
    model.jaxexport.json          sidecar: input/output shapes and dtypes, class names,
                                  palette, ignore value, platforms, weights checksum

The exported function is `f(params, images) -> outputs` with
  images  uint8 (B, H, W, 3) RGB, B any size (symbolic) unless fixed with `batch`;
          H and W fixed at export time (the FCN's padding and crops are planned per size);
  outputs {"labels": int32 (B, H, W), "logits": float32 (B, H, W, C)} (output="both"),
          or just one of them.
Normalisation happens inside: every uint8 value v of channel c is mapped through a 256x3
table built by calling `fcn_jax.data.normalize` on all 256 values, i.e. exactly
(v / 255 - mean_c) / std_c with torchvision's ImageNet mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225): callers pass raw pixels.

Why the weights are an argument and not constants baked into the module: baking 57M
parameters in made the artifact 228 MB of StableHLO constants and the first call on CPU take
11.5 s to compile (XLA constant handling) against 1.2 s with the weights as an argument, at
64x96; it also lets the same artifact run other weights of the same architecture.

Loading needs only numpy and jax (`load(path)` below imports nothing else, and
docs/inference.md shows the six lines that do it by hand).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "fcn_jax.export/1"
OUTPUTS = ("both", "labels", "logits")
# The lowering platforms jax.export knows. It does not check the names itself: an artifact
# "for" a misspelt platform exports fine and fails only where it is deployed.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def sidecar_path(path) -> Path:
    return Path(str(path) + ".json")


def weights_path(path) -> Path:
    return Path(str(path) + ".weights.npz")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """The platforms, duplicates dropped; ValueError naming any that jax.export does not know."""
    platforms = tuple(dict.fromkeys(platforms))
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        what = f"unknown platform {', '.join(map(repr, unknown))}" if unknown else "no platform given"
        raise ValueError(f"{what} (allowed: {', '.join(PLATFORMS)})")
    return platforms


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "/"))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    """{"conv1/kernel": a, ...} -> {"conv1": {"kernel": a}, ...} (plain dicts)."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def normalization_table() -> np.ndarray:
    """(256, 3) float32: `fcn_jax.data.normalize` of every uint8 value, per channel."""
    from fcn_jax.data import normalize

    return normalize(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def export_model(
    model,
    params,
    meta,
    out,
    height: int,
    width: int,
    batch: int | None = None,
    output: str = "both",
    platforms: Sequence[str] = ("cpu", "cuda"),
) -> dict:
    """Write the artifact, its weights and its sidecar (see the module doc); returns the sidecar.

    The files are written under temporary names and renamed when all three are complete, so
    a failure leaves an existing export at `out` as it was; the sidecar, renamed last, records
    the weights' checksum, so even a crash between the renames is caught by `load` rather than
    mixing two exports silently (see the comment at the end). Raises ValueError for bad
    arguments and OSError (one line) if `out` cannot be written.
    """
    import jax
    import jax.numpy as jnp
    from jax import export as jax_export

    from fcn_jax.fsutil import atomic_output, check_writable_dir

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 (or None for any batch size), got {batch}")
    try:
        platforms = check_platforms(platforms)
    except ValueError as e:
        raise ValueError(f"platforms: {e}") from None
    out = Path(out)
    if out.is_dir():
        raise OSError(f"output {out}: is a directory; give a file name")
    check_writable_dir(out.parent, "output directory")
    table = normalization_table()
    flat = flatten_params(params)
    plain = unflatten_params(flat)  # no FrozenDict etc.: the loader has no flax

    def forward(p, images):
        x = jnp.asarray(table)[images.astype(jnp.int32), jnp.arange(3)]
        logits = model.apply({"params": p}, x, train=False).astype(jnp.float32)
        outputs = {"labels": jnp.argmax(logits, axis=-1).astype(jnp.int32), "logits": logits}
        return outputs if output == "both" else outputs[output]

    b = jax_export.symbolic_shape("batch")[0] if batch is None else int(batch)
    spec = jax.ShapeDtypeStruct((b, int(height), int(width), 3), jnp.uint8)
    p_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), plain)
    exported = jax_export.export(jax.jit(forward), platforms=platforms)(p_spec, spec)

    c = int(model.num_classes)
    shapes = {
        "labels": {"shape": [batch, height, width], "dtype": "int32"},
        "logits": {"shape": [batch, height, width, c], "dtype": "float32"},
    }
    from fcn_jax.data import IMAGENET_MEAN, IMAGENET_STD

    side = {
        "format": FORMAT,
        "artifact": out.name,
        "weights": weights_path(out).name,
        "weights_sha256": None,  # filled in below, from the file written
        "input": {
            "shape": [batch, height, width, 3],
            "dtype": "uint8",
            "layout": "NHWC, RGB",
            "normalization": "inside the artifact: (x / 255 - mean) / std per channel",
            "mean": IMAGENET_MEAN.tolist(),
            "std": IMAGENET_STD.tolist(),
            "batch": "any (symbolic)" if batch is None else batch,
        },
        "output": output,
        "outputs": shapes if output == "both" else {output: shapes[output]},
        "call": "exported.call(params, images), params = weights unflattened on '/'",
        "num_classes": c,
        "class_names": list(meta.class_names) if meta is not None else [str(i) for i in range(c)],
        "palette": np.asarray(meta.palette).tolist() if meta is not None else None,
        "ignore_index": int(meta.ignore_index) if meta is not None else None,
        "variant": getattr(model, "variant", None),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
    }
    # All three are written to temporary names first and renamed only when all are complete,
    # so a failure while writing (the long part) leaves a previous export at `out` as it was.
    # The stack renames in reverse order of entry: weights, artifact, sidecar. Whatever
    # subset a crash between the renames leaves, the sidecar's checksum then does not match
    # the weights beside it, which `load` reports.
    with contextlib.ExitStack() as stack:
        side_tmp = stack.enter_context(atomic_output(sidecar_path(out)))
        artifact_tmp = stack.enter_context(atomic_output(out))
        weights_tmp = stack.enter_context(atomic_output(weights_path(out)))
        artifact_tmp.write_bytes(exported.serialize())
        with open(weights_tmp, "wb") as f:
            np.savez(f, **flat)
        side["weights_sha256"] = _sha256(weights_tmp)
        side_tmp.write_text(json.dumps(side, indent=2) + "\n")
    return side


class ExportedSegmenter:
    """Callable over an exported artifact: `model(images_uint8) -> outputs` (numpy).

    Needs only numpy and jax. `images` is uint8 (B, H, W, 3) at the exported H and W (or one
    (H, W, 3) image, which gets a batch axis added and removed).
    """

    def __init__(self, path, verify: bool = True):
        import jax
        from jax import export as jax_export

        path = Path(path)
        for p in (path, sidecar_path(path), weights_path(path)):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p}: missing (an export writes the artifact, "
                    f"{sidecar_path(path).name} and {weights_path(path).name})"
                )
        self.meta = json.loads(sidecar_path(path).read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{sidecar_path(path)}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        if verify and _sha256(weights_path(path)) != self.meta["weights_sha256"]:
            raise ValueError(
                f"{weights_path(path)}: checksum does not match {sidecar_path(path).name}; "
                "the weights belong to another export or are damaged"
            )
        self.exported = jax_export.deserialize(bytearray(path.read_bytes()))
        with np.load(weights_path(path)) as w:
            self.params = jax.device_put(unflatten_params({k: w[k] for k in w.files}))
        self._call = jax.jit(self.exported.call)
        self.height, self.width = self.meta["input"]["shape"][1:3]
        self.class_names = self.meta["class_names"]

    def __call__(self, images):
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 images (B, {self.height}, {self.width}, 3) as exported, "
                f"got {images.dtype} {images.shape}"
            )
        out = self._call(self.params, images)
        import jax

        out = jax.tree.map(np.asarray, out)
        return jax.tree.map(lambda a: a[0], out) if single else out


def load(path, verify: bool = True) -> ExportedSegmenter:
    """The exported model at `path` as a callable (see ExportedSegmenter)."""
    return ExportedSegmenter(path, verify)
