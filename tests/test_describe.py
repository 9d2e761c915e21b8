"""`fcn-jax describe`: every number in the table is checked against something independent.

* sizes and channels against the shapes the model produces (flax's captured module
  outputs and the sown pool taps of `apply(..., mutable="intermediates")`), on odd sizes;
* output strides, receptive fields and cell 0's centre against where a NaN pixel spreads;
* AlexNet's sizes and parameters against the PyTorch twin of torchvision's AlexNet;
* parameter totals against the initialised model;
* FLOPs against XLA's cost analysis of the reference program (what
  benchmarks/throughput.py reports as model FLOPs), forward and train step;
* the activation estimate against XLA's buffers for a compiled train step.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import cli, geometry, training
from fcn_jax.config import optimizer_config
from fcn_jax.describe import ALEXNET_INPUT, describe, format_table, min_alexnet_side
from fcn_jax.models import FCN, AlexNet, init_params
from fcn_jax.ops import OpSet

ODD_SIZES = [(33, 97), (101, 37), (361, 479)]
IGNORE = 255


def _rows(d):
    return {r.name: r for r in d.rows}


def _model(d):
    if d.model == "alexnet":
        return AlexNet(d.num_classes, ops=OpSet.reference())
    return FCN(d.num_classes, d.variant, ops=OpSet.reference())


def _param_shapes(model):
    x = jnp.zeros((1, ALEXNET_INPUT, ALEXNET_INPUT, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x)["params"])


# -- sizes, strides, receptive fields -------------------------------------------------


@pytest.fixture(scope="module")
def fcn8s():
    """FCN-8s on an image wide enough that even the widest field (~400 pixels) leaves cells
    unreached, with initialised parameters."""
    d = describe("fcn", (65, 513), "8s", num_classes=3)
    return d, init_params(_model(d), jax.random.key(0))


def _captured_shapes(d) -> dict[str, tuple]:
    """Output shape of every flax module (and every sown tap) for d's input, traced only."""
    model = _model(d)
    params = _param_shapes(model)
    x = jnp.zeros((1, *d.size, 3))
    out, state = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"]),
        params,
        x,
    )
    shapes = {"__output__": out.shape}
    for name, value in state["intermediates"].items():
        value = value["__call__"] if isinstance(value, dict) else value  # module output, or a sown tap
        shapes[name] = value[0].shape
    return shapes


@pytest.mark.parametrize("variant", geometry.VARIANTS)
@pytest.mark.parametrize("size", ODD_SIZES)
def test_fcn_sizes_equal_the_model_shapes(variant, size):
    d = describe("fcn", size, variant, num_classes=5)
    shapes = _captured_shapes(d)
    rows = _rows(d)
    # Every conv / fc / score / upsampling module and the three sown pools has its row.
    assert set(shapes) - set(rows) == {"__output__", "__call__", "Dropout_0", "Dropout_1"}
    assert {"pool1", "pool2", "pool5", "conv1", "fc7", "score_fr"} <= shapes.keys()
    for name in set(shapes) & set(rows):
        assert (1, *rows[name].size, rows[name].channels) == shapes[name], name
    final = d.rows[-1]
    assert shapes["__output__"] == (1, *size, 5) == (1, *final.size, final.channels)
    assert final.out_stride == 1 and final.centre == (0, 0)
    # Each fused map is the upsampled one, its skip score map cropped to it.
    for stride, tap in geometry.SKIP_TAPS.items():
        if f"fuse{stride}" in rows:
            fuse, skip = rows[f"fuse{stride}"], rows[f"score_{tap}"]
            assert fuse.size == rows[f"upscore{stride}"].size
            assert fuse.out_stride == skip.out_stride == stride
            start = d.skip_crops[tap]
            assert all(s + n <= m for s, n, m in zip(start, fuse.size, skip.size))
    # The padding row is the image plus the plan's padding.
    (top, bottom), (left, right) = d.padding
    assert rows["pad"].size == (size[0] + top + bottom, size[1] + left + right)
    assert rows["pad"].centre == (-top, -left)


