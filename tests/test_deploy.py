"""Deployment: the ONNX export run in onnxruntime, safetensors folders, loading by name.

The ONNX graph is the plain formulation of the model; fcn_jax's models here run the fast
ones (Winograd, sub-pixel upsampling, GEMM dense layers) or the reference one, so each
comparison is between two formulations of one function: logits within `REL` of the logits'
scale, and label maps equal except where fcn_jax's two best classes are within the
comparison's tolerance of each other (near-ties, counted and printed: `pytest -s`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort  # the [dev] extra installs it: a missing one fails the tests, not skips them
import pytest
from PIL import Image
from test_predict import camvid_crops, camvid_meta, random_params, write_run

from fcn_jax import cli, onnx_export, pretrained
from fcn_jax.data import normalize
from fcn_jax.models import FCN
from fcn_jax.ops import OpSet
from fcn_jax.predict import Segmenter, bucket_shape

REL = 1e-4
REPO = Path(__file__).resolve().parents[1]


def session(model_bytes_or_path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])


def compare(labels, logits, ref_logits, what: str) -> int:
    """Asserts the ONNX outputs match fcn_jax's logits; returns the number of near-ties."""
    scale = float(np.abs(ref_logits).max())
    err = float(np.abs(logits - ref_logits).max()) / scale
    top2 = np.sort(ref_logits, axis=-1)[..., -2:]
    near_tie = top2[..., 1] - top2[..., 0] <= 2 * REL * scale
    differ = labels != ref_logits.argmax(-1)
    print(
        f"{what}: max |onnx - fcn_jax| / max |logit| = {err:.2e}; labels differ at {int(differ.sum())} "
        f"of {differ.size} pixels, all near-ties: {bool(not (differ & ~near_tie).any())} "
        f"({int(near_tie.sum())} near-tie pixels in all)"
    )
    assert logits.shape == ref_logits.shape and labels.dtype == np.int32
    assert err <= REL, what
    assert not (differ & ~near_tie).any(), f"{what}: labels differ away from near-ties"
    return int(differ.sum())


@pytest.fixture(scope="module")
def two_sizes(camvid_dir):
    """Real CamVid val images: two at full size (360x480) and one 357x455 crop (a batch of 1).
    Both sizes share one shape bucket (fcn_jax.predict), so fcn_jax's logits of both come
    from one compilation (`bucket_logits`)."""
    lines = (camvid_dir / "val.txt").read_text().split()[::2][:3]
    full = [np.asarray(Image.open(camvid_dir / rel).convert("RGB")) for rel in lines]
    assert bucket_shape(360, 480) == bucket_shape(357, 455)
    return {"360x480": np.stack(full[:2]), "357x455": full[2][2:359, 11:466][None].copy()}


def bucket_logits(model, params, batches: dict) -> dict:
    """fcn_jax's logits of each batch, from one compiled program: every image is padded at the
    bottom/right with normalised zeros up to the shared bucket, which hands the model the tensor
    it pads to itself (fcn_jax.predict's module doc; tests/test_predict.py checks it exactly)."""
    shapes = {bucket_shape(*b.shape[1:3]) for b in batches.values()}
    assert len(shapes) == 1
    bh, bw = shapes.pop()
    n = sum(len(b) for b in batches.values())
    x = np.zeros((n, bh, bw, 3), np.float32)
    k = 0
    for b in batches.values():
        for image in b:
            x[k, : image.shape[0], : image.shape[1]] = normalize(image)
            k += 1
    y = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x))
    out, k = {}, 0
    for size, b in batches.items():
        h, w = b.shape[1:3]
        out[size] = y[k : k + len(b), :h, :w]
        k += len(b)
    return out


# The three variants, each in another of the formulations a run can record: the ONNX graph
# is the plain one whatever ops the model trained with.
CASES = [("32s", OpSet.reference()), ("16s", OpSet(conv="xla")), ("8s", OpSet())]


@pytest.mark.parametrize("variant,ops", CASES, ids=[f"{v}-{o.conv}-{o.upsample}" for v, o in CASES])
def test_onnx_in_onnxruntime_equals_fcn_jax_on_camvid_images_of_two_sizes(variant, ops, two_sizes):
    model = FCN(11, variant, ops=ops)
    params = random_params(model, seed=5)
    proto = onnx_export.build_onnx(model, params, camvid_meta())  # any batch, height, width
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert {n.op_type for n in proto.graph.node} <= {
        *("Cast", "Mul", "Add", "Sub", "Div", "Transpose", "Shape", "Slice", "Concat", "Pad"),
        *("Conv", "Relu", "MaxPool", "ConvTranspose", "ArgMax"),
    }
    sess = session(proto.SerializeToString())
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"])[0] == "Sky" and meta["variant"] == variant
    refs = bucket_logits(model, params, two_sizes)
    classes = set()
    for size, images in two_sizes.items():
        labels, logits = sess.run(["labels", "logits"], {"images": images})
        compare(
            labels, logits, refs[size], f"FCN-{variant} ({ops.conv}, {ops.upsample}) {size} x{len(images)}"
        )
        classes |= set(np.unique(labels).tolist())
    assert len(classes) > 1  # random non-zero weights: a label map worth comparing

    if variant == "32s":  # fixed sizes: the geometry's padding and crops as constants
        crop = two_sizes["357x455"]
        fixed = onnx_export.build_onnx(model, params, None, batch=1, height=357, width=455, output="labels")
        assert [o.name for o in fixed.graph.output] == ["labels"]
        assert "Shape" not in {n.op_type for n in fixed.graph.node}
        (fixed_labels,) = session(fixed.SerializeToString()).run(None, {"images": crop})
        np.testing.assert_array_equal(fixed_labels, sess.run(["labels"], {"images": crop})[0])


