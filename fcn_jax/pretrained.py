"""A trained model as a hub-style folder: `model.safetensors` + `config.json`, loadable by name.

`fcn-jax export --checkpoint RUN --format safetensors --out DIR` (or `save_pretrained`) writes

    DIR/model.safetensors   the parameters: keys "layer/name" (e.g. "conv1/kernel"), Flax
                            layouts (conv kernels (kh, kw, in, out)), float32; nothing pickled
    DIR/config.json         format, the model spec (`ModelSpec.to_dict()`: classes, variant,
                            dropout, upsampling, dtype, ops), class names, palette, ignore
                            value, input normalisation (mean/std), the sha256 of
                            model.safetensors, and which run and step it came from

which is what the Hugging Face Hub, torchvision weight enums and mmsegmentation metafiles
share: weights that a file name and a checksum identify, and a config that says what they are.
Upload the folder as a Hub model repo and `Segmenter.from_pretrained("user/repo")` loads it
by name (through `huggingface_hub`, cached); a local folder loads the same way.

`load_pretrained(path_or_repo_id)` checks the checksum and that the weights fit the model the
spec builds (`ModelSpec.from_dict(...).build()`: no second model builder), and raises
ValueError with one line otherwise: a damaged or replaced file, a Hub repo that cannot be
reached (no network, unknown repo), a folder that is not such a folder. Runs stay the business
of `fcn_jax.run.load_trained`; `load_model` takes either (what `--checkpoint` accepts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "fcn_jax.pretrained/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# A Hub repo id: "name" or "owner/name" (letters, digits, -, _, .).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class PretrainedError(ValueError):
    """A pretrained folder or Hub repo that cannot be used; the message says which and why."""


@dataclasses.dataclass
class Pretrained:
    """A model loaded from a pretrained folder (the fields inference uses, as `run.Trained`)."""

    model: Any  # fcn_jax.models.FCN
    params: Any
    meta: Any  # fcn_jax.data.DatasetMeta
    spec: Any  # fcn_jax.models.ModelSpec
    path: Path  # the local folder (in the Hub cache for a repo id)
    config: dict
    source: str  # what was asked for: a path or a repo id


def is_pretrained_dir(path) -> bool:
    """A folder holding model.safetensors and config.json (a run directory has no
    model.safetensors; its config.json is the experiment config)."""
    p = Path(path)
    return (p / WEIGHTS_FILE).is_file() and (p / CONFIG_FILE).is_file()


def config_dict(spec, meta, weights_sha256: str, source: dict | None = None) -> dict:
    """What config.json holds (see the module doc)."""
    from fcn_jax.data import IMAGENET_MEAN, IMAGENET_STD

    c = int(spec.num_classes)
    return {
        "format": FORMAT,
        "library": "fcn_jax",
        "model": spec.to_dict(),
        "num_classes": c,
        "dataset": meta.name if meta is not None else None,
        "class_names": list(meta.class_names) if meta is not None else [str(i) for i in range(c)],
        "palette": np.asarray(meta.palette).tolist() if meta is not None else None,
        "ignore_index": int(meta.ignore_index) if meta is not None else None,
        "ignore_color": list(meta.ignore_color) if meta is not None else None,
        "normalization": {
            "input": "uint8 RGB",
            "formula": "(x / 255 - mean) / std per channel",
            "mean": IMAGENET_MEAN.tolist(),
            "std": IMAGENET_STD.tolist(),
        },
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": weights_sha256,
            "keys": "layer/name, Flax layouts (conv kernels (kh, kw, in, out)), float32",
        },
        "trained_from": source,
    }


def save_pretrained(spec, params: Mapping, meta, out, source: dict | None = None) -> dict:
    """Write `out/model.safetensors` and `out/config.json`; returns the config.

    Both go to temporary names and are renamed when complete, the config (holding the
    weights' checksum) last: a failure leaves a previous folder as it was, and a crash between
    the two renames leaves a checksum that does not match, which loading reports. Raises
    OSError (one line) if `out` cannot be written.
    """
    from safetensors.numpy import save

    from fcn_jax.convert import SAFETENSORS_METADATA
    from fcn_jax.export import flatten_params
    from fcn_jax.fsutil import atomic_output, check_writable_dir

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OSError(f"output {out}: exists and is not a folder")
    check_writable_dir(out, "output folder")
    # Contiguous: safetensors writes an array's memory as it lies (a transposed view would be scrambled).
    flat = {k: np.ascontiguousarray(v, np.float32) for k, v in flatten_params(params).items()}
    with contextlib.ExitStack() as stack:  # exits in reverse: the weights renamed first
        config_tmp = stack.enter_context(atomic_output(out / CONFIG_FILE))
        weights_tmp = stack.enter_context(atomic_output(out / WEIGHTS_FILE))
        # Bytes written into the temporary, not save_file(path): save_file creates the file
        # itself, mode 0600, which a folder meant for sharing should not have.
        data = save(flat, metadata=SAFETENSORS_METADATA)
        weights_tmp.write_bytes(data)
        config = config_dict(spec, meta, hashlib.sha256(data).hexdigest(), source)
        del data
        config_tmp.write_text(json.dumps(config, indent=2) + "\n")
    return config


# -- loading ----------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def download(repo_id: str, revision: str | None = None, _not_local: bool = False) -> Path:
    """The Hub repo's config.json and model.safetensors in the local cache (fetched if needed);
    PretrainedError naming the repo and the cause if that fails (no network, HF_HUB_OFFLINE=1
    without a cached copy, unknown repo, no access)."""
    what = "no local folder of that name, and it cannot be fetched as" if _not_local else "cannot fetch"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(
            f"{repo_id}: loading from the Hugging Face Hub needs huggingface_hub: "
            "pip install 'fcn_jax[deploy]'"
        ) from None
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE])
    except Exception as e:  # huggingface_hub raises HTTP, offline, cache and validation errors
        raise PretrainedError(
            f"{repo_id}: {what} a Hugging Face Hub repo ({_first_line(e)}); "
            "check the network (or HF_HUB_OFFLINE), the repo id and access, or pass a local folder"
        ) from None
    return Path(folder)


def locate(path_or_repo_id, revision: str | None = None) -> Path:
    """The local folder: an existing path as is, else a Hub repo id fetched into the cache."""
    p = Path(path_or_repo_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise PretrainedError(f"{p}: not a folder (a pretrained model is a folder with {WEIGHTS_FILE})")
        return p
    text = str(path_or_repo_id)
    if not _REPO_ID.match(text):
        raise PretrainedError(f"{text}: no such folder, and not a Hugging Face Hub repo id (owner/name)")
    return download(text, revision, _not_local=True)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PretrainedError(
            f"{path}: missing (a pretrained folder holds {WEIGHTS_FILE} and {CONFIG_FILE})"
        ) from None
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path}: cannot be read as JSON ({_first_line(e)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise PretrainedError(f"{path}: format {found!r}, expected {FORMAT!r} (written by fcn-jax export)")
    return config


def _meta(config: dict):
    from fcn_jax.data import DatasetMeta
    from fcn_jax.data.meta import default_palette

    c = int(config["num_classes"])
    palette = config.get("palette")
    ignore = config.get("ignore_index")
    return DatasetMeta(
        name=str(config.get("dataset") or "pretrained"),
        num_classes=c,
        ignore_index=int(ignore) if ignore is not None else 255,
        class_names=[str(n) for n in config["class_names"]],
        palette=np.asarray(palette if palette is not None else default_palette(c), np.uint8).reshape(-1, 3),
        splits={},
        ignore_color=tuple(int(v) for v in (config.get("ignore_color") or (0, 0, 0))),
    )


def load_pretrained(path_or_repo_id, revision: str | None = None, verify: bool = True) -> Pretrained:
    """The model, parameters (numpy) and class facts of a pretrained folder or Hub repo id.

    Raises PretrainedError (a ValueError) with one line naming the folder or repo and why."""
    import jax

    from fcn_jax import checkpoints
    from fcn_jax.convert import params_from_bytes
    from fcn_jax.models import ModelSpec

    folder = locate(path_or_repo_id, revision)
    config = _read_config(folder)
    weights = folder / str((config.get("weights") or {}).get("file") or WEIGHTS_FILE)
    if not weights.is_file():
        raise PretrainedError(f"{weights}: missing (named by {folder / CONFIG_FILE})")
    try:
        spec = ModelSpec.from_dict(config["model"])
        meta = _meta(config)
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedError(
            f"{folder / CONFIG_FILE}: not a model config fcn_jax can build ({_first_line(e)})"
        ) from None
    if len(meta.class_names) != spec.num_classes:
        raise PretrainedError(
            f"{folder / CONFIG_FILE}: {len(meta.class_names)} class names for {spec.num_classes} classes"
        )
    data = weights.read_bytes()
    want = (config.get("weights") or {}).get("sha256")
    if verify and hashlib.sha256(data).hexdigest() != want:
        raise PretrainedError(
            f"{weights}: sha256 does not match {CONFIG_FILE} ({want}); the file is damaged or "
            "belongs to another model"
        )
    try:
        params = params_from_bytes(data)
    except ValueError as e:
        raise PretrainedError(f"{weights}: {e}") from None
    model = spec.build()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3)))["params"])
    diff = checkpoints.signature_diff(checkpoints.signature(params), checkpoints.signature(shapes))
    if diff:
        raise PretrainedError(
            f"{weights}: parameters do not fit the model in {CONFIG_FILE}: " + "; ".join(diff)
        )
    return Pretrained(model, params, meta, spec, folder, config, str(path_or_repo_id))


def load_model(path, revision: str | None = None):
    """What `--checkpoint` names: a pretrained folder (`load_pretrained`), else a run or step
    directory (`fcn_jax.run.load_trained`). Both results have .model, .params and .meta."""
    from fcn_jax import run as run_lib

    if is_pretrained_dir(path):
        return load_pretrained(path, revision)
    return run_lib.load_trained(path)


def spec_of(loaded):
    """The ModelSpec of what `load_model` returned: the pretrained config's, or the run's record."""
    return loaded.spec if isinstance(loaded, Pretrained) else loaded.run.spec()