@pytest.mark.parametrize("size", [(ALEXNET_INPUT, ALEXNET_INPUT), (227, 301), (361, 479)])
def test_alexnet_sizes_equal_the_model_shapes(size):
    d = describe("alexnet", size, num_classes=7)
    shapes = _captured_shapes(d)
    rows = _rows(d)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        assert (1, *rows[name].size, rows[name].channels) == shapes[name], name
    assert shapes["__output__"] == (1, *rows["fc8"].size, 7)


def test_alexnet_at_224_is_the_textbook_table():
    """224 -> 55 -> 27 -> 13 -> 6 -> 1, and torchvision's parameters, per layer and in all."""
    torch = pytest.importorskip("torch")
    from torch_twin import TorchAlexNet

    d = describe("alexnet")
    rows = _rows(d)
    assert d.size == (224, 224) and d.num_classes == 1000
    chain = [rows[n].size[0] for n in ("image", "conv1", "pool1", "pool2", "pool5", "fc7")]
    assert chain == [224, 55, 27, 13, 6, 1]
    assert d.classifier["224x224"]["shape"] == [1, 1, 1000]

    net = TorchAlexNet()
    assert d.params == sum(p.numel() for p in net.parameters())
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for name, module in zip(names, convs + linears):
        assert rows[name].params == sum(p.numel() for p in module.parameters()), name
    # Sizes from PyTorch's own convolution arithmetic, at 224 and at an odd size.
    for h, w in [(224, 224), (231, 257)]:
        sizes, x = [], torch.zeros(1, 3, h, w)
        with torch.no_grad():
            for m in net.features:
                x = m(x)
                if not isinstance(m, torch.nn.ReLU):
                    sizes.append(tuple(x.shape[2:]))
        dh = describe("alexnet", (h, w))
        ours = [r.size for r in dh.rows if r.kind in ("conv", "pool")]
        assert ours == sizes


def test_alexnet_minimum_side():
    side = min_alexnet_side()
    assert geometry.trace(side, "fc7")["fc7"].size == 1
    assert geometry.trace(side - 1, "fc7")["fc7"].size < 1
    assert side <= ALEXNET_INPUT
    with pytest.raises(ValueError, match=f"at least {side}x{side}"):
        describe("alexnet", (side - 1, 300))
    describe("alexnet", (side, side))


