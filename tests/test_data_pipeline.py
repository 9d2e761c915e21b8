"""grain pipelines: determinism, multi-host sharding, resumable state, eval padding, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_camvid_subset, require_camvid
from PIL import Image

from fcn_jax import data


@pytest.fixture(scope="module")
def camvid_out(tmp_path_factory) -> Path:
    """6 train + 3 val real CamVid pairs, prepared."""
    require_camvid()
    src = make_camvid_subset(tmp_path_factory.mktemp("cv"), {"train": 6, "val": 3})
    return data.prepare_camvid(src, src / "out", progress=False).parents[1]


@pytest.fixture(scope="module")
def mixed_out(tmp_path_factory) -> Path:
    """A folder dataset with two image sizes (for eval bucketing), 7 val examples."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "i").mkdir()
    (root / "m").mkdir()
    rng = np.random.default_rng(0)
    for k in range(7):
        size = (12, 16) if k % 3 else (10, 14)
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / "i" / f"{k}.png")
        Image.fromarray(np.full(size, k, np.uint8)).save(root / "m" / f"{k}.png")
    return data.prepare_folder(
        root / "i", root / "m", root / "out", 7, splits={"val": 1.0}, progress=False
    ).parents[1]


def take(loader, n):
    return [next(loader) for _ in range(n)]


def loader(out, **kw):
    kw.setdefault("global_batch_size", 4)
    kw.setdefault("crop_size", (96, 128))
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("num_threads", 2)
    return data.TrainLoader(out, **kw)


