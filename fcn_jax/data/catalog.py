"""TFDS catalog datasets with segmentation masks, converted into the fcn_jax format.

The user prepares the catalog dataset with TFDS first, in array_record format (reading needs
no TensorFlow then), e.g. `tfds build oxford_iiit_pet --file_format=array_record`. Then
`prepare_tfds("oxford_iiit_pet", out=...)` maps its masks to class indices + ignore value
and writes the same kind of dataset `prepare camvid` writes, so the rest of the pipeline does
not care where the data came from. Images are copied as stored (JPEG stays JPEG).

Supported (see docs/data.md for the label tables):
- oxford_iiit_pet: trimap 1 = pet, 2 = background, 3 = border.
    variant "binary" (default): 0 background, 1 pet, border -> ignore (255).
    variant "species": 0 background, 1 cat, 2 dog (from the `species` feature), border -> ignore.
    Splits: train, test.
- cityscapes/semantic_segmentation: `segmentation_label` holds the 34 Cityscapes label ids;
    mapped to the 19 standard train ids, everything else -> ignore (255).
    Splits: train, validation -> val (test has no public labels, skipped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fcn_jax.data.builder import Sample, default_out, write_dataset
from fcn_jax.data.errors import DataError

IGNORE = 255


def pet_trimap_to_classes(
    trimap: np.ndarray, species: int | None = None, ignore_index: int = IGNORE
) -> np.ndarray:
    """Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) -> uint8 class mask.

    species=None: 0 background, 1 pet. species=0 (cat) / 1 (dog): the pet pixels become
    1 + species, so 0 background, 1 cat, 2 dog. Border and any other value -> ignore_index.
    """
    t = np.asarray(trimap)
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    out = np.full(t.shape, ignore_index, np.uint8)
    out[t == 2] = 0
    out[t == 1] = 1 if species is None else 1 + int(species)
    return out


# Cityscapes label id -> train id (cityscapesScripts labels.py); everything else ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
CITYSCAPES_PALETTE = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]


def cityscapes_ids_to_train_ids(label_ids: np.ndarray, ignore_index: int = IGNORE) -> np.ndarray:
    lut = np.full(256, ignore_index, np.uint8)
    for k, v in CITYSCAPES_TRAIN_IDS.items():
        lut[k] = v
    t = np.asarray(label_ids)
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    return lut[t.astype(np.int64).clip(0, 255)]


@dataclasses.dataclass(frozen=True)
class CatalogSpec:
    tfds_name: str
    out_name: str
    image_key: str
    mask_key: str
    name_key: str
    splits: dict[str, str]  # tfds split -> our split
    num_classes: int
    class_names: list[str]
    to_classes: Callable[[dict], np.ndarray]  # decoded example -> class mask
    palette: list | None = None


CATALOG = {
    "oxford_iiit_pet": CatalogSpec(
        "oxford_iiit_pet",
        "oxford_iiit_pet",
        "image",
        "segmentation_mask",
        "file_name",
        {"train": "train", "test": "test"},
        2,
        ["background", "pet"],
        lambda ex: pet_trimap_to_classes(ex["segmentation_mask"]),
        [(0, 0, 0), (255, 160, 0)],
    ),
    "oxford_iiit_pet:species": CatalogSpec(
        "oxford_iiit_pet",
        "oxford_iiit_pet_species",
        "image",
        "segmentation_mask",
        "file_name",
        {"train": "train", "test": "test"},
        3,
        ["background", "cat", "dog"],
        lambda ex: pet_trimap_to_classes(ex["segmentation_mask"], species=int(ex["species"])),
        [(0, 0, 0), (255, 160, 0), (0, 160, 255)],
    ),
    "cityscapes/semantic_segmentation": CatalogSpec(
        "cityscapes/semantic_segmentation",
        "cityscapes",
        "image_left",
        "segmentation_label",
        "image_id",
        {"train": "train", "validation": "val"},
        19,
        CITYSCAPES_CLASSES,
        lambda ex: cityscapes_ids_to_train_ids(ex["segmentation_label"]),
        CITYSCAPES_PALETTE,
    ),
}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _open_tfds(spec: CatalogSpec, split: str, tfds_data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            spec.tfds_name,
            split=split,
            data_dir=tfds_data_dir,
            download=False,
            decoders={spec.image_key: tfds.decode.SkipDecoding()},
        )
    except Exception as e:
        where = tfds_data_dir or "the default TFDS data_dir"
        raise DataError(
            f"{spec.tfds_name}: cannot open split {split!r} in {where} ({type(e).__name__}: {e}). "
            f"Prepare it first in array_record format, e.g. `tfds build {spec.tfds_name} "
            "--file_format=array_record`",
            where,
        ) from None


def prepare_tfds(
    name: str,
    out=None,
    *,
    tfds_data_dir=None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    open_split: Callable[[str], object] | None = None,
) -> Path:
    """Convert a prepared TFDS catalog dataset (see CATALOG) into the fcn_jax format.

    `open_split(tfds_split)` may supply an indexable source of decoded examples (the image as
    encoded bytes or a uint8 array) instead of `tfds.data_source`; the tests use it.
    """
    if name not in CATALOG:
        raise DataError(f"{name}: not a supported catalog dataset (supported: {', '.join(CATALOG)})", name)
    spec = CATALOG[name]
    opener = open_split or (lambda s: _open_tfds(spec, s, tfds_data_dir))
    splits: dict[str, list[Sample]] = {}
    for tfds_split, our_split in spec.splits.items():
        src = opener(tfds_split)
        samples = []
        for i in range(len(src)):

            def image(i=i, src=src):
                v = src[i][spec.image_key]
                return v if isinstance(v, (bytes, np.ndarray)) else bytes(v)

            def label(i=i, src=src):
                return spec.to_classes(src[i])

            fname = _text(src[i][spec.name_key]) if spec.name_key else f"{i:06d}"
            desc = f"{spec.tfds_name}[{tfds_split}][{i}] ({fname})"
            samples.append(Sample(fname, image, label, image_desc=desc, label_desc=desc))
        splits[our_split] = samples
    return write_dataset(
        spec.out_name,
        default_out(out),
        splits,
        num_classes=spec.num_classes,
        ignore_index=IGNORE,
        class_names=spec.class_names,
        palette=spec.palette,
        description=f"{spec.tfds_name} converted by fcn_jax (masks mapped to class ids).",
        source=f"tfds:{spec.tfds_name}",
        overwrite=overwrite,
        workers=workers,
        progress=progress,
    )
