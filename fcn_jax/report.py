"""A visual report of a run directory: curves, confusion matrix, predictions, a markdown summary.

`make_report(workdir)` (or `fcn-jax report --workdir runs/x`) writes into workdir/report/:
    loss.png, learning_rate.png, val_metrics.png   curves from metrics.jsonl
    confusion_<split>.png                          row-normalised confusion matrix
    predictions_<split>.png, legend.png            image | ground truth | prediction (a few
                                                   images spread over the split)
    worst_<split>.png                              the k images with the lowest mean IoU:
                                                   image | truth | prediction | error map
    README.md                                      links them; the last val metrics as tables
Sources: curves and the "last val metrics" come from metrics.jsonl (the training loop's log;
its evaluation records carry the confusion matrix). The confusion matrix comes from
eval_<split>.json (written by `fcn-jax eval`, the checkpoint the pictures use) when present,
else from the last evaluation in metrics.jsonl; `evaluate=True` (--evaluate) recomputes it.
The worst images come from the per-image records of eval_<split>.json, predicted again with
the inference settings recorded there (tiles); a table beside them names each one's weakest
classes, and a second one, per class, its mean IoU over the images holding it and the image
where it fails worst: where the thin classes fail.
Parts whose inputs are missing are skipped, and README.md says why.
Plots use matplotlib's object API with the Agg canvas (no display, no global backend state).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fcn_jax.metrics import SUMMARY_KEYS, SegmentationMetrics, format_table

LABELS = {
    "miou": "mean IoU",
    "pixel_accuracy": "pixel accuracy",
    "mean_class_accuracy": "mean class accuracy",
    "fw_iou": "frequency-weighted IoU",
}


# -- reading ----------------------------------------------------------------------------------


def read_metrics(path) -> list[dict]:
    """Records of a metrics.jsonl; unreadable lines are skipped with a warning."""
    path = Path(path)
    records = []
    if not path.is_file():
        return records
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            warnings.warn(f"{path}:{n}: skipping a line that is not JSON ({e})")
            continue
        if isinstance(rec, dict) and "step" in rec and "split" in rec:
            records.append(rec)
    return records


def series(records: list[dict], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r["step"], r[key])
        for r in records
        if r.get("split") == split and isinstance(r.get(key), (int, float)) and r[key] is not None
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*sorted(pts))
    return np.asarray(steps, float), np.asarray(values, float)


# -- plots ------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_curve(
    records,
    split: str,
    keys: list[str],
    path: Path,
    title: str,
    ylabel: str,
    log_y: bool = False,
    percent: bool = False,
) -> bool:
    """One PNG with `keys` of `split` over steps; False if there is nothing to plot."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for key in keys:
        x, y = series(records, split, key)
        if x.size == 0:
            continue
        y = 100 * y if percent else y
        ax.plot(x, y, marker="o" if x.size < 30 else None, markersize=3, label=LABELS.get(key, key))
        drawn = True
    if not drawn:
        return False
    if log_y:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(keys) > 1:
        ax.legend()
    _save_figure(fig, path)
    return True