def test_receptive_fields_and_centres_are_where_a_nan_pixel_spreads(fcn8s):
    """A NaN pixel makes NaN exactly the cells that depend on it (0 * NaN is NaN, max and
    ReLU keep it): so every captured map's per-cell reach (`Description.reach`) is checked,
    hence stride, cell 0's centre (negative in the FCN's padding) and the widest field,
    through the even 6x6 fc6 window, the upsamplings and the skip fusions."""
    d, params = fcn8s
    size, pixels = d.size, [(20, 30), (64, 500)]

    # And for each map, pixels on the edge of some cell's field and just outside it, per axis:
    # a field one pixel too wide or too narrow shows there.
    def edges(spans, n):
        inside = [p for span in spans for p in span if 0 <= p < n]
        outside = [p for lo, hi in spans for p in (lo - 1, hi + 1) if 0 <= p < n]
        # (The deepest maps' fields span all 65 rows: no edge there to probe.)
        return int(inside[0]) if inside else n // 2, int(outside[0]) if outside else n // 2

    for name, (spans_h, spans_w) in d.reach.items():
        if name not in ("image", "pad"):
            (y_in, y_out), (x_in, x_out) = edges(spans_h, size[0]), edges(spans_w, size[1])
            pixels += [(y_in, x_in), (y_in, x_out), (y_out, x_in)]
    pixels = list(dict.fromkeys(pixels))
    model = _model(d)
    x = np.zeros((len(pixels), *size, 3), np.float32)
    for i, (py, px) in enumerate(pixels):
        x[i, py, px] = np.nan
    _, state = jax.jit(
        lambda p, x: model.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"])
    )(params, x)
    inter = state["intermediates"]
    checked = []
    for r in d.rows:
        if r.name not in inter:
            continue  # image, pad, fuse*: not a module's output
        value = inter[r.name]
        value = np.asarray((value["__call__"] if isinstance(value, dict) else value)[0])
        spans_h, spans_w = d.reach[r.name]
        # The row's columns are the reach's summary: cell 0's centre, and the widest field.
        assert r.centre == ((spans_h[0][0] + spans_h[0][1]) / 2, (spans_w[0][0] + spans_w[0][1]) / 2)
        assert r.receptive_field == max(hi - lo + 1 for lo, hi in spans_h + spans_w)
        assert all(lo.denominator == hi.denominator == 1 for lo, hi in spans_h + spans_w)  # whole pixels
        for i, (py, px) in enumerate(pixels):
            got = np.isnan(value[i]).any(-1)
            want = np.outer([lo <= py <= hi for lo, hi in spans_h], [lo <= px <= hi for lo, hi in spans_w])
            assert 0 < got.sum() < got.size, r.name  # some cells reached, not all
            np.testing.assert_array_equal(got, want, err_msg=f"{r.name}, NaN at {(py, px)}")
        checked.append(r.name)
    assert len(checked) == len(d.rows) - 4  # all but image, pad, fuse16, fuse8
    # The widest field of the score maps: two neighbouring score_fr cells.
    rows = _rows(d)
    assert (
        rows["upscore_final8"].receptive_field
        == rows["score_fr"].receptive_field + rows["score_fr"].out_stride
    )


# -- parameters --------------------------------------------------------------------------


def test_parameters_equal_the_initialised_model(fcn8s):
    """Initialised for real: FCN-8s, which has every kind of FCN layer (AlexNet's are
    checked against PyTorch above, the other variants' trees by shape below)."""
    d, params = fcn8s
    assert d.params == sum(a.size for a in jax.tree.leaves(params))
    rows = _rows(d)
    for name, layer in params.items():
        assert rows[name].params == sum(a.size for a in jax.tree.leaves(layer)), name


@pytest.mark.parametrize("which", ["alexnet", *geometry.VARIANTS])
def test_every_parameter_has_its_row(which):
    d = describe("alexnet") if which == "alexnet" else describe("fcn", (65, 33), which, num_classes=11)
    params = _param_shapes(_model(d))
    assert d.params == sum(a.size for a in jax.tree.leaves(params))
    rows = _rows(d)
    assert {name for name, r in rows.items() if r.params} == set(params)
    for name, layer in params.items():
        assert rows[name].params == sum(a.size for a in jax.tree.leaves(layer)), name


# -- FLOPs -------------------------------------------------------------------------------

# XLA's cost analysis adds its per-op counts in float32 (24-bit mantissa): its totals carry
# ~1e-7 of rounding, so the forward count, which includes everything XLA counts, is
# compared to 1e-6.
FORWARD_RTOL = 1e-6
# The train step's count leaves out the loss (~5 FLOPs per pixel and class) and the
# dropout masks' random bits (threefry: tens of integer ops per fc6/fc7 element), and
# counts the elementwise backward as 1 FLOP per output: measured 0.07-0.11 % below XLA
# from 33x97 to 360x480. 0.5 % leaves room for that and XLA's rounding; the test also
# asserts it beats forward x 3 (0.7-0.8 % off at these two cases).
TRAIN_RTOL = 5e-3


def _xla_flops(lowered) -> float:
    from throughput import _flops  # the benchmark's own reading of the cost analysis

    return _flops(lowered)