def test_onnx_of_a_group_norm_fcn_equals_fcn_jax_on_camvid_images_of_two_sizes(two_sizes):
    """model.norm="group": opset 17 has no GroupNormalization, so the graph builds it from
    InstanceNormalization over the groups; random scales and biases, two image sizes."""
    model = FCN(11, "8s", fc_channels=64, norm="group")
    params = random_params(model, seed=7)
    assert params["conv3_norm"]["scale"].shape == (384,)
    proto = onnx_export.build_onnx(model, params, camvid_meta())
    assert [n.op_type for n in proto.graph.node].count("InstanceNormalization") == 5
    sess = session(proto.SerializeToString())
    refs = bucket_logits(model, params, two_sizes)
    for size, images in two_sizes.items():
        labels, logits = sess.run(["labels", "logits"], {"images": images})
        compare(labels, logits, refs[size], f"FCN-8s, group norm, {size} x{len(images)}")
    with pytest.raises(ValueError, match="norm must be one of none, group, got 'batch'"):
        onnx_export.build_onnx(FCN(11, "8s", fc_channels=64, norm="batch"), params, None)


# -- a run, exported and shared ----------------------------------------------------------------


@pytest.fixture(scope="module")
def run8s(tmp_path_factory):
    """A run directory as training writes one: FCN-8s with XLA's convolutions and the other
    fast ops (sub-pixel upsampling, GEMM dense layers); Winograd's compile is left to the
    8s case above, to keep this file fast."""
    params = random_params(FCN(11, "8s"), seed=7)
    return write_run(
        tmp_path_factory.mktemp("deploy") / "run", params, camvid_meta(), variant="8s", conv="xla"
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory, camvid_dir):
    """Two real CamVid crops of two sizes that share one shape bucket (one compilation in predict)."""
    folder = tmp_path_factory.mktemp("photos")
    (a,) = camvid_crops(camvid_dir, "val", 1, size=(97, 130))
    (b,) = camvid_crops(camvid_dir, "train", 1, size=(85, 150), top=200)
    assert bucket_shape(97, 130) == bucket_shape(85, 150)
    Image.fromarray(a[1]).save(folder / "street.png")
    Image.fromarray(b[1]).save(folder / "other.png")
    return folder


@pytest.fixture(scope="module")
def predicted(run8s, photos, tmp_path_factory):
    """`fcn-jax predict --checkpoint RUN` on the photos: {stem: label map}."""
    out = tmp_path_factory.mktemp("predicted")
    assert cli.main(["predict", "--checkpoint", str(run8s), str(photos), "--out", str(out), "--quiet"]) == 0
    return {p.stem: np.asarray(Image.open(p)) for p in (out / "labels").glob("*.png")}


def deploy_md_example() -> str:
    """The ONNX Runtime example of docs/deploy.md, as written."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## Run it in ONNX Runtime", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# Runs after the docs example, in the same fresh interpreter: every photo through `session`.
ORT_ALL = """
import sys
for name in sys.argv[1:]:
    image = np.asarray(Image.open(name + ".png").convert("RGB"))
    labels, logits = session.run(["labels", "logits"], {"images": image[None]})
    np.savez(name + ".npz", labels=labels[0], logits=logits[0])
