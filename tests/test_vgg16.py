"""FCN-VGG16: geometry derived from VGG16's layer table, torchvision conversion, model spec.

The AlexNet counterparts live in tests/test_models.py and tests/test_convert.py; these
check that the same code, given VGG16's table, gives an aligned FCN and exact conversion.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_twin import TorchAlexNet, TorchFCN, TorchVGG16, load_flax_fcn_params

from fcn_jax import convert, geometry, ops
from fcn_jax.cli import main
from fcn_jax.models import FCN, VGG16, ModelSpec, Upsample
from fcn_jax.ops import OpSet

NUM_CLASSES = 5


# -- geometry -------------------------------------------------------------------------


def test_layer_table_is_vgg16():
    layers = geometry.VGG16_LAYERS
    convs = [w for n, w in layers.items() if n.startswith("conv")]
    pools = [w for n, w in layers.items() if n.startswith("pool")]
    assert len(convs) == 13 and set(convs) == {geometry.Window(3, 1, 1)}
    assert len(pools) == 5 and set(pools) == {geometry.Window(2, 2)}
    assert (layers["fc6"], layers["fc7"]) == (geometry.Window(7), geometry.Window(1))
    grids = geometry.trace(224, "fc7", backbone="vgg16")
    assert grids["pool5"].size == 7 and grids["fc7"].size == 1 and grids["fc7"].stride == 32
    for tap, stride in (("pool4", 16), ("pool3", 8)):
        assert geometry.BACKBONES["vgg16"].skip_taps[stride] == tap and grids[tap].stride == stride
    with pytest.raises(ValueError, match="backbone must be one of alexnet, vgg16"):
        geometry.plan(64, 64, "8s", "resnet")


def test_upsampling_kernel_follows_the_phase_of_the_target_grid():
    coarse = geometry.Grid(Fraction(-1, 2), Fraction(32), 4)
    on_cells = geometry.Grid(Fraction(31, 2), Fraction(16), 3)
    midway = geometry.Grid(Fraction(15, 2), Fraction(16), 3)
    assert geometry.upsampling_kernel(coarse, on_cells, 2) == 3
    assert geometry.upsampling_kernel(coarse, midway, 2) == 4
    assert coarse.upsampled(2, 4) == geometry.Grid(Fraction(15, 2), Fraction(16), 6)
    with pytest.raises(ValueError, match="off the upsampled"):
        geometry.upsampling_kernel(coarse, geometry.Grid(Fraction(3, 2), Fraction(16), 3), 2)


# Caffe's FCN-VGG16 uses these transposed-convolution kernels (upscore2 4x4, upscore8 16x16,
# upscore16 32x32, upscore 64x64): here they come out of the layer table.
CAFFE_KERNELS = {"32s": {1: 64}, "16s": {16: 4, 1: 32}, "8s": {16: 4, 8: 4, 1: 16}}


@pytest.mark.parametrize("variant", geometry.VARIANTS)
@pytest.mark.parametrize("length", [1, 2, 33, 64, 80, 97, 224, 361, 480])
def test_plan_covers_both_borders_and_fuses_aligned_grids(length, variant):
    p = geometry.plan_axis(length, variant, "vgg16")
    assert p.kernels == CAFFE_KERNELS[variant]
    # AlexNet's are one tap shorter: centred on the coarse cells.
    assert geometry.plan_axis(length, variant).kernels == {s: k - 1 for s, k in p.kernels.items()}

    def final(pad_after: int) -> geometry.Grid:
        grids = geometry.trace(length + p.pad[0] + pad_after, "fc7", Fraction(-p.pad[0]), "vgg16")
        g = grids["fc7"]
        for stride, tap in geometry.BACKBONES["vgg16"].skip_taps.items():
            if stride in p.kernels:
                g = g.upsampled(2, p.kernels[stride])
                assert grids[tap].start_of(g) == p.skip_starts[tap]
        return g.upsampled(geometry.output_stride(variant), p.kernels[1])

    out = final(p.pad[1])
    assert out.stride == 1 and out.offset == 0 and out.last >= length - 1 and p.out_start == 0
    if p.pad[1] > 0:  # minimal: one pixel less loses the last border point
        shorter = final(p.pad[1] - 1)
        assert shorter.size < 1 or shorter.last < length - 1


@pytest.mark.parametrize("size", [(1, 1), (33, 97), (100, 37)])
def test_output_size_equals_input_size(size):
    for variant in geometry.VARIANTS:  # shapes only: traced, not run
        model = FCN(NUM_CLASSES, variant, backbone="vgg16")
        out = jax.eval_shape(
            lambda x, m=model: m.init_with_output(jax.random.key(0), x)[0], jnp.zeros((2, *size, 3))
        )
        assert out.shape == (2, *size, NUM_CLASSES) and out.dtype == jnp.float32


@pytest.mark.parametrize("factor", [2, 3, 16])
def test_even_kernel_upsampling_is_bilinear_between_the_coarse_cells(factor):
    """2f taps: fine point f*m + s sits at coarse coordinate m + (s + 1/2) / f."""
    h, w, c = 4, 5, 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coarse = np.stack([np.sin(0.7 * yy + 0.3 * xx + k) for k in range(c)], -1).astype(np.float32)
    module = Upsample(factor, kernel_size=2 * factor)
    fine = np.asarray(module.apply(module.init(jax.random.key(0), coarse[None]), coarse[None]))[0]
    fy = (np.arange((h - 1) * factor) + 0.5) / factor
    fx = (np.arange((w - 1) * factor) + 0.5) / factor
    rows = np.stack([[np.interp(fx, np.arange(w), coarse[i, :, k]) for k in range(c)] for i in range(h)])
    expected = np.stack(
        [[np.interp(fy, np.arange(h), rows[:, k, j]) for j in range(len(fx))] for k in range(c)]
    )
    np.testing.assert_allclose(fine, expected.transpose(2, 1, 0), atol=1e-5)
    # The fast formulation equals the transposed convolution, also cropped, for any kernel.
    kernel = np.random.default_rng(factor).normal(size=(2 * factor, 2 * factor, c, 3)).astype(np.float32)
    ref = np.asarray(ops.upsample_reference(coarse[None], kernel, factor))
    assert ref.shape == (1, (h - 1) * factor, (w - 1) * factor, 3)
    np.testing.assert_allclose(ops.upsample(coarse[None], kernel, factor), ref, atol=1e-5)
    crop = (1, 2, ref.shape[1] - 2, ref.shape[2] - 3)
    np.testing.assert_allclose(
        ops.upsample(coarse[None], kernel, factor, crop), ref[:, 1 : 1 + crop[2], 2 : 2 + crop[3]], atol=1e-5
    )


# -- alignment ------------------------------------------------------------------------


def _mirror_symmetric(shapes, seed: int):
    """Kernels symmetric under flips of both spatial axes, zero biases. Large kernels (fc6:
    103M values) are low-rank products, symmetric through their spatial factor: drawing them
    in full would dominate the test's time (as would compiling jax.random for every shape)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(shapes)
    out = []
    for leaf in leaves:
        if leaf.ndim != 4:
            out.append(np.zeros(leaf.shape, np.float32))
            continue
        kh, kw, cin, cout = leaf.shape
        if leaf.size > 10_000_000:
            a = rng.standard_normal((kh * kw * cin, 8), np.float32)
            w = (a @ rng.standard_normal((8, cout), np.float32)).reshape(leaf.shape) / np.sqrt(8 * a.shape[0])
        else:
            w = rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / (kh * kw * cin))
        out.append((w + w[::-1] + w[:, ::-1] + w[::-1, ::-1]) / 4)
    return jax.tree.unflatten(treedef, out)