@pytest.mark.parametrize(
    "model, variant, size",
    [
        ("fcn", "32s", (33, 97)),
        ("fcn", "16s", (101, 37)),
        ("fcn", "8s", (361, 479)),
        ("fcn", "8s", (1, 1)),
        ("alexnet", None, (ALEXNET_INPUT, ALEXNET_INPUT)),
        ("alexnet", None, (227, 301)),
    ],
)
def test_forward_flops_equal_xla(model, variant, size):
    batch = 2
    d = describe(model, size, variant, num_classes=11, batch=batch)
    m = _model(d)
    x = jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32)
    xla = _xla_flops(jax.jit(lambda p, x: m.apply({"params": p}, x)).lower(_param_shapes(m), x)) / batch
    assert d.forward_flops == pytest.approx(xla, rel=FORWARD_RTOL)
    # The upsampling is counted as the reference computes it: the whole transposed convolution.
    if model == "fcn":
        final = d.rows[-1]
        f = geometry.output_stride(variant)
        coarse = d.rows[-2]
        assert final.flops == 2 * coarse.size[0] * coarse.size[1] * (2 * f - 1) ** 2 * 11 * 11


@pytest.mark.parametrize("variant, size, batch", [("8s", (360, 480), 2), ("32s", (33, 97), 1)])
def test_train_flops_match_the_throughput_benchmark(variant, size, batch):
    """The benchmark's model FLOPs: its train step (SGD, momentum 0.9) on the reference model."""
    d = describe("fcn", size, variant, num_classes=11, batch=batch)
    model = _model(d)
    cfg = optimizer_config(name="sgd", learning_rate=1e-4, momentum=0.9, schedule="constant")
    tx, _ = training.make_optimizer(cfg, decay_steps=1)
    state = jax.eval_shape(lambda: training.init_state(model, tx, jax.random.key(0)))
    train, _ = training.compile_steps(training.data_mesh(jax.devices()[:1]), model, tx, IGNORE)
    batch_shapes = {
        "image": jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch, *size), jnp.int32),
    }
    xla = _xla_flops(train.lower(state, batch_shapes)) / batch
    assert d.train_flops == pytest.approx(xla, rel=TRAIN_RTOL)
    assert abs(3 * d.forward_flops / xla - 1) > abs(d.train_flops / xla - 1)  # better than forward x 3


# -- memory ------------------------------------------------------------------------------


def test_activation_estimate_is_a_lower_bound_of_xla_buffers():
    """What one more image adds to a compiled train step's temporaries (XLA's buffer
    assignment, reference ops) is at least the estimate, and at most 3x it (as the table
    says: the estimate is each layer's output once; XLA also holds pre-ReLU values and
    activation gradients)."""
    size, variant = (97, 129), "8s"
    per_image = describe("fcn", size, variant, num_classes=11, batch=1).activation_bytes
    assert describe("fcn", size, variant, num_classes=11, batch=3).activation_bytes == 3 * per_image
    model = FCN(11, variant, ops=OpSet.reference())
    tx, _ = training.make_optimizer(optimizer_config(name="sgd", momentum=0.9), decay_steps=1)
    state = jax.eval_shape(lambda: training.init_state(model, tx, jax.random.key(0)))
    train, _ = training.compile_steps(training.data_mesh(jax.devices()[:1]), model, tx, IGNORE)
    temp = {}
    for batch in (1, 3):
        shapes = {
            "image": jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch, *size), jnp.int32),
        }
        temp[batch] = train.lower(state, shapes).compile().memory_analysis().temp_size_in_bytes
    xla_per_image = (temp[3] - temp[1]) / 2
    assert per_image <= xla_per_image <= 3 * per_image


# -- the command -------------------------------------------------------------------------


