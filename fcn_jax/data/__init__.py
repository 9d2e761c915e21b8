"""The data layer: prepared TFDS datasets (CamVid, folders, catalog), grain pipelines, stats.

    prepare_camvid / prepare_folder / prepare_tfds  -> <out>/<name>/1.0.0 (TFDS array_record)
    load_color_map(file, ...) -> ColorMap: colour-coded masks -> class ids (prepare_folder(color_map=))
    load_meta(data_dir) -> DatasetMeta (classes, palette, ignore value, split sizes)
    TrainLoader(...), eval_batches(...), to_global(batch, mesh)
    class_counts / class_weights (median frequency), normalize (ImageNet mean/std)
All bad input raises DataError, whose message names the file.
"""

from fcn_jax.data.camvid import download_camvid, prepare_camvid
from fcn_jax.data.catalog import CATALOG, cityscapes_ids_to_train_ids, pet_trimap_to_classes, prepare_tfds
from fcn_jax.data.color_map import ColorMap, load_color_map
from fcn_jax.data.errors import DataError
from fcn_jax.data.folder import prepare_folder
from fcn_jax.data.meta import (
    DatasetMeta,
    default_palette,
    load_index,
    load_meta,
    resolve_dataset_dir,
    split_fingerprint,
)
from fcn_jax.data.pipeline import Prefetcher, TrainLoader, eval_batches, eval_plan, open_source, to_global
from fcn_jax.data.stats import class_counts, class_stats, class_weights, median_frequency_weights
from fcn_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize, normalize_jax

__all__ = [
    "CATALOG",
    "ColorMap",
    "DataError",
    "DatasetMeta",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Prefetcher",
    "TrainLoader",
    "class_counts",
    "class_stats",
    "class_weights",
    "cityscapes_ids_to_train_ids",
    "default_palette",
    "denormalize",
    "download_camvid",
    "eval_batches",
    "eval_plan",
    "load_color_map",
    "load_index",
    "load_meta",
    "median_frequency_weights",
    "normalize",
    "normalize_jax",
    "open_source",
    "pet_trimap_to_classes",
    "prepare_camvid",
    "prepare_folder",
    "prepare_tfds",
    "resolve_dataset_dir",
    "split_fingerprint",
    "to_global",
]