@pytest.mark.parametrize("variant", geometry.VARIANTS)
def test_output_pixel_is_aligned_with_input_pixel(variant):
    """As test_models.test_output_pixel_is_aligned_with_input_pixel: mirror-symmetric kernels
    and an image mirror-symmetric about c give an output mirror-symmetric about exactly c.

    Every feature map must be symmetric about c too, so c lies on or midway between the
    score cells (VGG16's sit half a pixel off the image grid, so c is a half-integer here).
    With zero biases the zero padding and the zeros beyond it look alike, so every output
    pixel is compared, and a small image suffices. XLA's convolutions, faster to compile:
    VGG16's Winograd convolutions are checked against PyTorch's in
    test_converted_vgg16_reproduces_torch_logits."""
    p = geometry.plan_axis(1, variant, "vgg16")
    score_offset = geometry.trace(1 << 12, "fc7", Fraction(-p.pad[0]), "vgg16")["fc7"].offset
    centres = [score_offset + 16 * k for k in (2, 3)]  # the first two beyond 16 pixels
    h, w = (int(2 * c + 1) for c in centres)
    model = FCN(NUM_CLASSES, variant, trainable_upsampling=False, ops=OpSet(conv="xla"), backbone="vgg16")
    images = jnp.zeros((1, h, w, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images)["params"])
    params = _mirror_symmetric(shapes, 2)
    image = np.random.default_rng(3).standard_normal((1, h, w, 3), np.float32)
    image = image + image[:, ::-1] + image[:, :, ::-1] + image[:, ::-1, ::-1]
    out = np.asarray(jax.jit(model.apply)({"params": params}, image))[0]
    scale = np.abs(out).max()
    assert scale > 1e-3  # not trivially symmetric
    np.testing.assert_allclose(out, out[::-1], atol=1e-5 * scale)
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-5 * scale)
    shifted = out[1:]  # off by one pixel: not symmetric
    assert np.abs(shifted - shifted[::-1]).max() > 1e-3 * scale


