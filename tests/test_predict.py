"""Segmenter (exact shape buckets, batching, flip TTA, input checks) and `fcn-jax predict`.

Also home of the small helpers the report and export tests share: real CamVid crops,
random non-zero parameters and a run directory in the training loop's layout.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from fcn_jax import geometry
from fcn_jax.data import normalize
from fcn_jax.models import FCN, bilinear_init
from fcn_jax.predict import Segmenter, as_rgb_uint8, bucket_length

VARIANT = "8s"


# -- shared helpers -------------------------------------------------------------------------


def camvid_crops(camvid_dir: Path, split: str, count: int, size=(64, 96), top: int = 150):
    """[(stem, image uint8 (h, w, 3), label uint8 (h, w))] crops of real CamVid pairs."""
    lines = (camvid_dir / f"{split}.txt").read_text().split("\n")[:count]
    out = []
    for k, line in enumerate(lines):
        img_rel, lab_rel = line.split()
        img = np.asarray(Image.open(camvid_dir / img_rel).convert("RGB"))
        lab = np.asarray(Image.open(camvid_dir / lab_rel))
        h, w = size
        x = 60 + 90 * k
        out.append(
            (Path(img_rel).stem, img[top : top + h, x : x + w].copy(), lab[top : top + h, x : x + w].copy())
        )
    return out


def random_params(model: FCN, seed: int = 0) -> dict:
    """He-normal kernels, non-zero biases (zero-bias nets hide padding effects), bilinear upsampling."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 33, 33, 3), np.float32))["params"]
    )
    rng = np.random.default_rng(seed)

    def fill(path, s):
        layer, leaf = path[0].key, path[-1].key
        if layer.startswith("upscore"):
            return np.asarray(bilinear_init((s.shape[0] + 1) // 2)(None, s.shape))
        if leaf == "bias":
            return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        fan_in = int(np.prod(s.shape[:-1]))
        return rng.standard_normal(s.shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))

    return jax.tree_util.tree_map_with_path(fill, shapes)


def camvid_meta(splits=None):
    from fcn_jax.data import DatasetMeta, camvid

    return DatasetMeta("camvid", 11, 11, list(camvid.CLASS_NAMES), camvid.PALETTE, splits or {"val": 0})


def write_run(
    workdir: Path,
    params: dict,
    meta,
    data_dir: str = "",
    step: int = 8,
    variant: str = VARIANT,
    conv: str = "winograd",
    inference: dict | None = None,
) -> Path:
    """A run directory written the way `fcn_jax.train` writes one (through `fcn_jax.run`):
    its records and one best/<step> checkpoint holding `params`; `inference` sets keys of the
    config's inference section."""
    import dataclasses
    import json

    from fcn_jax import config as config_lib
    from fcn_jax import run as run_lib
    from fcn_jax import training
    from fcn_jax.models import ModelSpec

    config = config_lib.base_config()
    config.model.variant = variant
    config.model.ops.conv = conv
    config.data.data_dir = str(data_dir)
    config.inference.update(inference or {})
    spec = ModelSpec.from_config(config.model, meta.num_classes)
    meta = dataclasses.replace(meta, data_dir=Path(data_dir) if data_dir else meta.data_dir)
    run = run_lib.Run(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_lib.write_records(run, json.loads(config.to_json()), spec, run_lib.dataset_record(meta, "train"), 0)
    state = training.init_state(spec.build(), optax.sgd(0.1), jax.random.PRNGKey(0), params)
    run_lib.CheckpointStore(run, keep=1).save_best(step, state, {"step": step}, 0.1)
    return workdir


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return FCN(11, VARIANT)


@pytest.fixture(scope="module")
def params(model):
    return random_params(model)


@pytest.fixture(scope="module")
def crops(camvid_dir):
    return camvid_crops(camvid_dir, "val", 3)


@pytest.fixture(scope="module")
def seg(model, params):
    return Segmenter(model, params, camvid_meta(), batch_size=4)


@pytest.fixture(scope="module")
def reference(model, params):
    """Per-image softmax(model.apply) at the image's exact size (no buckets); uint8 images
    are normalised, float32 ones are taken as normalised already."""
    fn = jax.jit(lambda p, x: jax.nn.softmax(model.apply({"params": p}, x), -1))

    def probs(image):
        x = image if image.dtype == np.float32 else normalize(image)
        return np.asarray(fn(params, x[None]))[0]

    return probs


# -- buckets --------------------------------------------------------------------------------


def test_bucket_lengths_are_the_models_own_padding_classes():
    assert [bucket_length(n) for n in (1, 2, 33, 34, 64, 65, 66, 360, 480)] == [
        1,
        33,
        33,
        65,
        65,
        65,
        97,
        385,
        481,
    ]
    plan = functools.lru_cache(None)(lambda n: geometry.plan_axis(n, VARIANT))
    for n in [*range(1, 70), *range(350, 362), 480]:
        b = bucket_length(n, VARIANT)
        pn, pb = plan(n), plan(b)
        assert b >= n and n + sum(pn.pad) == b + sum(pb.pad) and pn.pad[0] == pb.pad[0]
        assert pn.skip_starts == pb.skip_starts and pn.out_start == pb.out_start
        # maximal: one more pixel changes the padded size
        assert b + 1 + sum(plan(b + 1).pad) > b + sum(pb.pad)


def test_two_sizes_in_one_bucket_compile_once_and_match_the_model_exactly(seg, crops, reference):
    a = crops[0][1]  # 64x96
    b = crops[1][1][3:61, 2:92]  # 58x90: the same bucket, 65x97
    assert seg.bucket(*a.shape[:2]) == seg.bucket(*b.shape[:2]) == (65, 97)
    before = seg.num_traces
    pa = seg.predict_proba(a)
    pb = seg.predict_proba(b)
    assert seg.num_traces - before == 1  # one compilation for both sizes
    for img, p in ((a, pa), (b, pb)):
        ref = reference(img)
        assert p.shape == img.shape[:2] + (11,) and p.dtype == np.float32
        np.testing.assert_allclose(p, ref, atol=2e-6)
    assert len(np.unique(pa.argmax(-1))) > 1  # the predictions are not trivially constant
    # Control: padding to a naive multiple-of-32 bucket (64x96 -> 96x128) changes the output,
    # which is why the buckets are the model's own padding classes.
    x = np.zeros((96, 128, 3), np.float32)
    x[:64, :96] = normalize(a)
    naive = reference(x)[:64, :96]
    assert np.abs(naive - pa).max() > 1e-4


def test_lists_batches_and_array_batches(seg, crops, reference):
    imgs = [c[1] for c in crops] + [crops[0][1][:40, :50]]  # three 64x96, one 40x50
    before = seg.num_traces
    out = seg.predict(imgs)
    # buckets 65x97 (3 images -> one batch of 4) and 65x65 (1 image -> batch 1)
    assert seg.num_traces - before == 2
    assert [o.shape for o in out] == [(64, 96)] * 3 + [(40, 50)]
    assert all(o.dtype == np.int32 for o in out)
    np.testing.assert_array_equal(out[3], reference(imgs[3]).argmax(-1))
    np.testing.assert_array_equal(out[2], reference(imgs[2]).argmax(-1))
    stacked = seg.predict(np.stack(imgs[:3]))
    assert stacked.shape == (3, 64, 96)
    np.testing.assert_array_equal(stacked, np.stack(out[:3]))
    assert seg.num_traces - before == 2  # nothing new to compile


def test_flip_test_time_augmentation_averages_mirrored_probabilities(seg, crops, reference):
    a = crops[2][1]
    p = seg.predict_proba(a, flip=True)
    expect = 0.5 * (reference(a) + reference(a[:, ::-1])[:, ::-1])
    np.testing.assert_allclose(p, expect, atol=2e-6)
    assert np.abs(p - reference(a)).max() > 1e-3
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_input_conversions_and_errors(seg, crops):
    rgb = crops[0][1]
    gray = rgb[..., 0]
    assert as_rgb_uint8(gray).shape == (64, 96, 3)
    np.testing.assert_array_equal(as_rgb_uint8(gray)[..., 2], gray)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
    np.testing.assert_array_equal(as_rgb_uint8(rgba), rgb)
    np.testing.assert_array_equal(as_rgb_uint8(Image.fromarray(rgba)), rgb)
    np.testing.assert_array_equal(seg.predict(rgba), seg.predict(rgb))
    with pytest.raises(ValueError, match="zero size"):
        seg.predict(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images\[1\]: expected uint8"):
        seg.predict([rgb, rgb.astype(np.float32)])
    with pytest.raises(ValueError, match="shape"):
        seg.predict(np.zeros((4, 4, 2), np.uint8))


# -- from a checkpoint, and the command ----------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, params):
    return write_run(tmp_path_factory.mktemp("run") / "run", params, camvid_meta())


def test_from_checkpoint_matches_in_memory(run_dir, seg, crops):
    loaded = Segmenter.from_checkpoint(run_dir)
    assert loaded.class_names[0] == "Sky" and loaded.model == seg.model
    np.testing.assert_array_equal(loaded.predict(crops[0][1]), seg.predict(crops[0][1]))


def test_cli_predict_writes_outputs_and_reports_bad_files(run_dir, seg, crops, tmp_path, capsys, monkeypatch):
    from fcn_jax import cli

    # Loading is tested above; here the command reuses the compiled in-memory segmenter.
    def from_checkpoint(path, **kwargs):
        assert Path(path) == run_dir
        assert kwargs == {"batch_size": 4, "flip": False, "scales": (1.0,), "tile": None, "overlap": 64}
        return seg

    monkeypatch.setattr(Segmenter, "from_checkpoint", staticmethod(from_checkpoint))

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(crops[0][1]).save(src / "a.png")
    Image.fromarray(crops[1][1][..., 1]).save(src / "gray.png")  # grayscale
    rgba = np.concatenate([crops[2][1], np.full((64, 96, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(src / "rgba.png")
    (src / "notes.png").write_text("not an image")
    (src / "empty.png").write_bytes(b"")
    (src / "README.txt").write_text("skipped: not an image extension")
    missing = tmp_path / "nope.jpg"
    out = tmp_path / "out"
    code = cli.main(
        ["predict", "--checkpoint", str(run_dir), str(src), str(missing), "--out", str(out), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 1
    for bad in ("notes.png", "empty.png", "nope.jpg"):
        assert bad in err, err
    assert "README" not in err
    for name in ("a", "gray", "rgba"):
        for sub in ("color", "overlay", "labels"):
            assert Image.open(out / sub / f"{name}.png").size == (96, 64)
    assert not (out / "color" / "notes.png").exists()
    labels = np.asarray(Image.open(out / "labels" / "a.png"))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, seg.predict(crops[0][1]))
    color = np.asarray(Image.open(out / "color" / "a.png"))
    np.testing.assert_array_equal(color, camvid_meta().palette[labels])
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "labels" / "gray.png")),
        seg.predict(np.repeat(crops[1][1][..., 1:2], 3, -1)),
    )
    assert (out / "legend.png").is_file()

    # all good inputs: exit code 0
    assert cli.main(["predict", "--checkpoint", str(run_dir), str(src / "a.png"), "--out", str(out)]) == 0
