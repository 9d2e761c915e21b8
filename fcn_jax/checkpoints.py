"""One checkpoint step directory: writing it whole, proving it intact, reading it back.

A step directory holds an orbax composite checkpoint (`state/`: the train state,
`meta/`: JSON such as the data iterator state) plus `fcn_jax_checksums.json`, the size
and sha256 of every file orbax wrote. `save` has orbax write into `<step>.partial`,
adds the checksums, then renames the directory to `<step>`: a directory named by a
bare step number is complete by construction, and a kill at any moment leaves at most
a `.partial` directory (which `fcn_jax.run` sets aside, never reads).

orbax itself does not verify array bytes on restore, so `verify` recomputes the
checksums first: flipped or truncated bytes make the step `Damaged`, not silently
wrong parameters. A checkpoint without checksums (written by fcn_jax before they
existed) is read without that proof.

Where a step directory sits, and what to do with a damaged one, is `fcn_jax.run`'s
business; this module never moves or deletes anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fcn_jax import fsutil

CHECKSUMS = "fcn_jax_checksums.json"
PARTIAL = ".partial"
FORMAT = 1

log = logging.getLogger(__name__)


class Damaged(Exception):
    """A step directory that cannot be trusted; the message says why (one line)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class StructureMismatch(Exception):
    """A step directory whose train state has another structure than the one asked for."""


# -- checksums ---------------------------------------------------------------------------


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(step_dir: Path) -> None:
    files = {
        str(p.relative_to(step_dir)): {"size": p.stat().st_size, "sha256": _digest(p)}
        for p in _data_files(step_dir)
    }
    fsutil.atomic_write_json(step_dir / CHECKSUMS, {"format": FORMAT, "files": files})


def has_checksums(step_dir: Path) -> bool:
    return (step_dir / CHECKSUMS).is_file()


def verify(step_dir: Path) -> bool:
    """True if every file matches its recorded checksum, False if there are no checksums
    (an older checkpoint: unverifiable); raises Damaged otherwise."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        raise Damaged(step_dir, "not a directory")
    if not has_checksums(step_dir):
        return False
    try:
        record = json.loads((step_dir / CHECKSUMS).read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Damaged(step_dir, f"unreadable {CHECKSUMS} ({e})") from None
    for rel, want in sorted(files.items()):
        p = step_dir / rel
        try:
            size = p.stat().st_size
        except OSError:
            raise Damaged(step_dir, f"{rel} is missing") from None
        if size != want["size"]:
            raise Damaged(step_dir, f"{rel} has {size} bytes, {want['size']} were written")
        try:
            digest = _digest(p)
        except OSError as e:
            raise Damaged(step_dir, f"{rel} cannot be read ({e.strerror or e})") from None
        if digest != want["sha256"]:
            raise Damaged(step_dir, f"{rel} does not match its checksum (corrupted bytes)")
    return True


# -- the train state's structure -----------------------------------------------------------


def signature(tree: Any) -> dict[str, list]:
    """{path: [shape, dtype]} of every array in `tree` (arrays or ShapeDtypeStructs): what
    must match for a checkpoint to restore into it."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): [list(np.shape(leaf)), str(leaf.dtype)] for path, leaf in flat}


def signature_diff(saved: dict, wanted: dict, limit: int = 6) -> list[str]:
    """Human-readable differences between two signatures (at most `limit` lines)."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if a == b:
            continue
        if a is None:
            out.append(f"{key}: not in the saved state")
        elif b is None:
            out.append(f"{key}: saved, but not in this config's state")
        else:
            out.append(f"{key}: saved {a[1]}{tuple(a[0])}, this config {b[1]}{tuple(b[0])}")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more"]
    return out


# -- save and restore ----------------------------------------------------------------------


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(step_dir: Path, state: Any, meta: dict) -> None:
    """Write `state` and `meta` (JSON) to `step_dir`, which must not exist, all or nothing.

    Every process calls it (orbax writes each process's shards); process 0 adds the
    checksums and renames. A `<step>.partial` left by a killed process must have been
    moved away first (`fcn_jax.run` does).
    """
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    partial = step_dir.with_name(step_dir.name + PARTIAL)
    meta = {**meta, "signature": signature(state), "format": FORMAT}
    with _checkpointer() as ckptr:
        ckptr.save(
            partial, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )
    if jax.process_index() == 0:
        write_checksums(partial)
        os.replace(partial, step_dir)
        fsutil.fsync_dir(step_dir.parent)
    _sync(f"fcn_jax_save_{step_dir.name}")


def read_meta(step_dir: Path) -> dict:
    """The step's JSON meta (data iterator state, step, signature, eval metrics ...)."""
    import orbax.checkpoint as ocp

    try:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
            meta = ckptr.restore(Path(step_dir) / "meta")
    except Exception as e:  # orbax raises many types for missing or unreadable files
        raise Damaged(step_dir, f"its meta cannot be read ({type(e).__name__}: {_short(e)})") from None
    if not isinstance(meta, dict):
        raise Damaged(step_dir, "its meta is not a JSON object")
    return meta


def restore(step_dir: Path, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) of a verified step, laid out as `abstract_state` (ShapeDtypeStructs
    with shardings). Raises Damaged or StructureMismatch."""
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    verify(step_dir)
    meta = read_meta(step_dir)
    saved = meta.get("signature")
    if saved is not None:
        diff = signature_diff(saved, signature(abstract_state))
        if diff:
            raise StructureMismatch(f"{step_dir}: the saved train state differs: " + "; ".join(diff))
    try:
        with _checkpointer() as ckptr:
            restored = ckptr.restore(
                step_dir, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
    except Exception as e:  # orbax raises many types for unreadable data
        if saved is None and _looks_structural(e):  # an older checkpoint: no signature to compare
            raise StructureMismatch(f"{step_dir}: the saved train state differs ({_short(e)})") from None
        raise Damaged(step_dir, f"orbax cannot restore it ({type(e).__name__}: {_short(e)})") from None
    return restored.state, meta


def restore_params(step_dir: Path, device: jax.Device | None = None) -> dict:
    """Only the parameters of a verified step (not the optimizer state), on one device of
    this process, whatever topology saved them. Raises Damaged."""
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    verify(step_dir)
    sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            tree = ckptr.metadata(step_dir / "state").item_metadata.tree
        abstract = {
            "params": jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree["params"]
            )
        }
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(
                step_dir / "state",
                args=ocp.args.PyTreeRestore(
                    item=abstract,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=True,
                ),
            )
    except Exception as e:  # orbax raises many types for unreadable data
        raise Damaged(step_dir, f"its parameters cannot be read ({type(e).__name__}: {_short(e)})") from None
    return restored["params"]


def all_finite(tree: Any) -> bool:
    return all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(tree))


def _looks_structural(e: Exception) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("structure", "missing", "unexpected", "mismatch", "shape"))


def _short(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
