"""Orbax checkpoints of a run directory, and loading a trained model for inference.

A run directory holds:
  config.json      the experiment config
  dataset.json     class names, palette, ignore value of the training data
  checkpoints/N/   the latest few train states (orbax), with the data iterator state
  best/N/          the train state with the best val mIoU so far
Orbax writes each step into a temporary directory and renames it when complete,
so a crash never leaves a half-written step that looks finished; a step that is
damaged anyway (disk errors, hand edits) is skipped on resume with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

LATEST, BEST = "checkpoints", "best"


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int = 2):
        workdir = Path(workdir).absolute()
        self.latest = ocp.CheckpointManager(
            workdir / LATEST,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self.best = ocp.CheckpointManager(
            workdir / BEST,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m["miou"], best_mode="max"
            ),
        )

    @staticmethod
    def _args(state: Any, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.latest.save(step, args=self._args(state, meta))

    def save_best(self, step: int, state: Any, meta: dict, miou: float) -> None:
        if step in self.best.all_steps():  # evaluated before a crash, evaluated again on resume
            return
        self.best.save(step, args=self._args(state, meta), metrics={"miou": float(miou)})

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest intact (state, meta, step); damaged steps are skipped."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self.latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # orbax raises many types for unreadable data
                log.warning(
                    "checkpoint step %d in %s is damaged, trying an older one: %s",
                    step,
                    self.latest.directory,
                    e,
                )
                print(
                    f"warning: skipping damaged checkpoint {self.latest.directory}/{step}: "
                    f"{type(e).__name__}: {e}"
                )
                continue
            return restored.state, dict(restored.meta), step
        return None

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def meta_to_json(meta: Any) -> dict:
    """A DatasetMeta dataclass as plain JSON types (numpy arrays as lists)."""
    import dataclasses

    import numpy as np

    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, Path):
            return str(v)
        return list(v) if isinstance(v, tuple) else v

    return {k: plain(v) for k, v in dataclasses.asdict(meta).items()}


def meta_from_json(obj: dict):
    import dataclasses

    import numpy as np

    from fcn_jax.data import DatasetMeta

    names = {f.name for f in dataclasses.fields(DatasetMeta)}
    kwargs = {k: v for k, v in obj.items() if k in names}
    kwargs["palette"] = np.asarray(kwargs["palette"], np.uint8)
    if kwargs.get("data_dir"):
        kwargs["data_dir"] = Path(kwargs["data_dir"])
    if "ignore_color" in kwargs:
        kwargs["ignore_color"] = tuple(kwargs["ignore_color"])
    return DatasetMeta(**kwargs)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def _resolve_step_dir(path: Path) -> tuple[Path, Path, int]:
    """(run dir, manager dir, step) for a run dir or a step dir inside it."""
    if (path / "config.json").is_file():
        for sub in (BEST, LATEST):
            steps = sorted(int(p.name) for p in (path / sub).glob("*") if p.name.isdigit())
            if steps:
                return path, path / sub, steps[-1]
        raise FileNotFoundError(f"{path} has no checkpoint under {BEST}/ or {LATEST}/")
    if path.name.isdigit() and (path.parent.parent / "config.json").is_file():
        return path.parent.parent, path.parent, int(path.name)
    raise FileNotFoundError(
        f"{path} is neither a run directory (with config.json) nor a checkpoint step directory in one"
    )


def load_params(path: str | Path) -> tuple[dict, dict, int]:
    """(params, run config dict, step) from a run directory (best, else latest) or a step directory."""
    run_dir, manager_dir, step = _resolve_step_dir(Path(path).absolute())
    config = json.loads((run_dir / "config.json").read_text())
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(manager_dir, options=options, item_handlers=handlers) as mgr:
        # Restore onto this process's first device, whatever topology saved it.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            mgr.item_metadata(step)["state"],
        )
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    state = restored.state
    params = state["params"] if isinstance(state, dict) else state.params
    return jax.tree.map(lambda a: a, params), config, step


def load_inference(path: str | Path):
    """(model, params, dataset meta) of a trained run, for prediction and export."""
    import jax.numpy as jnp

    from fcn_jax.models import FCN

    params, config, _ = load_params(path)
    run_dir, _, _ = _resolve_step_dir(Path(path).absolute())
    m = config["model"]
    model = FCN(
        num_classes=int(m["num_classes"]),
        variant=m["variant"],
        dropout_rate=float(m.get("dropout_rate", 0.5)),
        trainable_upsampling=bool(m.get("trainable_upsampling", True)),
        dtype=jnp.dtype(m.get("dtype", "float32")),
    )
    meta = meta_from_json(json.loads((run_dir / "dataset.json").read_text()))
    return model, params, meta
