"""jax.export artifacts: run in a fresh interpreter without fcn_jax/flax, equal to the model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from test_predict import VARIANT, camvid_crops, camvid_meta, random_params

from fcn_jax import export
from fcn_jax.data import normalize
from fcn_jax.models import FCN

# What a deployment does: numpy + jax only (this is the snippet in docs/inference.md).
STANDALONE = textwrap.dedent("""
    import json, sys
    import numpy as np, jax

    path, images_file, out_file = sys.argv[1:]
    exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
    side = json.load(open(path + ".json"))
    params = {}
    with np.load(path + ".weights.npz") as w:
        for key in w.files:
            layer, name = key.split("/")
            params.setdefault(layer, {})[name] = w[key]
    out = exported.call(params, np.load(images_file))
    np.savez(out_file, labels=out["labels"], logits=out["logits"])
    leaked = [m for m in ("fcn_jax", "flax", "optax", "orbax") if m in sys.modules]
    assert not leaked, leaked
    print(side["class_names"][0], side["input"]["shape"])
""")


@pytest.fixture(scope="module")
def model():
    return FCN(11, VARIANT)


@pytest.fixture(scope="module")
def params(model):
    return random_params(model, seed=1)


@pytest.fixture(scope="module")
def images(camvid_dir):
    return np.stack([c[1] for c in camvid_crops(camvid_dir, "val", 2)])  # (2, 64, 96, 3) uint8


@pytest.fixture(scope="module")
def reference(model, params, images):
    """In-process logits of the model on `images`."""
    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, normalize(images)))


def run_python(code: str, *args, cwd) -> str:
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_artifact_runs_without_fcn_jax_and_equals_the_model(model, params, images, reference, tmp_path):
    path = tmp_path / "fcn.jaxexport"
    side = export.export_model(model, params, camvid_meta(), path, 64, 96)  # any batch size
    assert side["input"]["shape"] == [None, 64, 96, 3] and side["class_names"][0] == "Sky"
    assert json.loads(export.sidecar_path(path).read_text())["outputs"]["logits"]["shape"] == [
        None,
        64,
        96,
        11,
    ]
    np.save(tmp_path / "images.npy", images)
    stdout = run_python(STANDALONE, path, tmp_path / "images.npy", tmp_path / "out.npz", cwd=tmp_path)
    assert stdout.startswith("Sky")
    got = np.load(tmp_path / "out.npz")

    ref = reference
    assert got["logits"].shape == (2, 64, 96, 11) and got["labels"].dtype == np.int32
    np.testing.assert_allclose(got["logits"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["labels"], ref.argmax(-1))
    assert len(np.unique(got["labels"])) > 1

    # The in-process loader gives the same, for a batch and for one image.
    f = export.load(path)
    out = f(images)
    np.testing.assert_array_equal(out["labels"], got["labels"])
    np.testing.assert_array_equal(out["logits"], got["logits"])
    with pytest.raises(ValueError, match=r"\(B, 64, 96, 3\)"):
        f(images[:, :32])

    # Damaged or mismatched weights are refused by the checksum.
    w = export.weights_path(path)
    w.write_bytes(w.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="checksum"):
        export.load(path)


def test_cli_export_fixed_batch_labels_only_and_loader_needs_no_flax(
    model, params, images, reference, tmp_path, capsys, monkeypatch
):
    from fcn_jax import cli
    from fcn_jax import run as run_lib

    # Loading a run is tested in test_runs; here the command gets the in-memory model.
    run = tmp_path / "run"
    real_load = run_lib.load_trained

    def load_trained(path):
        if str(path) != str(run):
            return real_load(path)
        return run_lib.Trained(model, params, camvid_meta(), run / "best" / "8", run_lib.Run(run))

    monkeypatch.setattr(run_lib, "load_trained", load_trained)
    path = tmp_path / "labels.jaxexport"
    assert (
        cli.main(
            [
                "export",
                "--checkpoint",
                str(run),
                "--out",
                str(path),
                "--height",
                "64",
                "--width",
                "96",
                "--batch",
                "2",
                "--output",
                "labels",
                "--platforms",
                "cpu",
            ]
        )
        == 0
    )
    side = json.loads(export.sidecar_path(path).read_text())
    assert side["input"]["shape"] == [2, 64, 96, 3] and list(side["outputs"]) == ["labels"]
    assert side["platforms"] == ["cpu"] and side["palette"][3] == [128, 64, 128]

    np.save(tmp_path / "images.npy", images)
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import fcn_jax.export
        f = fcn_jax.export.load(sys.argv[1])
        np.save(sys.argv[3], f(np.load(sys.argv[2])))
        assert "flax" not in sys.modules and "fcn_jax.models" not in sys.modules
    """)
    run_python(code, path, tmp_path / "images.npy", tmp_path / "labels.npy", cwd=tmp_path)
    labels = np.load(tmp_path / "labels.npy")
    np.testing.assert_array_equal(labels, reference.argmax(-1))

    assert cli.main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(path)]) == 2
    assert "missing" in capsys.readouterr().err