@pytest.mark.parametrize("variant", ["32s", "8s"])
def test_segmenter_buckets_are_vgg16s_own_padding_classes(variant):
    """`Segmenter` pads an image up to a bucket; for VGG16 the buckets are its own padding
    classes (not AlexNet's), so a padded image gives exactly the model's output on it alone."""
    from fcn_jax.predict import Segmenter, bucket_length

    for n in range(1, 70):
        b = bucket_length(n, variant, "vgg16")
        pn, pb = geometry.plan_axis(n, variant, "vgg16"), geometry.plan_axis(b, variant, "vgg16")
        assert b >= n and n + sum(pn.pad) == b + sum(pb.pad) and pn.pad[0] == pb.pad[0]
        assert pn.skip_starts == pb.skip_starts and pn.out_start == pb.out_start
    assert bucket_length(40, variant, "vgg16") != bucket_length(40, variant, "alexnet")
    model = FCN(NUM_CLASSES, variant, ops=OpSet(conv="xla"), backbone="vgg16")
    image = np.random.default_rng(0).integers(0, 256, (40, 45, 3), np.uint8)
    params = model.init(jax.random.key(1), jnp.zeros((1, 40, 45, 3)))["params"]
    params = jax.tree.map(lambda x: x + 0.01, params)  # non-zero biases: borders would differ
    seg = Segmenter(model, params, batch_size=1)
    assert seg.bucket(40, 45) != (40, 45)  # really padded
    from fcn_jax.data import normalize

    alone = model.apply({"params": params}, normalize(image)[None], train=False)[0]
    np.testing.assert_allclose(seg.predict_proba(image), jax.nn.softmax(alone, -1), atol=2e-6)


# -- conversion -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_vgg16():
    """Random weights at He scale: with torch's default init the signal fades through 16
    layers and the logits are little more than fc8's bias, which would hide a wrong
    transposition (fc6's C, H, W flatten order changes them by ~60 % here)."""
    torch.manual_seed(0)
    model = TorchVGG16().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.normal_(m.bias, std=0.01)
    return model


@pytest.fixture(scope="module")
def flax_params(torch_vgg16):
    return convert.vgg16_from_torch(torch_vgg16.state_dict())


def test_torch_layouts_follow_torchvision_indices():
    vgg = convert.torch_layout("vgg16")
    assert [k for k, (_, kind) in vgg.items() if kind == "conv"] == [
        f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    ]
    assert [vgg[f"classifier.{i}"] for i in (0, 3, 6)] == [
        ("fc6", "flatten"),
        ("fc7", "linear"),
        ("fc8", "linear"),
    ]
    assert vgg["features.28"] == ("conv5_3", "conv")
    alexnet = {k: layer for k, (layer, _) in convert.torch_layout("alexnet").items()}
    assert alexnet == {
        "features.0": "conv1",
        "features.3": "conv2",
        "features.6": "conv3",
        "features.8": "conv4",
        "features.10": "conv5",
        "classifier.1": "fc6",
        "classifier.4": "fc7",
        "classifier.6": "fc8",
    }
    assert set(TorchAlexNet().state_dict()) == {f"{p}.{n}" for p in alexnet for n in ("weight", "bias")}
    assert set(TorchVGG16().state_dict()) == {f"{p}.{n}" for p in vgg for n in ("weight", "bias")}