def plot_splits(records, splits: list[str], path: Path) -> bool:
    """mIoU of several eval splits over steps in one PNG (a held-out drive beside val)."""
    fig = _figure()
    ax = fig.add_subplot()
    for split in splits:
        x, y = series(records, split, "miou")
        ax.plot(x, 100 * y, marker="o" if x.size < 30 else None, markersize=3, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("mean IoU %")
    ax.set_title("mean IoU of every evaluated split")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save_figure(fig, path)
    return True


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def plot_confusion(confusion, class_names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (each row: where the pixels of that true class went)."""
    hist = np.asarray(confusion, np.float64)
    rows = hist.sum(1, keepdims=True)
    norm = np.divide(hist, rows, out=np.zeros_like(hist), where=rows > 0)
    c = len(class_names)
    size = max(5.0, 0.55 * c + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), class_names, rotation=45, ha="right")
    ylabels = [f"{n} (none)" if rows[i, 0] == 0 else n for i, n in enumerate(class_names)]
    ax.set_yticks(range(c), ylabels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if norm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * norm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    _save_figure(fig, path, bbox_inches="tight", pad_inches=0.15)


# -- the report ---------------------------------------------------------------------------------


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _metrics_tables(rec: dict) -> list[str]:
    lines = ["| metric | % |", "|---|---|"]
    lines += [f"| {LABELS[k]} | {_pct(rec.get(k))} |" for k in SUMMARY_KEYS if k in rec]
    iou, acc = rec.get("per_class_iou") or {}, rec.get("per_class_accuracy") or {}
    if iou:
        lines += ["", "| class | IoU % | accuracy % |", "|---|---|---|"]
        lines += [f"| {n} | {_pct(v)} | {_pct(acc.get(n))} |" for n, v in iou.items()]
    if rec.get("excluded_classes"):
        lines += [
            "",
            "Left out of the means (absent from truth and prediction): " + ", ".join(rec["excluded_classes"]),
        ]
    return lines


def read_examples(data_dir, split: str, count: int):
    """(file name, uint8 image, label) of `count` examples spread over the split."""
    from fcn_jax import data

    source = data.open_source(data_dir, split)
    out = []
    # spread over the split: consecutive video frames look alike
    for i in sorted(set(np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int))):
        ex = source[i]
        name = ex["file_name"]
        out.append(
            (
                name.decode() if isinstance(name, bytes) else str(name),
                np.asarray(ex["image"]),
                np.asarray(ex["label"])[..., 0],
            )
        )
    return out


def make_report(
    workdir,
    split: str = "val",
    num_images: int = 4,
    data_dir=None,
    evaluate: bool = False,
    batch_size: int = 2,
    progress: bool = True,
    worst: int = 4,
) -> Path:
    """Write workdir/report/ (see the module doc); returns the README path.

    Raises run.RunError for a run directory that does not exist or whose checkpoint is
    damaged (a report must not quietly describe a model it could not load); parts whose
    inputs are merely missing are skipped and listed in the README."""
    from fcn_jax import fsutil
    from fcn_jax import run as run_lib

    run = run_lib.Run(Path(workdir))
    workdir = run.root
    if not workdir.is_dir():
        raise run_lib.RunError(f"{workdir}: run directory does not exist")
    out = fsutil.check_writable_dir(workdir / "report", "report directory")
    notes: list[str] = []
    sections: list[str] = []
    trained = None
    if run.steps(run_lib.BEST) or run.steps(run_lib.LATEST):
        trained = run_lib.load_trained(workdir)
    else:
        notes.append(f"no prediction grid and no evaluation: no checkpoint in {workdir}")
    spec, dataset = _try(run.spec), _try(run.dataset)
    data_dir = data_dir or _try(run.data_dir)
    records = read_metrics(run.metrics_file)

    # curves
    curves = []
    for name, split_, keys, title, ylabel, log_y, pct in (
        ("loss.png", "train", ["loss"], "training loss", "loss", False, False),
        ("learning_rate.png", "train", ["learning_rate"], "learning rate", "learning rate", False, False),
        (
            "val_metrics.png",
            split,
            ["miou", "pixel_accuracy", "mean_class_accuracy"],
            f"{split} metrics",
            "%",
            False,
            True,
        ),
    ):
        if plot_curve(records, split_, keys, out / name, title, ylabel, log_y, pct):
            curves.append(name)
    eval_splits = sorted({r["split"] for r in records if r.get("split") != "train" and "miou" in r})
    if len(eval_splits) > 1 and plot_splits(records, eval_splits, out / "eval_miou.png"):
        curves.append("eval_miou.png")  # e.g. a held-out drive beside val
    if curves:
        sections += ["## Curves", "", *[f"![{c[:-4]}]({c})" for c in curves], ""]
    else:
        notes.append(f"no curves: {workdir / 'metrics.jsonl'} is missing or has no train/{split} records")

    # last val metrics (from the training log)
    evals = [r for r in records if r.get("split") == split and "miou" in r]
    last = evals[-1] if evals else None
    if len(eval_splits) > 1:
        rows = ["| split | step | mIoU % | pixel accuracy % |", "|---|---|---|---|"]
        for s in eval_splits:
            r = [x for x in records if x.get("split") == s and "miou" in x][-1]
            rows.append(f"| {s} | {r['step']} | {_pct(r.get('miou'))} | {_pct(r.get('pixel_accuracy'))} |")
        sections += ["## Last evaluation of every split (training log)", "", *rows, ""]
    if last:
        sections += [
            f"## Last {split} metrics (training log, step {last['step']})",
            "",
            *_metrics_tables(last),
            "",
        ]

    # confusion matrix
    eval_file = run.eval_file(split)
    conf_rec, conf_src = None, None
    if evaluate and trained is not None:
        try:
            conf_rec = _evaluate(trained, data_dir, split, batch_size, progress)
            fsutil.atomic_write_json(eval_file, conf_rec, sort_keys=False)
            conf_src = f"fresh evaluation of {conf_rec['checkpoint']} (also written to {eval_file.name})"
        except Exception as e:  # report what we can
            notes.append(f"evaluation failed: {type(e).__name__}: {e}")
    if conf_rec is None and eval_file.is_file():
        conf_rec = _load_json(eval_file)
        conf_src = f"{eval_file.name} (checkpoint {conf_rec.get('checkpoint', '?')})"
    if conf_rec is None and last and last.get("confusion"):
        conf_rec, conf_src = last, f"training log, step {last['step']}"
    if conf_rec is not None and conf_rec.get("confusion"):
        names = list(conf_rec.get("per_class_iou") or (dataset.class_names if dataset else []))
        if len(names) != len(conf_rec["confusion"]):
            names = [str(i) for i in range(len(conf_rec["confusion"]))]
        png = f"confusion_{split}.png"
        plot_confusion(conf_rec["confusion"], names, out / png, f"{split}: confusion (rows sum to 100 %)")
        sections += [f"## Confusion matrix ({conf_src})", "", f"![confusion]({png})", ""]
        if conf_rec is not last:
            sections += ["```", format_table(SegmentationMetrics.from_dict(conf_rec)), "```", ""]
    else:
        notes.append(
            f"no confusion matrix: no {eval_file.name}, no confusion in the training log "
            f"(run `fcn-jax eval --workdir {workdir} --split {split}` or pass --evaluate)"
        )

    segmenter = None
    if trained is not None:
        from fcn_jax.predict import Segmenter

        segmenter = Segmenter(trained.model, trained.params, trained.meta, batch_size=4)

    # predictions
    if num_images > 0 and trained is not None:
        try:
            png = _draw_predictions(segmenter, data_dir, split, num_images, out)
            sections += [
                f"## Predictions on {num_images} {split} images (spread over the split)",
                "",
                f"![predictions]({png})",
                "",
                "![legend](legend.png)",
                "",
            ]
        except Exception as e:
            notes.append(f"no prediction grid: {type(e).__name__}: {e}")

    # the worst images of the split
    if worst > 0 and trained is not None:
        rec = conf_rec if conf_rec is not None and conf_rec.get("images") else None
        if rec is None:
            notes.append(
                f"no worst images: no per-image records in {eval_file.name} (run `fcn-jax eval "
                f"--workdir {workdir} --split {split}` or pass --evaluate)"
            )
        else:
            try:
                sections += _worst_section(segmenter, data_dir, split, rec, worst, out)
            except Exception as e:
                notes.append(f"no worst images: {type(e).__name__}: {e}")

    model = f"FCN-{spec.variant}, {spec.num_classes} classes, dtype {spec.dtype}" if spec else "?"
    head = [
        f"# Report: {workdir.name}",
        "",
        f"- run directory: `{workdir}`",
        f"- model: {model}" + (f" (checkpoint `{trained.step_dir}`)" if trained else ""),
        f"- dataset: {dataset.name if dataset else '?'} (`{data_dir or '?'}`)",
    ]
    train = [r for r in records if r.get("split") == "train"]
    if train:
        t = train[-1]
        head.append(
            f"- last logged training step: {t['step']} (loss {t.get('loss', float('nan')):.4f}"
            + (f", {t['images_per_s']:.1f} images/s" if "images_per_s" in t else "")
            + ")"
        )
    text = head + [""] + sections
    if notes:
        text += ["## Skipped", "", *[f"- {n}" for n in notes], ""]
    readme = out / "README.md"
    fsutil.atomic_write_text(readme, "\n".join(text))
    return readme


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _try(read):
    """A run record, or None where it is missing or unreadable (the report says '?')."""
    try:
        return read()
    except (OSError, ValueError):
        return None


def _save_figure(fig, path: Path, **kwargs) -> None:
    from fcn_jax import fsutil

    with fsutil.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", **kwargs)


def _save_image(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from fcn_jax import fsutil

    with fsutil.atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _evaluate(trained, data_dir, split: str, batch_size: int, progress: bool) -> dict:
    from fcn_jax import evaluate

    if not data_dir:
        raise FileNotFoundError("no dataset: the run records no data directory; pass --data-dir")
    result, images = evaluate.evaluate_per_image(
        trained.model, trained.params, data_dir, split, batch_size, progress=progress
    )
    return {
        "checkpoint": str(trained.step_dir),
        "split": split,
        "data_dir": str(data_dir),
        **result.to_dict(),
        "images": images,
    }


def _draw_predictions(seg, data_dir, split: str, count: int, out: Path) -> str:
    from fcn_jax import visualize
    from fcn_jax.evaluate import check_split

    if not data_dir:
        raise FileNotFoundError("the run records no data directory; pass --data-dir")
    meta = check_split(data_dir, split)
    examples = read_examples(data_dir, split, count)
    preds = seg.predict([im for _, im, _ in examples], tile=None)
    grid = visualize.prediction_grid(
        [im for _, im, _ in examples], [lab for _, _, lab in examples], preds, meta.palette, meta.ignore_index
    )
    png = f"predictions_{split}.png"
    _save_image(grid, out / png)
    _save_image(visualize.legend(meta.class_names, meta.palette, columns=2), out / "legend.png")
    return png


def class_failures(images: list[dict], class_names: list[str]) -> list[tuple]:
    """Per class: (name, images holding it, mean IoU over them, the worst such image, its IoU),
    lowest mean first: the classes that fail, and where."""
    rows = []
    for name in class_names:
        held = [r for r in images if name in r.get("class_pixels", {})]
        if not held:
            continue
        ious = [(r.get("per_class_iou", {}).get(name, 0.0), r["file_name"]) for r in held]
        worst_iou, worst_name = min(ious)
        rows.append((name, len(held), sum(v for v, _ in ious) / len(ious), worst_name, worst_iou))
    return sorted(rows, key=lambda r: r[2])


def _fit_width(cells: list[np.ndarray], max_width: int) -> list[np.ndarray]:
    """Large images shrink to `max_width` (the photo bilinear, the maps nearest-neighbour)."""
    from PIL import Image

    w = cells[0].shape[1]
    if w <= max_width:
        return cells
    size = (max_width, max(1, round(cells[0].shape[0] * max_width / w)))
    return [
        np.asarray(Image.fromarray(c).resize(size, Image.BILINEAR if i == 0 else Image.NEAREST))
        for i, c in enumerate(cells)
    ]


def _worst_section(seg, data_dir, split: str, rec: dict, k: int, out: Path) -> list[str]:
    """worst_<split>.png (image | truth | prediction | error map of the k images with the lowest
    mean IoU, predicted as the evaluation did) and the README tables that go with it."""
    from fcn_jax import data, visualize
    from fcn_jax.evaluate import check_split

    if not data_dir:
        raise FileNotFoundError("the run records no data directory; pass --data-dir")
    meta = check_split(data_dir, split)
    from fcn_jax.evaluate import worst_images

    ranked = worst_images(rec["images"], k)
    if not ranked:
        raise ValueError(f"no image of {split} has a defined mean IoU")
    position = {n: i for i, n in enumerate(data.load_index(data_dir, split)["file_names"])}
    missing = [r["file_name"] for r in ranked if r["file_name"] not in position]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not in split {split!r} of {data_dir}: evaluated on other data?"
        )
    source = data.open_source(data_dir, split)
    examples = [source[position[r["file_name"]]] for r in ranked]
    images = [np.asarray(ex["image"]) for ex in examples]
    labels = [np.asarray(ex["label"])[..., 0] for ex in examples]
    inference = rec.get("inference") or {}
    tile = tuple(inference["tile"]) if inference.get("tile") else None
    preds = seg.predict(images, tile=tile, overlap=inference.get("overlap") or 0, flip=False, scales=(1.0,))
    rows = []
    for im, lab, pred in zip(images, labels, preds):
        cells = [
            im,
            visualize.colorize(lab, meta.palette, meta.ignore_index),
            visualize.colorize(pred, meta.palette, meta.ignore_index),
            visualize.error_map(im, lab, pred, meta.num_classes, meta.ignore_index),
        ]
        rows.append(_fit_width(cells, 480))
    png = f"worst_{split}.png"
    _save_image(
        visualize.tile(rows, ["image", "ground truth", "prediction", "errors: wrong red, void grey"]),
        out / png,
    )
    lines = [
        f"## The {len(ranked)} {split} images with the lowest mean IoU",
        "",
        f"From the per-image records of {rec.get('checkpoint', '?')}'s evaluation; rows top to bottom.",
        "",
        f"![worst]({png})",
        "",
        "| row | image | mean IoU % | pixel accuracy % | weakest classes in its truth (IoU %) |",
        "|---|---|---|---|---|",
    ]
    for n, r in enumerate(ranked, 1):
        held = [(r["per_class_iou"].get(c, 0.0), c) for c in r.get("class_pixels", {})]
        weakest = ", ".join(f"{c} {100 * v:.1f}" for v, c in sorted(held)[:3])
        lines.append(
            f"| {n} | {r['file_name']} | {_pct(r['miou'])} | {_pct(r['pixel_accuracy'])} | {weakest} |"
        )
    lines += [
        "",
        "Per class, over the images whose truth holds it (lowest mean first):",
        "",
        "| class | images | mean IoU % | worst image | its IoU % |",
        "|---|---|---|---|---|",
    ]
    for name, count, mean, worst_name, worst_iou in class_failures(rec["images"], meta.class_names):
        lines.append(f"| {name} | {count} | {_pct(mean)} | {worst_name} | {_pct(worst_iou)} |")
    return [*lines, ""]