def test_normalize():
    x = np.array([[[0, 128, 255]]], np.uint8)
    y = data.normalize(x)
    expect = (np.array([0, 128, 255]) / 255 - data.IMAGENET_MEAN) / data.IMAGENET_STD
    assert y.dtype == np.float32 and y.shape == (1, 1, 3)
    np.testing.assert_allclose(y[0, 0], expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.normalize(x[None])[0], y)
    np.testing.assert_array_equal(data.denormalize(y), x)
    np.testing.assert_allclose(data.IMAGENET_MEAN, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(data.IMAGENET_STD, [0.229, 0.224, 0.225])


def test_train_batches_shapes_and_determinism(camvid_out):
    a = take(loader(camvid_out, seed=3), 3)  # 6 examples / 4 -> 1 batch per epoch: 3 epochs
    for b in a:
        assert b["image"].shape == (4, 96, 128, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (4, 96, 128) and b["label"].dtype == np.uint8  # uint8 on the wire
        assert 0 <= b["label"].min() and b["label"].max() <= 11
    b = take(loader(camvid_out, seed=3), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = take(loader(camvid_out, seed=4), 1)[0]
    assert not np.array_equal(a[0]["image"], c["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])  # epochs differ


def test_two_processes_split_the_global_batch(camvid_out):
    full = take(loader(camvid_out, seed=1), 2)
    parts = [take(loader(camvid_out, seed=1, process_index=p, process_count=2), 2) for p in (0, 1)]
    for k in range(2):
        for key in ("image", "label"):
            assert parts[0][k][key].shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), full[k][key])
        # disjoint: the two halves hold different examples
        assert not np.array_equal(parts[0][k]["image"], parts[1][k]["image"])


def test_global_order_is_a_permutation_per_epoch(camvid_out):
    tl = loader(camvid_out, global_batch_size=2, seed=5)
    assert tl.steps_per_epoch == 3
    perm = tl.permutation(0)
    assert sorted(perm.tolist()) == list(range(6))
    assert not np.array_equal(perm, tl.permutation(1))


def test_state_save_restore_continues_exactly(camvid_out):
    ref = take(loader(camvid_out, global_batch_size=2, seed=7), 5)  # crosses an epoch boundary
    tl = loader(camvid_out, global_batch_size=2, seed=7)
    take(tl, 2)
    state = json.loads(json.dumps(tl.get_state()))
    assert state["epoch"] == 0 and state["step_in_epoch"] == 2
    resumed = loader(camvid_out, global_batch_size=2, seed=7)
    resumed.set_state(state)
    for want, got in zip(ref[2:], take(resumed, 3)):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])
    assert resumed.get_state()["epoch"] == 1
    # the same state resumes a 2-process run at the same global batch
    half = loader(camvid_out, global_batch_size=2, seed=7, process_index=1, process_count=2)
    half.set_state(state)
    np.testing.assert_array_equal(next(half)["label"], ref[2]["label"][1:])
    with pytest.raises(ValueError, match="seed"):
        loader(camvid_out, global_batch_size=2, seed=8).set_state(state)


def test_crop_pads_labels_with_ignore_and_keeps_label_values(camvid_out):
    # crops larger than the (down-scaled) image must pad labels with 11, images with the mean
    tl = loader(camvid_out, crop_size=(400, 520), scale_range=(0.5, 0.6), flip=False)
    b = next(tl)
    assert b["label"].shape == (4, 400, 520)
    assert (b["label"][:, -1, :] == 11).all() and (b["label"][:, :, -1] == 11).all()
    np.testing.assert_allclose(b["image"][:, -1, -1], 0, atol=0.01)  # mean colour -> ~0
    src = data.open_source(camvid_out, "train")
    allowed = set(np.unique(np.concatenate([src[i]["label"].ravel() for i in range(6)])))
    assert set(np.unique(b["label"])) <= allowed | {11}  # nearest-neighbour: no new values


def test_whole_images_without_crop(camvid_out):
    b = next(loader(camvid_out, crop_size=None, flip=False))
    assert b["image"].shape == (4, 360, 480, 3)
    src = data.open_source(camvid_out, "train")
    tl = loader(camvid_out, crop_size=None, flip=False)
    first = tl.permutation(0)[0]
    np.testing.assert_array_equal(b["label"][0], src[int(first)]["label"][..., 0])
    np.testing.assert_array_equal(data.denormalize(b["image"][0]), src[int(first)]["image"])


def test_eval_batches_pad_and_mask(camvid_out):
    batches = list(data.eval_batches(camvid_out, "val", 2, 0, 1))
    assert [b["valid"].tolist() for b in batches] == [[True, True], [True, False]]
    names = [n for b in batches for n, v in zip(b["file_name"], b["valid"]) if v]
    assert names == data.load_index(camvid_out, "val")["file_names"]
    assert batches[0]["image"].shape == (2, 360, 480, 3) and batches[0]["label"].dtype == np.uint8
    np.testing.assert_array_equal(batches[1]["label"][1], batches[1]["label"][0])  # the pad copy


def test_eval_buckets_by_shape_and_processes_get_equal_batches(mixed_out):
    per_proc = [list(data.eval_batches(mixed_out, "val", 4, p, 2)) for p in (0, 1)]
    assert len(per_proc[0]) == len(per_proc[1])
    seen = []
    for b0, b1 in zip(*per_proc):
        assert b0["image"].shape[1:3] == b1["image"].shape[1:3]  # one size per global batch
        for b in (b0, b1):
            assert b["image"].shape[0] == 2
            seen += [int(l[0, 0]) for l, v in zip(b["label"], b["valid"]) if v]
    assert sorted(seen) == list(range(7))  # every example once, valid exactly once


def test_to_global_on_a_mesh_of_four_cpu_devices(camvid_out):
    code = textwrap.dedent(f"""
        import numpy as np, jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from fcn_jax import data
        mesh = Mesh(np.array(jax.devices()), ("data",))
        tl = data.TrainLoader({str(camvid_out)!r}, global_batch_size=4, crop_size=(32, 48),
                              process_index=0, process_count=1, num_threads=2)
        b = data.to_global(next(tl), mesh)
        assert b["image"].shape == (4, 32, 48, 3) and b["label"].shape == (4, 32, 48)
        assert b["image"].sharding == NamedSharding(mesh, P("data"))
        assert len(b["image"].addressable_shards) == 4
        assert b["image"].addressable_shards[1].data.shape == (1, 32, 48, 3)
        e = data.to_global(next(data.eval_batches({str(camvid_out)!r}, "val", 4, 0, 1)), mesh)
        assert e["valid"].shape == (4,) and isinstance(e["file_name"], list)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_cache_and_uint8_output_give_the_same_batches(camvid_out):
    import jax.numpy as jnp

    ref = take(loader(camvid_out, seed=2, global_batch_size=2), 4)  # 4 > 3 steps: epoch 2 hits the cache
    fast = take(loader(camvid_out, seed=2, global_batch_size=2, cache=True, normalize=False), 4)
    for r, f in zip(ref, fast):
        assert f["image"].dtype == np.uint8
        np.testing.assert_array_equal(r["label"], f["label"])
        np.testing.assert_allclose(
            np.asarray(data.normalize_jax(jnp.asarray(f["image"]))), r["image"], rtol=1e-6, atol=1e-6
        )