def test_converted_vgg16_reproduces_torch_logits(torch_vgg16, flax_params):
    """XLA's convolutions, to keep the test short: the default Winograd ones compile ~10 s
    longer here and agree as well (2.6e-6 measured; ops.conv_winograd's own tests compare it
    with XLA's)."""
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = torch_vgg16(torch.from_numpy(x)).numpy()
    assert np.abs(ref[0] - ref[1]).max() > 0.03 * np.abs(ref).max()  # the images matter
    model = VGG16(ops=OpSet(conv="xla"))
    got = np.asarray(jax.jit(model.apply)({"params": flax_params}, jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert got.shape == (2, 1, 1, 1000)
    rel = np.abs(got[:, 0, 0] - ref).max() / np.abs(ref).max()
    print(f"VGG16 logits: max relative error {rel:.2e}")
    assert rel < 1e-5


def test_transplanted_fcn_runs_the_torch_features_and_exports_to_onnx(torch_vgg16, flax_params):
    """The FCN on the converted classifier runs torchvision's features on the padded image the
    geometry plans; its ONNX export (a dynamic-size graph) and the benchmarks' PyTorch twin
    give the model's logits."""
    import onnxruntime as ort

    from fcn_jax import onnx_export

    params = convert.fcn_from_classifier(flax_params, 7, "8s", jax.random.key(0), backbone="vgg16")
    assert set(convert.transplanted("vgg16")) <= set(params) and "fc8" not in params
    for layer in convert.transplanted("vgg16"):
        np.testing.assert_array_equal(params[layer]["kernel"], flax_params[layer]["kernel"])
    assert params["score_pool4"]["kernel"].shape == (1, 1, 512, 7) and not np.any(
        params["score_fr"]["kernel"]
    )
    assert params["upscore_final8"]["kernel"].shape == (16, 16, 7, 7)
    rng = np.random.default_rng(1)
    for name in ("score_fr", "score_pool4", "score_pool3"):  # live score layers for the export check
        params[name] = {k: 0.01 * rng.standard_normal(v.shape, np.float32) for k, v in params[name].items()}
    model = FCN(7, "8s", backbone="vgg16", ops=OpSet.reference())

    h, w = 37, 52  # odd and even: the graph computes the padding from the input's shape
    pixels = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    scale, offset = onnx_export.normalization_constants()
    x = pixels.astype(np.float32) * scale + offset
    logits, state = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable="intermediates"))(params, x)
    taps = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
    (top, bottom), (left, right) = geometry.plan(h, w, "8s", "vgg16").pads
    y = torch.from_numpy(np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))).transpose(0, 3, 1, 2))
    refs = {}
    with torch.no_grad():
        for i, layer in enumerate(torch_vgg16.features):
            y = layer(y)
            if i in (16, 30):  # pool3, pool5
                refs["pool3" if i == 16 else "pool5"] = y.numpy().transpose(0, 2, 3, 1)
    for name, ref in refs.items():
        assert taps[name].shape == ref.shape
        assert np.abs(taps[name] - ref).max() / np.abs(ref).max() < 1e-5, name

    proto = onnx_export.build_onnx(model, params, None, output="logits")  # any batch and size
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": pixels})
    want = np.asarray(logits)
    assert got.shape == want.shape == (1, h, w, 7) and np.abs(want).max() > 1e-3
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    # The benchmarks' PyTorch twin (even-kernel ConvTranspose2d included) computes the same.
    twin = load_flax_fcn_params(TorchFCN(7, "8s", backbone="vgg16").eval(), params)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    assert np.abs(ref - want).max() < 1e-5 * np.abs(want).max()


