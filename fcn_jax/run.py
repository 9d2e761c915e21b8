"""The run directory: its layout, what it records, and the only way to read it back.

    <workdir>/
      model.json          the resolved, frozen model spec (models.ModelSpec), written when
                          the run starts: every later use builds its model from it
      dataset.json        facts about the data it trains on (directory, class names,
                          palette, ignore value, split sizes, train-split fingerprint)
      config.json         the experiment config as the user gave it (defaults filled in,
                          nothing derived); configs/ keeps earlier ones a resume replaced
      checkpoints/<step>/ the newest train states (checkpoints.py: orbax + checksums)
      best/<step>/        the train state with the best eval mIoU
      set_aside/          damaged, diverged or half-written steps, moved here, never deleted
      metrics.jsonl, tensorboard/, pictures/, eval_<split>.json, report/
      .lock               held by the process that trains in it

Everything that reads a run goes through here: `load_trained(path)` gives the model,
its parameters (not the optimizer state) and the dataset facts for eval, predict,
report, export and `Segmenter.from_checkpoint`; `resolve` finds the step directory
(best, else latest, or the step given). Training uses `RunLock`, `check_resumable`,
`write_records` and `CheckpointStore`. Runs written before model.json existed (config.json
carrying num_classes) can still be read for inference.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import jax

from fcn_jax import checkpoints, fsutil
from fcn_jax.data.meta import DatasetMeta
from fcn_jax.models import FCN, ModelSpec
from fcn_jax.ops import OpSet

log = logging.getLogger(__name__)

MODEL_FILE, DATASET_FILE, CONFIG_FILE = "model.json", "dataset.json", "config.json"
LATEST, BEST, ASIDE, CONFIGS = "checkpoints", "best", "set_aside", "configs"
METRICS, LOCK = "metrics.jsonl", ".lock"
FORMAT = 2  # 1: config.json carried the model's num_classes and the data directory


class RunError(ValueError):
    """A run directory that cannot be used as asked; the message names the path and why."""


class RunLocked(RunError):
    """Another process trains in this run directory."""


class IncompatibleRun(RunError):
    """The saved run cannot be continued with this config; the message lists what differs."""


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not text.strip():
        raise RunError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def _now() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


# -- the run directory ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """A run directory (see the module doc). Creating one touches nothing on disk."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def latest_dir(self) -> Path:
        return self.root / LATEST

    @property
    def best_dir(self) -> Path:
        return self.root / BEST

    @property
    def aside_dir(self) -> Path:
        return self.root / ASIDE

    @property
    def metrics_file(self) -> Path:
        return self.root / METRICS

    def eval_file(self, split: str) -> Path:
        return self.root / f"eval_{split}.json"

    # -- what it is -----------------------------------------------------------------------

    def is_legacy(self) -> bool:
        """Written by fcn_jax before model.json: config.json carries model.num_classes."""
        if (self.root / MODEL_FILE).exists() or not (self.root / CONFIG_FILE).is_file():
            return False
        try:
            config = json.loads((self.root / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and "num_classes" in (config.get("model") or {})

    def has_checkpoints(self) -> bool:
        return bool(_steps(self.latest_dir) or _steps(self.best_dir))

    def exists(self) -> bool:
        """Holds a run: its records, or any checkpoint."""
        return (
            (self.root / MODEL_FILE).exists()
            or (self.root / CONFIG_FILE).exists()
            or bool(_steps(self.latest_dir) or _steps(self.best_dir))
        )

    def spec(self) -> ModelSpec:
        path = self.root / MODEL_FILE
        if not path.exists() and self.is_legacy():
            return _legacy_spec(_read_json(self.root / CONFIG_FILE))
        record = _read_json(path)
        try:
            return ModelSpec.from_dict(record["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{path}: not a model spec fcn_jax can build ({type(e).__name__}: {e})") from None

    def model(self) -> FCN:
        return self.spec().build()

    def dataset(self) -> DatasetMeta:
        path = self.root / DATASET_FILE
        record = _read_json(path)
        try:
            return DatasetMeta.from_dict(record.get("dataset", record))
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{path}: not a dataset record ({type(e).__name__}: {e})") from None

    def dataset_record(self) -> dict:
        return _read_json(self.root / DATASET_FILE)

    def config(self) -> dict:
        config = _read_json(self.root / CONFIG_FILE)
        if not isinstance(config, dict):
            raise RunError(f"{self.root / CONFIG_FILE}: not a config (a JSON object)")
        return config

    def inference(self) -> tuple[tuple[float, ...], bool]:
        """The test-time augmentation the run's config asks `fcn-jax eval` for (its `inference`
        section): (scales, flip); plain, ((1.0,), False), for a run written without one (or
        without a config.json: a bare checkpoint folder can still be evaluated)."""
        from fcn_jax.predict import check_scales

        path = self.root / CONFIG_FILE
        if not path.exists():
            return (1.0,), False
        section = self.config().get("inference", {})
        if not isinstance(section, dict):
            raise RunError(f"{path}: inference: not a section (a JSON object)")
        scales, flip = section.get("scales", [1.0]), section.get("flip", False)
        try:
            if not isinstance(scales, list) or any(isinstance(s, (bool, str)) for s in scales):
                raise ValueError(f"not a list of numbers: {scales!r}")
            scales = check_scales(scales)
        except (TypeError, ValueError) as e:
            raise RunError(f"{path}: inference.scales: {e}") from None
        if not isinstance(flip, bool):
            raise RunError(f"{path}: inference.flip = {flip!r}: must be true or false")
        return scales, flip

    def data_dir(self) -> Path | None:
        """The prepared dataset the run trained on, if it recorded one."""
        if self.is_legacy():
            d = (self.config().get("data") or {}).get("data_dir")
            return Path(d) if d else None
        meta = self.dataset()
        return meta.data_dir

    # -- steps ----------------------------------------------------------------------------

    def steps(self, kind: str = LATEST) -> list[int]:
        return _steps(self.root / kind)

    def step_dir(self, which: str | int | None = None) -> Path:
        """`None`: best if any, else the latest; "best" / "latest"; or a step number."""
        if isinstance(which, int):
            for kind in (LATEST, BEST):
                if which in self.steps(kind):
                    return self.root / kind / str(which)
            raise RunError(f"{self.root}: no checkpoint of step {which}")
        kinds = {None: (BEST, LATEST), "best": (BEST,), "latest": (LATEST,)}[which]
        for kind in kinds:
            steps = self.steps(kind)
            if steps:
                return self.root / kind / str(steps[-1])
        raise RunError(f"{self.root}: no checkpoint under {' or '.join(k + '/' for k in kinds)}")


def _legacy_spec(config: dict) -> ModelSpec:
    """The model a format-1 run trained (its own defaults, as that version applied them)."""
    m = config.get("model") or {}
    try:
        return ModelSpec(
            num_classes=int(m["num_classes"]),
            variant=str(m["variant"]),
            dropout_rate=float(m.get("dropout_rate", 0.5)),
            trainable_upsampling=bool(m.get("trainable_upsampling", True)),
            dtype=str(m.get("dtype", "float32")),
            ops=OpSet(conv="winograd" if m.get("winograd", True) else "xla"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(
            f"config.json: not a model config fcn_jax can build ({type(e).__name__}: {e})"
        ) from None


def resolve(path: str | Path) -> tuple[Run, Path]:
    """(run, step directory) for a run directory (best, else latest) or a step directory
    inside one (`run/checkpoints/800`, `run/best/1000`)."""
    path = Path(path).absolute()
    if not path.exists():
        raise RunError(f"{path}: no such run or checkpoint directory")
    run = Run(path)
    if run.exists():
        return run, run.step_dir()
    if path.name.isdigit() and path.parent.name in (LATEST, BEST) and Run(path.parent.parent).exists():
        return Run(path.parent.parent), path
    raise RunError(
        f"{path}: neither a run directory (with {MODEL_FILE}) nor a checkpoint step directory "
        f"inside one ({LATEST}/<step> or {BEST}/<step>)"
    )


@dataclasses.dataclass
class Trained:
    """A trained model as inference needs it."""

    model: FCN
    params: Any
    meta: DatasetMeta | None
    step_dir: Path
    run: Run

    @property
    def step(self) -> int:
        return int(self.step_dir.name)


def load_trained(path: str | Path, device: jax.Device | None = None) -> Trained:
    """The model, parameters (only: not the optimizer state) and dataset facts of a run
    directory (its best checkpoint, else its latest) or of one step directory in it.

    Raises RunError with one line naming the file or step directory at fault.
    """
    run, step_dir = resolve(path)
    spec = run.spec()
    try:
        meta = run.dataset()
    except RunError:
        if (run.root / DATASET_FILE).exists():
            raise
        meta = None
    try:
        params = checkpoints.restore_params(step_dir, device)
    except checkpoints.Damaged as e:
        raise RunError(f"{step_dir}: damaged checkpoint: {e.reason}") from None
    want = checkpoints.signature(jax.eval_shape(lambda: _init(spec)))
    diff = checkpoints.signature_diff(checkpoints.signature(params), want)
    if diff:
        raise RunError(f"{step_dir}: parameters do not fit {run.root / MODEL_FILE}: " + "; ".join(diff))
    return Trained(spec.build(), params, meta, step_dir, run)


def _init(spec: ModelSpec):
    return spec.build().init(jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3), jax.numpy.float32))["params"]


# -- one trainer per run directory ------------------------------------------------------------


class RunLock:
    """An exclusive lock on a run directory for the life of one training process.

    `fcntl.flock` on `<run>/.lock` (`.lock.p<k>` for process k of a multi-process run): the
    kernel releases it when the process ends, however it ends, so a killed run never
    blocks the next one. The file names the holder for the error message.
    """

    def __init__(self, root: str | Path, process_index: int = 0):
        self.root = Path(root).absolute()
        self.path = self.root / (LOCK if process_index == 0 else f"{LOCK}.p{process_index}")
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fsutil.check_writable_dir(self.root, "--workdir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise RunLocked(
                f"{self.root}: another fcn-jax train is running in this directory ({holder}); "
                "wait for it to end or stop it, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def move_aside(run: Run) -> Path:
    """Rename the whole run directory to `<workdir>.old-<time>` (nothing is deleted)."""
    target = run.root.with_name(f"{run.root.name}.old-{_now()}")
    n = 1
    while target.exists():
        n += 1
        target = run.root.with_name(f"{run.root.name}.old-{_now()}-{n}")
    os.rename(run.root, target)
    return target


# -- starting or continuing a run --------------------------------------------------------------


# Config keys that define which data a run sees in which order: a resume that changes them
# would not continue the run but start another in the same directory.
IDENTITY_KEYS = ("seed", "data.train_split", "train.batch_size")
# Optimizer keys whose change gives the optimizer state another structure (named in the
# refusal rather than the state's paths).
STATE_SHAPING_KEYS = ("name", "accumulate_steps", "clip_grad_norm", "weight_decay", "momentum")


def _get(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples -> lists, as they come back from config.json


def dataset_record(meta: DatasetMeta, train_split: str) -> dict:
    """What dataset.json holds: the dataset's facts and a fingerprint of the train split
    (None for a dataset that is not a prepared directory, e.g. weights imported by hand)."""
    from fcn_jax.data import split_fingerprint

    fingerprint = None
    if meta.data_dir is not None and train_split in meta.splits:
        fingerprint = split_fingerprint(meta.data_dir, train_split)
    return {
        "format": FORMAT,
        "dataset": meta.to_dict(),
        "train_split": train_split,
        "train_fingerprint": fingerprint,
    }


def check_resumable(run: Run, config: dict, spec: ModelSpec, dataset: dict, abstract_state: Any) -> list[str]:
    """Why the saved run in `run` cannot be continued with this config (empty: it can).

    Refused: another model spec, other data (classes, names, examples), another seed,
    train split or batch size (the data order), and a train state of another structure
    (e.g. another optimizer). Everything else (steps, intervals, learning rate, ...) is a
    compatible change. Reads only; changes nothing.
    """
    if run.is_legacy():
        return [
            f"{run.root} was written by an older fcn_jax (no {MODEL_FILE}); it can be evaluated, "
            "used for prediction and export, and as init_from of a new run, but not continued"
        ]
    problems = []
    saved_spec = run.spec().to_dict()
    for key, (a, b) in _diff(_flat(saved_spec), _flat(spec.to_dict())).items():
        problems.append(f"model.{key}: saved {a!r}, this config {b!r}")
    saved_data = run.dataset_record()
    sd, nd = saved_data.get("dataset", {}), dataset["dataset"]
    for key in ("name", "num_classes", "ignore_index", "class_names"):
        if sd.get(key) != nd.get(key):
            problems.append(f"dataset {key}: saved {sd.get(key)!r}, this config's {nd.get(key)!r}")
    if saved_data.get("train_fingerprint") != dataset["train_fingerprint"]:
        problems.append(
            f"dataset: the train split's examples differ from those the run trained on "
            f"(saved {sd.get('data_dir')}, now {nd.get('data_dir')})"
        )
    saved_config = run.config()
    for key in IDENTITY_KEYS:
        a, b = _get(saved_config, key), _jsonable(_get(config, key))
        if a != b:
            problems.append(f"{key}: saved {a!r}, this config {b!r}")
    step_dir = _newest_step(run)
    if step_dir is not None and not problems:  # another model explains another state already
        try:
            saved = checkpoints.read_meta(step_dir).get("signature")
        except checkpoints.Damaged:
            saved = None  # restoring will set it aside and look at an older one
        diff = (
            []
            if saved is None
            else checkpoints.signature_diff(saved, checkpoints.signature(abstract_state), 3)
        )
        if diff:
            shaping = {
                k: v
                for k, v in _diff(saved_config.get("optimizer", {}), config["optimizer"]).items()
                if k in STATE_SHAPING_KEYS
            }
            if shaping:
                problems += [
                    f"optimizer.{k}: saved {a!r}, this config {b!r} (the optimizer state differs)"
                    for k, (a, b) in shaping.items()
                ]
            else:
                problems.append("the train state's structure differs from the saved one: " + "; ".join(diff))
    return problems


def _diff(a: dict, b: dict) -> dict[str, tuple]:
    b = _jsonable(b)
    return {
        k: (a.get(k, "<missing>"), b.get(k, "<missing>"))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    }


def _newest_step(run: Run) -> Path | None:
    steps = run.steps(LATEST)
    return run.latest_dir / str(steps[-1]) if steps else None


def write_records(run: Run, config: dict, spec: ModelSpec, dataset: dict, resume_step: int) -> list[str]:
    """Write the records of a run that has no checkpoint yet (a new one, or one whose start
    was cut short), or bring config.json and dataset.json up to date for a resumed one
    (the replaced config is kept under configs/). Returns one line per config key that
    changed. Process 0 only."""
    root = run.root
    started = run.has_checkpoints()
    changes = []
    if not started or not (root / MODEL_FILE).exists():
        fsutil.atomic_write_json(root / MODEL_FILE, {"format": FORMAT, "model": spec.to_dict()})
    old = None
    if (root / CONFIG_FILE).exists():
        try:
            old = run.config()
        except RunError:
            if started:
                raise
    if old is not None:  # (an unreadable one of a run without checkpoints is simply replaced)
        changes = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in _diff(_flat(old), _flat(config)).items()]
        if changes:
            keep = root / CONFIGS / f"config.until_step_{resume_step}.{_now()}.json"
            keep.parent.mkdir(exist_ok=True)
            fsutil.atomic_write_json(keep, old)
    if old is None or changes:
        fsutil.atomic_write_json(root / CONFIG_FILE, _jsonable(config))
    if not started or not (root / DATASET_FILE).exists() or run.dataset_record() != _jsonable(dataset):
        fsutil.atomic_write_json(root / DATASET_FILE, dataset)
    return changes


# -- checkpoints of a training run ---------------------------------------------------------------


class CheckpointStore:
    """checkpoints/ (the newest `keep` steps) and best/ (one step) of a training run.

    Only whole, verified steps are used; anything else found there (a damaged step, a
    `.partial` left by a kill, parameters that are not finite) is moved to set_aside/
    with a warning, so it neither blocks saving that step again nor counts toward `keep`.
    In a multi-process run every process calls every method; process 0 alone moves files.
    """

    def __init__(self, run: Run, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.run, self.keep = run, int(keep)
        self.primary = jax.process_index() == 0
        if self.primary:
            for kind in (LATEST, BEST):
                (run.root / kind).mkdir(parents=True, exist_ok=True)
                for p in sorted((run.root / kind).iterdir()):
                    if not p.name.isdigit():
                        self.set_aside(p, "incomplete")
        _sync("fcn_jax_store_init")

    def set_aside(self, path: Path, reason: str) -> Path | None:
        """Move `path` under set_aside/ (process 0; others return None)."""
        if not self.primary:
            return None
        self.run.aside_dir.mkdir(exist_ok=True)
        target = self.run.aside_dir / f"{path.parent.name}_{path.name}_{reason}_{_now()}"
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{target.name}-{n}")
        os.rename(path, target)
        warn(f"set aside {path} ({reason}) as {target}")
        return target

    def latest_step(self) -> int | None:
        steps = self.run.steps(LATEST)
        return steps[-1] if steps else None

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest intact (state, meta, step) of checkpoints/, or None. Damaged steps
        and steps whose parameters are not finite are set aside on the way."""
        while True:
            steps = self.run.steps(LATEST)
            if not steps:
                return None
            step = steps[-1]
            step_dir = self.run.latest_dir / str(step)
            try:
                state, meta = checkpoints.restore(step_dir, abstract_state)
            except checkpoints.StructureMismatch as e:
                raise IncompatibleRun(str(e)) from None
            except checkpoints.Damaged as e:
                warn(f"checkpoint {step_dir} is damaged ({e.reason}); trying an older one")
                self._aside_and_sync(step_dir, "damaged")
                continue
            if not checkpoints.all_finite(state.params):
                warn(f"checkpoint {step_dir} holds non-finite parameters; trying an older one")
                self._aside_and_sync(step_dir, "diverged")
                continue
            return state, meta, step

    def _aside_and_sync(self, step_dir: Path, reason: str) -> None:
        self.set_aside(step_dir, reason)
        _sync(f"fcn_jax_aside_{step_dir.name}")

    def save(self, step: int, state: Any, meta: dict) -> Path:
        step_dir = self._save(self.run.latest_dir, step, state, meta)
        if self.primary:
            for old in self.run.steps(LATEST)[: -self.keep]:
                shutil.rmtree(self.run.latest_dir / str(old))  # superseded: keep_checkpoints
        _sync(f"fcn_jax_pruned_{step}")
        return step_dir

    def best_miou(self) -> float | None:
        steps = self.run.steps(BEST)
        if not steps:
            return None
        try:
            miou = checkpoints.read_meta(self.run.best_dir / str(steps[-1])).get("miou")
        except checkpoints.Damaged:
            return None
        return None if miou is None else float(miou)

    def save_best(self, step: int, state: Any, meta: dict, miou: float) -> bool:
        """Keep `state` in best/ if `miou` beats the best so far; True if it did."""
        steps = self.run.steps(BEST)
        if step in steps:  # evaluated before a crash, evaluated again on resume
            return False
        best = self.best_miou()
        if best is not None and not miou > best:
            return False
        self._save(self.run.best_dir, step, state, {**meta, "miou": float(miou)})
        if self.primary:
            for old in steps:
                shutil.rmtree(self.run.best_dir / str(old))  # superseded by a better one
        _sync(f"fcn_jax_best_{step}")
        return True

    def _save(self, directory: Path, step: int, state: Any, meta: dict) -> Path:
        step_dir = directory / str(step)
        if self.primary:
            for p in (step_dir, step_dir.with_name(step_dir.name + checkpoints.PARTIAL)):
                if p.exists():  # e.g. the step of a damaged checkpoint set aside, reached again
                    self.set_aside(p, "replaced")
        _sync(f"fcn_jax_presave_{directory.name}_{step}")
        checkpoints.save(step_dir, state, meta)
        return step_dir


def warn(message: str) -> None:
    log.warning(message)
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