def _run(capsys, *argv):
    rc = cli.main(["describe", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_columns_are_aligned(capsys):
    rc, out, err = _run(
        capsys, "--model", "fcn", "--variant", "16s", "--size", "101x37", "--num-classes", "5"
    )
    assert rc == 0 and err == ""
    lines = out.splitlines()
    sep = next(i for i, line in enumerate(lines) if line.startswith("-----"))
    header, rule = lines[sep - 1], lines[sep]
    spans, pos = [], 0
    for dashes in rule.split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    columns = [header[a:b].strip() for a, b in spans]
    assert columns[:4] == ["layer", "kind", "window", "output HxWxC"]
    d = describe("fcn", (101, 37), "16s", num_classes=5)
    body = lines[sep + 1 : sep + 1 + len(d.rows)]
    for line, r in zip(body, d.rows):
        cells = {c: line[a:b].strip() for c, (a, b) in zip(columns, spans)}
        assert cells["layer"] == r.name
        assert cells["output HxWxC"] == f"{r.size[0]}x{r.size[1]}x{r.channels}"
        assert cells["RF"] == str(r.receptive_field)
        assert cells["params"] == f"{r.params:,}"
    assert f"parameters: {d.params:,}" in out
    assert "skip crops: score_pool2 from " in out
    assert "at 101x37: upscore_final16 101x37x5" in out


def test_json_has_rows_and_totals(capsys):
    rc, out, err = _run(
        capsys, "--model", "fcn", "--variant", "8s", "--size", "360x480", "--batch", "4", "--json"
    )
    assert rc == 0 and err == ""
    doc = json.loads(out)
    d = describe("fcn", (360, 480), "8s", batch=4)
    assert doc["size"] == [360, 480] and doc["batch"] == 4 and doc["num_classes"] == d.num_classes
    assert [r["name"] for r in doc["rows"]] == [r.name for r in d.rows]
    assert sum(r["params"] for r in doc["rows"]) == doc["totals"]["params"] == d.params
    assert sum(r["flops"] for r in doc["rows"]) / 1e9 == pytest.approx(
        doc["totals"]["forward_gflop_per_image"]
    )
    assert doc["totals"]["activation_mib"] == pytest.approx(d.activation_bytes / 2**20)
    assert doc["rows"][1]["centre"] == [-doc["padding"][0][0], -doc["padding"][1][0]]
    assert set(doc["skip_crops"]) == {"pool1", "pool2"}
    assert doc["classifier"]["224x224"]["shape"] == [224, 224, d.num_classes]


def test_alexnet_command_shows_one_score_at_224_and_a_map_at_the_size(capsys):
    rc, out, _ = _run(capsys, "--model", "alexnet", "--size", "360x480", "--num-classes", "10")
    assert rc == 0
    oh, ow = (geometry.trace(n, "fc7")["fc7"].size for n in (360, 480))
    assert "at 224x224: fc8 1x1x10 (stride 32): one score vector per image" in out
    assert f"at 360x480: fc8 {oh}x{ow}x10 (stride 32): a coarse score map" in out
    assert "input padding" not in out  # AlexNet pads nothing


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "0x5"], "--size must be at least 1x1"),
        (["--size", "abc"], "--size must be HxW"),
        (["--size", "12x"], "--size must be HxW"),
        (["--variant", "4s"], "--variant must be one of 32s, 16s, 8s"),
        (["--model", "vgg"], "--model must be one of alexnet, vgg16, fcn"),
        (["--model", "alexnet", "--variant", "8s"], "--variant applies to --model fcn only"),
        (["--model", "alexnet", "--size", "100x300"], "AlexNet needs at least"),
        (["--num-classes", "0"], "--num-classes must be >= 1"),
        (["--batch", "two"], "--batch must be a positive integer"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(capsys, argv, message):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"fcn-jax describe: {message}")


def test_format_table_names_the_model_and_size():
    text = format_table(describe("fcn", (64, 48), "32s", num_classes=2))
    assert text.splitlines()[0] == "FCN-32s, 64x48 input, 2 classes"
    assert "skip crops: none" in text
