"""The device-resident input path against the host pipeline: the same draws give the same
label maps, crop windows (with or without their context) and flips, and images within 2
intensity levels (3 with colour jitter); batches are a pure function of (seed, epoch,
position); the loader state resumes exactly and refuses the other path's. Real CamVid
images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_camvid_subset, require_camvid
from PIL import Image

from fcn_jax import data, geometry, training
from fcn_jax.data import device, transforms
from fcn_jax.data.transforms import NO_MARGIN
from fcn_jax.ops import OpSet

IGNORE = 11


@pytest.fixture(scope="module")
def pairs():
    """Real CamVid pairs cut to three different sizes (the cache pads them to the largest)."""
    camvid = require_camvid()
    out = []
    for line, (h, w) in zip(
        (camvid / "train.txt").read_text().split("\n")[:3], [(360, 480), (301, 433), (97, 150)]
    ):
        img_rel, lab_rel = line.split()
        img = np.asarray(Image.open(camvid / img_rel).convert("RGB"))[:h, :w]
        lab = np.asarray(Image.open(camvid / lab_rel))[:h, :w]
        out.append((np.ascontiguousarray(img), np.ascontiguousarray(lab)))
    return out


_device_apply = jax.jit(
    lambda image, label, size, d, aug: device.apply(aug, image, label, size, d), static_argnums=4
)


NO_JITTER, JITTER = (0.0, 0.0, 0.0, 0.0), (0.4, 0.4, 0.4, 0.1)


CONTEXT = geometry.plan(128, 160, "8s").pads  # the margin data.crop_context gives these crops


@pytest.mark.parametrize(
    "crop, scales, jitter, margin",
    [
        ((128, 160), (0.4, 0.6), NO_JITTER, NO_MARGIN),
        ((200, 240), (0.75, 1.25), NO_JITTER, NO_MARGIN),
        ((360, 480), (1.0, 1.6), NO_JITTER, NO_MARGIN),
        ((90, 120), None, NO_JITTER, NO_MARGIN),
        ((128, 160), (0.4, 0.6), JITTER, NO_MARGIN),  # colour jitter on padded crops
        ((200, 240), (0.75, 1.25), JITTER, NO_MARGIN),
        ((128, 160), (0.4, 1.2), NO_JITTER, CONTEXT),  # crops with their context
        ((128, 160), (0.4, 1.2), JITTER, CONTEXT),
    ],
)
def test_same_draws_give_equal_labels_crops_flips_and_images_within_two_levels(
    pairs, crop, scales, jitter, margin
):
    aug = device.Augment(3, 1, crop, scales, True, 0, IGNORE, jitter=jitter, margin=margin)
    (mt, mb), (ml, mr) = margin
    hmax, wmax = 360, 480
    rng = np.random.default_rng(7)
    worst, flips, padded, seen = 0, 0, 0, 0
    for trial in range(12):
        image, label = pairs[trial % len(pairs)]
        d = transforms.draw_augmentation(
            label.shape, rng, crop_size=crop, scale_range=scales, flip=True, jitter=jitter
        )
        want_img, want_lab = transforms.apply_augmentation(
            image, label, d, crop_size=crop, ignore_index=IGNORE, margin=margin
        )
        if margin != NO_MARGIN:  # the crop sits inside its context, flipped or not
            plain_img, plain_lab = transforms.apply_augmentation(
                image, label, d, crop_size=crop, ignore_index=IGNORE
            )
            np.testing.assert_array_equal(want_lab, plain_lab)
            if jitter == NO_JITTER:  # (jitter's contrast takes the mean over the context too)
                np.testing.assert_array_equal(want_img[mt : mt + crop[0], ml : ml + crop[1]], plain_img)
            context = np.ones(want_img.shape[:2], bool)
            context[mt : mt + crop[0], ml : ml + crop[1]] = False
            seen += (want_img[context] != transforms.PAD_RGB).any(axis=-1).mean() > 0.5
        cache_img = np.zeros((hmax, wmax, 3), np.uint8)
        cache_lab = np.full((hmax, wmax), IGNORE, np.uint8)
        cache_img[: image.shape[0], : image.shape[1]] = image
        cache_lab[: label.shape[0], : label.shape[1]] = label
        draw = device.Draw(*(jnp.asarray(v) for v in d))
        got_img, got_lab = _device_apply(cache_img, cache_lab, jnp.asarray(label.shape), draw, aug)
        got_img, got_lab = np.asarray(got_img), np.asarray(got_lab)
        assert got_img.shape == want_img.shape == (crop[0] + mt + mb, crop[1] + ml + mr, 3)
        assert got_lab.shape == want_lab.shape == crop and got_img.dtype == np.uint8
        np.testing.assert_array_equal(got_lab, want_lab, err_msg=f"draw {d}")
        worst = max(worst, int(np.abs(got_img.astype(int) - want_img.astype(int)).max()))
        flips += d[4]
        padded += d[0] < crop[0] or d[1] < crop[1]
    # A one-level difference of the resampling comes out of the jitter scaled by up to 1.4^3
    # (brightness, contrast, saturation); seen: 3 at scale 0.4-1.2, plain crops as well.
    assert worst <= (2 if jitter == NO_JITTER else 3), worst
    assert 0 < flips < 12  # both branches were compared
    if scales and scales[0] < 0.7:
        assert padded  # the padding (mean colour / ignore) was compared too
    if margin != NO_MARGIN:
        assert seen  # some crops' margins were mostly image, not padding
    if jitter != NO_JITTER:  # the colours did change
        assert all(f != 1.0 for f in d[5:8]) and d[8] != 0.0


def test_whole_images_without_crop_are_only_flipped(pairs):
    image, label = pairs[0]
    aug = device.Augment(1, 1, None, None, True, 0, IGNORE)
    for flip in (False, True):
        d = device.Draw(
            jnp.int32(360), jnp.int32(480), jnp.int32(0), jnp.int32(0), jnp.asarray(flip), *(1.0,) * 3, 0.0
        )
        img, lab = _device_apply(image, label, jnp.asarray(label.shape), d, aug)
        np.testing.assert_array_equal(img, image[:, ::-1] if flip else image)
        np.testing.assert_array_equal(lab, label[:, ::-1] if flip else label)


def test_nearest_index_is_the_host_formula():
    for n_in, n_out in [(360, 144), (480, 600), (7, 3), (1, 5), (97, 97)]:
        host = transforms.nearest_rows(n_in, n_out)
        dev = np.asarray(device.nearest_index(jnp.int32(n_in), jnp.int32(n_out), jnp.arange(n_out)))
        np.testing.assert_array_equal(dev, host)
        assert host.min() >= 0 and host.max() < n_in


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    require_camvid()
    src = make_camvid_subset(tmp_path_factory.mktemp("dev"), {"train": 6, "val": 2})
    return data.prepare_camvid(src, src / "out", progress=False)


def _loader(prepared, **kwargs):
    kw = dict(global_batch_size=2, crop_size=(64, 96), scale_range=(0.5, 1.0), seed=3)
    return device.DeviceLoader(prepared, training.data_mesh(jax.devices()[:1]), **{**kw, **kwargs})


def test_batches_are_a_function_of_seed_epoch_and_position(prepared):
    loader = _loader(prepared)
    make = jax.jit(lambda cache, i: device.batch(loader.aug, cache, i))
    a, b = make(loader.cache, 4), make(loader.cache, 4)
    assert (
        a["image"].shape == (2, 64, 96, 3) and a["image"].dtype == jnp.uint8 and a["label"].dtype == jnp.uint8
    )
    np.testing.assert_array_equal(a["image"], b["image"])
    other = _loader(prepared, seed=4)
    c = jax.jit(lambda cache, i: device.batch(other.aug, cache, i))(other.cache, 4)
    assert not np.array_equal(c["image"], a["image"])
    # Every example exactly once per epoch: whole images, no flip, matched to the dataset.
    whole = _loader(prepared, crop_size=None, scale_range=None, flip=False)
    whole_make = jax.jit(lambda cache, i: device.batch(whole.aug, cache, i))
    source = data.open_source(prepared, "train")
    originals = [source[i]["image"].tobytes() for i in range(6)]
    for epoch in range(2):
        seen = []
        for k in range(3):
            for im in np.asarray(whole_make(whole.cache, epoch * 3 + k)["image"]):
                seen.append(originals.index(im.tobytes()))
        assert sorted(seen) == list(range(6))


def test_loader_state_resumes_and_refuses_the_other_path(prepared):
    loader = _loader(prepared)
    for _ in range(4):
        next(loader)
    state = loader.get_state()
    assert state["path"] == "device" and (state["epoch"], state["step_in_epoch"]) == (1, 1)
    again = _loader(prepared)
    again.set_state(state)
    assert next(again) == 4
    host = data.TrainLoader(
        prepared, global_batch_size=2, crop_size=(64, 96), seed=3, process_index=0, process_count=1
    )
    with pytest.raises(ValueError, match="device input path.*device_cache=on"):
        host.set_state(state)
    with pytest.raises(ValueError, match="host input path.*device_cache=off"):
        again.set_state(host.get_state())
    with pytest.raises(ValueError, match="seed"):
        _loader(prepared, seed=5).set_state(state)


@pytest.mark.parametrize(
    "mode, budget_mb, path",
    [("auto", 5, "device"), ("auto", 3, "host"), ("on", 0, "device"), ("off", 10**6, "host")],
)
def test_device_cache_setting_selects_the_path(prepared, mode, budget_mb, path):
    from fcn_jax import config, train

    assert device.cache_bytes(prepared, "train") == 6 * 360 * 480 * 4  # 3.96 MiB
    c = config.base_config()
    c.data.crop_size, c.train.batch_size = (64, 96), 2
    c.data.device_cache, c.data.device_cache_mb = mode, budget_mb
    assert train.make_loader(c, prepared, training.data_mesh(jax.devices()[:1])).path == path


@pytest.mark.parametrize("path", ["device", "host"])
def test_crop_context_gives_each_crop_the_models_padding_and_trains_on_either_path(prepared, path):
    """`data.crop_context`: the images are the crops widened by the padding the model would
    add (its geometry, not a number of its own), the labels the crops; the train step runs
    the model on them as they are and learns."""
    from fcn_jax import config, train
    from fcn_jax.models import FCN

    c = config.base_config()
    c.data.crop_size, c.data.scale_range, c.train.batch_size = (64, 96), (0.8, 1.2), 2
    c.data.device_cache, c.data.crop_context = ("on" if path == "device" else "off"), True
    c.model.variant = "16s"
    plan = geometry.plan(64, 96, "16s")
    assert train.crop_margin(c) == plan.pads
    mesh = training.data_mesh(jax.devices()[:1])
    loader = train.make_loader(c, prepared, mesh)
    model = FCN(11, "16s", dropout_rate=0.0, fc_channels=32, ops=OpSet(conv="xla"))
    cfg = config.optimizer_config(name="adamw", learning_rate=1e-4, schedule="constant")
    tx, _ = training.make_optimizer(cfg, decay_steps=10)
    on_device = loader.path == device.PATH
    step, _ = training.compile_steps(
        mesh, model, tx, 11, device_data=loader.aug if on_device else None, context=True
    )
    state = training.init_state(model, tx, jax.random.PRNGKey(0))
    if on_device:  # the same batch at every step, as the host's below
        inputs = (loader.cache, 0)
        batch = jax.jit(lambda cache: device.batch(loader.aug, cache, 0))(loader.cache)
    else:
        batch = next(loader)
        inputs = (batch,)
    assert batch["image"].shape == (2, *plan.padded, 3) and batch["label"].shape == (2, 64, 96)
    losses = []
    for _ in range(4):
        state, metrics = step(state, *inputs)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    c.data.crop_size = None
    with pytest.raises(config.ConfigError, match="data.crop_context"):
        config.check(c)
