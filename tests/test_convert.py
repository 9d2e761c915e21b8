"""PyTorch AlexNet -> Flax conversion: exact logits, encoder parity, errors, CLI."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_twin import TorchAlexNet

from fcn_jax import convert, geometry
from fcn_jax.cli import main
from fcn_jax.models import FCN, AlexNet


@pytest.fixture(scope="module")
def torch_alexnet():
    torch.manual_seed(0)
    return TorchAlexNet().eval()


@pytest.fixture(scope="module")
def flax_params(torch_alexnet):
    return convert.alexnet_from_torch(torch_alexnet.state_dict())


def test_converted_alexnet_reproduces_torch_logits(torch_alexnet, flax_params):
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = torch_alexnet(torch.from_numpy(x)).numpy()
    got = np.asarray(AlexNet().apply({"params": flax_params}, jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert got.shape == (2, 1, 1, 1000)
    rel = np.abs(got[:, 0, 0] - ref).max() / np.abs(ref).max()
    print(f"AlexNet logits: max relative error {rel:.2e}")
    assert rel < 1e-5


def test_fcn_encoder_reproduces_torch_features_on_non_square_input(torch_alexnet, flax_params):
    h, w = 150, 210
    x = np.random.default_rng(1).normal(size=(1, h, w, 3)).astype(np.float32)
    fcn_params = convert.fcn_from_alexnet(flax_params, 4, "8s", jax.random.key(0))
    _, state = FCN(4, "8s").apply({"params": fcn_params}, x, mutable="intermediates")
    taps = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
    # The FCN runs the encoder on the zero-padded image that the geometry plans.
    (top, bottom), (left, right) = geometry.plan(h, w, "8s").pads
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))).transpose(0, 3, 1, 2)
    with torch.no_grad():
        feats = torch_alexnet.features(torch.from_numpy(padded)).numpy().transpose(0, 2, 3, 1)
        pool2 = torch_alexnet.features[:6](torch.from_numpy(padded)).numpy().transpose(0, 2, 3, 1)
    for name, ref in (("pool5", feats), ("pool2", pool2)):
        assert taps[name].shape == ref.shape
        rel = np.abs(taps[name] - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, (name, rel)


def test_transplant_copies_encoder_and_initialises_the_rest(flax_params):
    params = convert.fcn_from_alexnet(flax_params, 7, "16s", jax.random.key(0))
    for layer in convert.TRANSPLANTED:
        np.testing.assert_array_equal(params[layer]["kernel"], flax_params[layer]["kernel"])
    assert "fc8" not in params
    assert params["score_fr"]["kernel"].shape == (1, 1, 4096, 7)
    assert not np.any(params["score_fr"]["kernel"]) and not np.any(params["score_pool2"]["kernel"])


def test_state_dict_errors_list_every_problem(torch_alexnet):
    sd = {k: v.numpy() for k, v in torch_alexnet.state_dict().items()}
    del sd["features.3.weight"]
    sd["features.6.bias"] = np.zeros(5, np.float32)
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        convert.alexnet_from_torch(sd)
    msg = str(err.value)
    assert "missing: features.3.weight" in msg
    assert "unexpected: extra.weight" in msg
    assert re.search(r"wrong shape: features\.6\.bias is \(5,\), expected \(384,\)", msg)


def test_convert_command_writes_loadable_params_with_stable_checksum(
    torch_alexnet, flax_params, tmp_path, capsys
):
    pth = tmp_path / "alexnet.pth"
    torch.save(torch_alexnet.state_dict(), pth)
    assert main(["convert", str(pth), str(tmp_path / "a.msgpack")]) == 0
    first = re.search(r"sha256 ([0-9a-f]{64})", capsys.readouterr().out).group(1)
    assert main(["convert", str(pth), str(tmp_path / "b.msgpack")]) == 0
    assert re.search(r"sha256 ([0-9a-f]{64})", capsys.readouterr().out).group(1) == first
    loaded = convert.load_params(tmp_path / "a.msgpack", sha256=first)
    for layer, values in flax_params.items():
        for name, value in values.items():
            np.testing.assert_array_equal(loaded[layer][name], value)
    with pytest.raises(ValueError, match="does not match"):
        convert.load_params(tmp_path / "a.msgpack", sha256="0" * 64)


def test_convert_writes_safetensors_and_load_params_reads_both_formats(
    torch_alexnet, flax_params, tmp_path, capsys
):
    from safetensors.numpy import load_file

    pth = tmp_path / "alexnet.pth"
    torch.save(torch_alexnet.state_dict(), pth)
    assert main(["convert", str(pth), str(tmp_path / "a.safetensors")]) == 0
    digests = [re.search(r"sha256 ([0-9a-f]{64})", capsys.readouterr().out).group(1)]
    digests.append(convert.save_params(flax_params, tmp_path / "b.safetensors"))
    assert digests[0] == digests[1]  # reproducible bytes
    small = {"conv1": flax_params["conv1"]}  # msgpack, for reading both: small, to keep this test fast
    digests.append(convert.save_params(small, tmp_path / "c.msgpack"))
    assert (tmp_path / "a.safetensors.sha256").read_text().split()[0] == digests[0]
    raw = load_file(tmp_path / "a.safetensors")  # plain safetensors: keys "layer/name", Flax layouts
    assert raw["conv1/kernel"].shape == (11, 11, 3, 64) and raw["fc6/kernel"].shape == (6, 6, 256, 4096)
    for name, digest, params in (
        ("a.safetensors", digests[0], flax_params),
        ("c.msgpack", digests[2], small),
    ):
        loaded = convert.load_params(tmp_path / name, sha256=digest)
        assert loaded.keys() == params.keys()
        for layer, values in params.items():
            for leaf, value in values.items():  # array_equal: assert_array_equal is slow at 61M values
                assert np.array_equal(loaded[layer][leaf], value), (name, layer, leaf)
    # The format is read from the content, not the name.
    (tmp_path / "renamed.bin").write_bytes((tmp_path / "a.safetensors").read_bytes())
    assert convert.load_params(tmp_path / "renamed.bin")["fc8"]["bias"].shape == (1000,)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="junk.safetensors is not a parameter file"):
        convert.load_params(tmp_path / "junk.safetensors")


def test_convert_command_reports_bad_files(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "o")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    assert main(["convert", str(bad), str(tmp_path / "o")]) == 2
    assert "missing: classifier.1.weight" in capsys.readouterr().err