leaked = [m for m in ("jax", "fcn_jax", "flax") if m in sys.modules]
assert not leaked, leaked
"""


def test_cli_onnx_export_runs_in_a_fresh_onnxruntime_and_agrees_with_fcn_jax_predict(
    run8s, photos, predicted, tmp_path, capsys
):
    onnx_file = tmp_path / "fcn8s.onnx"
    assert cli.main(["export", "--checkpoint", str(run8s), "--format", "onnx", "--out", str(onnx_file)]) == 0
    printed = capsys.readouterr().out
    digest = re.search(r"sha256 ([0-9a-f]{64})", printed).group(1)
    assert digest == hashlib.sha256(onnx_file.read_bytes()).hexdigest() and "any" in printed

    for f in photos.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    code = deploy_md_example() + ORT_ALL
    r = subprocess.run(
        [sys.executable, "-c", code, "street", "other"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(1, 97, 130)" in r.stdout
    differ = 0
    for name in ("street", "other"):
        got = np.load(tmp_path / f"{name}.npz")
        logits, labels = got["logits"], got["labels"]
        assert labels.shape == predicted[name].shape
        # Near-ties by ONNX's own logits: a disagreement within tolerance has both margins small.
        scale = float(np.abs(logits).max())
        top2 = np.sort(logits, -1)[..., -2:]
        near_tie = top2[..., 1] - top2[..., 0] <= 2 * REL * scale
        mismatch = labels != predicted[name]
        assert not (mismatch & ~near_tie).any(), name
        differ += int(mismatch.sum())
    with capsys.disabled():  # the count, shown with pytest -s
        print(
            f"\nonnxruntime vs fcn-jax predict (FCN-8s run), 97x130 + 85x150: {differ} near-tie pixels differ"
        )
    colour = np.asarray(Image.open(tmp_path / "street_color.png"))
    assert colour.shape == (97, 130, 3)

    # A fixed size, labels only; bad arguments are one line and exit 2, before any loading.
    fixed = tmp_path / "fixed.onnx"
    args = ["export", "--checkpoint", str(run8s), "--out", str(fixed), "--height", "97", "--width", "130"]
    assert cli.main([*args, "--batch", "1", "--output", "labels"]) == 0  # .onnx: format inferred
    (labels,) = session(str(fixed)).run(None, {"images": np.asarray(Image.open(photos / "street.png"))[None]})
    np.testing.assert_array_equal(labels[0], np.load(tmp_path / "street.npz")["labels"])
    capsys.readouterr()
    for bad, message in [
        (["--format", "onnx", "--height", "97"], "both --height and --width"),
        (["--format", "onnx", "--platforms", "cpu"], "--platforms applies to --format jaxexport only"),
        (["--format", "safetensors", "--batch", "2"], "--batch: not used by --format safetensors"),
        (["--format", "onnx", "--batch", "0"], "--batch must be >= 1"),
    ]:
        out = tmp_path / ("dir" if "safetensors" in bad else "x.onnx")
        assert cli.main(["export", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(out), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert cli.main(["export", "--checkpoint", str(run8s), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_safetensors_folder_loads_by_path_in_segmenter_and_predict_and_checks_its_checksum(
    run8s, photos, predicted, tmp_path, capsys, monkeypatch
):
    from fcn_jax import run as run_lib

    folder = tmp_path / "fcn8s-camvid"
    assert (
        cli.main(["export", "--checkpoint", str(run8s), "--format", "safetensors", "--out", str(folder)]) == 0
    )
    digest = re.search(r"sha256 ([0-9a-f]{64})", capsys.readouterr().out).group(1)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    trained = run_lib.load_trained(run8s)
    assert (
        config["model"] == trained.run.spec().to_dict() and config["model"]["ops"]["upsample"] == "subpixel"
    )
    assert config["class_names"][0] == "Sky" and config["palette"][3] == [128, 64, 128]
    assert config["ignore_index"] == 11 and config["normalization"]["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    assert (
        config["weights"]["sha256"]
        == digest
        == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )
    assert config["trained_from"] == {"run": "run", "checkpoint": "best/8"}

    # Loaded by path: the same model and the same weights, bit for bit.
    seg = Segmenter.from_pretrained(str(folder))
    assert seg.model == trained.model and seg.class_names == trained.meta.class_names
    flat = jax.tree_util.tree_leaves_with_path
    for (ka, a), (kb, b) in zip(flat(seg.params), flat(jax.tree.map(np.asarray, trained.params))):
        assert ka == kb
        np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(seg.meta.palette, trained.meta.palette)

    # `fcn-jax predict --checkpoint FOLDER` gives what it gives for the run.
    out = tmp_path / "pred"
    assert cli.main(["predict", "--checkpoint", str(folder), str(photos), "--out", str(out), "--quiet"]) == 0
    for name, labels in predicted.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / "labels" / f"{name}.png")), labels)

    # A Hub repo id without network: one line naming the repo and the cause; no network touched.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    with pytest.raises(ValueError, match=r"^someone/fcn8s-camvid: .*Hugging Face Hub") as e:
        Segmenter.from_pretrained("someone/fcn8s-camvid")
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(ValueError, match="not a Hugging Face Hub repo id"):
        pretrained.load_pretrained(str(tmp_path / "no" / "such" / "folder"))

    # Damaged weights: the checksum catches them, in Python and on the command line.
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 does not match config.json"):
        Segmenter.from_pretrained(folder)
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(folder), str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: sha256 does not match" in err and len(err.strip().splitlines()) == 1