def test_convert_command_takes_the_architecture(torch_vgg16, tmp_path, capsys):
    """The file keeps VGG16's shapes, but each fully connected layer repeats one row (a
    stride-0 view, which torch.save stores once): ~60 MB on disk instead of ~550, while
    fc6's columns, whose order the conversion rearranges, all differ."""
    state = torch_vgg16.state_dict()
    for name in ("classifier.0.weight", "classifier.3.weight", "classifier.6.weight"):
        state[name] = state[name][:1].clone().expand_as(state[name])
    pth = tmp_path / "vgg16.pth"
    torch.save(state, pth)
    assert pth.stat().st_size < 100e6
    want = convert.vgg16_from_torch(state)
    assert main(["convert", "--arch", "vgg16", str(pth), str(tmp_path / "v.safetensors")]) == 0
    digest = re.search(r"sha256 ([0-9a-f]{64})", capsys.readouterr().out).group(1)
    loaded = convert.load_params(tmp_path / "v.safetensors", sha256=digest)
    assert loaded.keys() == want.keys()
    assert loaded["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    for layer in ("conv1_1", "conv5_3", "fc6", "fc7", "fc8"):
        for k in ("kernel", "bias"):
            assert np.array_equal(loaded[layer][k], want[layer][k]), (layer, k)
    (tmp_path / "v.safetensors").unlink()
    # The default architecture is AlexNet: the VGG16 file is refused, listing what is wrong.
    assert main(["convert", str(pth), str(tmp_path / "a.msgpack")]) == 2
    err = capsys.readouterr().err
    assert "does not match torchvision's AlexNet" in err and "unexpected: features.28.weight" in err
    assert main(["convert", "--arch", "vgg19", str(pth), str(tmp_path / "b.msgpack")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--arch must be one of alexnet, vgg16, got 'vgg19'" in line


def test_alexnet_state_dict_is_refused_as_vgg16():
    sd = {k: v.numpy() for k, v in TorchAlexNet().state_dict().items()}
    with pytest.raises(ValueError, match="does not match torchvision's VGG16") as err:
        convert.vgg16_from_torch(sd)
    assert "missing: features.28.weight" in str(err.value)


# -- the model spec -----------------------------------------------------------------------


def test_model_spec_records_the_backbone_and_reads_older_records_as_alexnet(tmp_path):
    from fcn_jax import config as config_lib
    from fcn_jax import run as run_lib
    from fcn_jax.data.meta import DatasetMeta

    c = config_lib.base_config()
    assert c.model.backbone == "alexnet"
    c.model.backbone = "vgg16"
    spec = ModelSpec.from_config(c.model, 11)
    assert spec.build().backbone == "vgg16" and ModelSpec.from_dict(spec.to_dict()) == spec
    c.model.backbone = "vgg19"
    with pytest.raises(config_lib.ConfigError, match="config.model: backbone must be one of alexnet, vgg16"):
        config_lib.check(c)

    # A run written before the backbone existed: model.json without it.
    c.model.backbone = "alexnet"
    alexnet = ModelSpec.from_config(c.model, 11)
    meta = DatasetMeta("toy", 11, 255, [str(i) for i in range(11)], np.zeros((11, 3), np.uint8), {"train": 4})
    run = run_lib.Run(tmp_path / "run")
    run.root.mkdir()
    dataset = run_lib.dataset_record(meta, "train")
    config = json.loads(c.to_json())
    run_lib.write_records(run, config, alexnet, dataset, 0)
    record = json.loads((run.root / "model.json").read_text())
    del record["model"]["backbone"]
    (run.root / "model.json").write_text(json.dumps(record))
    assert run.spec() == alexnet and run.spec().backbone == "alexnet"
    assert run_lib.check_resumable(run, config, alexnet, dataset, None) == []
    problems = run_lib.check_resumable(run, config, spec, dataset, None)
    assert "model.backbone: saved 'alexnet', this config 'vgg16'" in problems


# -- describe -------------------------------------------------------------------------------


def test_describe_counts_vgg16_as_the_model_and_xla_do():
    """Rows follow the model's shapes and parameters; forward FLOPs are XLA's count of the
    reference program (as tests/test_describe.py checks for AlexNet)."""
    from throughput import _flops

    from fcn_jax.describe import describe, format_table

    classifier = describe("vgg16")
    assert classifier.params == 138_357_544  # torchvision's VGG16
    assert classifier.rows[-1].size == (1, 1) and classifier.rows[-1].channels == 1000
    h, w = 37, 52
    d = describe("fcn", (h, w), "8s", num_classes=5, backbone="vgg16")
    rows = {r.name: r for r in d.rows}
    assert d.padding == geometry.plan(h, w, "8s", "vgg16").pads
    assert (rows["upscore16"].window, rows["upscore_final8"].window) == ("4x4 s1/2", "16x16 s1/8")
    assert d.rows[-1].size == (h, w) and d.rows[-1].centre == (0, 0)
    assert format_table(d).startswith("FCN-8s on VGG16, 37x52 input")
    model = FCN(5, "8s", ops=OpSet.reference(), backbone="vgg16")
    x = jnp.zeros((1, h, w, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x)["params"])
    assert d.params == sum(a.size for a in jax.tree.leaves(params))
    out, state = jax.eval_shape(
        lambda p: model.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"]), params
    )
    for name, value in state["intermediates"].items():
        value = value["__call__"] if isinstance(value, dict) else value
        if name in rows:
            assert value[0].shape == (1, *rows[name].size, rows[name].channels), name
    xla = _flops(jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x))
    assert abs(d.forward_flops - xla) <= 1e-6 * xla
    with pytest.raises(ValueError, match="backbone applies to the FCN only"):
        describe("alexnet", backbone="vgg16")
