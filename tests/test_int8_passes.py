"""The int8 graph passes on small synthetic models, with real ONNX Runtime quantization and inference:
MSE activation ranges (`quantize.ranges`), activations kept float with int8 weights (`quantize.onnx_float`)
and the accuracy-aware search for the fewest float activations (`quantize.accuracy_control`).

The weights are exactly on ORT's per-channel int8 grid (multiples of 1/128 with 127/128 in every channel),
so a model whose every activation is kept float computes exactly what the FP32 model does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize.accuracy_control import (
    AccuracyBudget,
    float_macs,
    judge,
    keep_float_until,
    rank_activations,
    summary_line,
)
from quantize.onnx_float import (
    activation_quantizers,
    float_activations,
    grid_groups,
    tensors_around,
    tensors_read_by,
)
from quantize.ranges import BINS, LEVELS, SCALES, histograms, mse_range, mse_ranges

IMAGE = (1, 3, 8, 8)
CLASSES = 10
MACS = {"conv1": 1_000, "conv2": 2_000, "fc": 30}  # made-up MACs of the three weighted nodes


# -- helpers ------------------------------------------------------------------------------------------------
def _on_grid(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Weights ORT's symmetric per-channel int8 quantization stores exactly (scale 1/128 per channel)."""
    ints = rng.integers(-127, 128, (shape[0], int(np.prod(shape[1:]))))
    ints[:, 0] = 127
    return (ints.reshape(shape) / 128).astype(np.float32)


def _classifier(path: Path) -> None:
    """x -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> 10 logits (no biases)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(_on_grid((8, 3, 3, 3), rng), "w1"),
        numpy_helper.from_array(_on_grid((8, 8, 3, 3), rng), "w2"),
        numpy_helper.from_array(_on_grid((CLASSES, 8), rng), "fw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(IMAGE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _quantize(
    fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]], float_outputs: tuple[str, ...]
) -> onnx.ModelProto:
    """ORT's static QDQ quantization as the toolkit calls it: int8 asymmetric activations, symmetric
    per-channel int8 weights; `float_outputs` op types keep their output float (("Gemm",): float logits)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.data = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    extra: dict = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if float_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(float_outputs)
    quantize_static(
        str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, extra_options=extra,
    )  # fmt: skip
    return onnx.load(str(out))


def _session(model: onnx.ModelProto, extra_outputs: tuple[str, ...] = ()) -> ort.InferenceSession:
    """An unoptimised single-threaded session (no fusion: the QDQ arithmetic as written), with extra outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in extra_outputs:
        copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, images: np.ndarray, extra_outputs: tuple[str, ...] = ()) -> list[np.ndarray]:
    """Every output (the logits first), image by image, concatenated."""
    session = _session(model, extra_outputs)
    runs = [session.run(None, {"x": images[i : i + 1]}) for i in range(len(images))]
    return [np.concatenate(column) for column in zip(*runs, strict=True)]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _floated(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    out = _copy(model)
    assert float_activations(out, tensors) == tensors
    return out


def _is_topological(model: onnx.ModelProto) -> bool:
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if any(name and name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


def _int8_weight_dequantizers(model: onnx.ModelProto) -> int:
    """DequantizeLinear nodes that read an int8 initializer (the stored weights)."""
    int8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8}
    return sum(1 for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8)


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, *IMAGE[1:])).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    """The FP32 classifier and two int8 versions: float logits ("int8") and int8 logits ("int8_logits")."""
    folder = tmp_path_factory.mktemp("int8_passes")
    fp32 = folder / "fp32.onnx"
    _classifier(fp32)
    calibration = [{"x": image[None]} for image in _images(8, seed=1)]
    return {
        "fp32": onnx.load(str(fp32)),
        "int8": _quantize(fp32, folder / "int8.onnx", calibration, ("Gemm",)),
        "int8_logits": _quantize(fp32, folder / "int8_logits.onnx", calibration, ()),
    }


# -- quantize.ranges ----------------------------------------------------------------------------------------
def _expected_error(counts: np.ndarray, low: float, high: float, scale: float) -> float:
    """The documented error model, value by value: (v - bound)^2 when clipped, step^2/12 inside the range."""
    width = (high - low) / len(counts)
    lo, hi = scale * low, scale * high
    step = (hi - lo) / LEVELS
    total = 0.0
    for index in np.flatnonzero(counts):
        centre = low + (index + 0.5) * width
        if centre > hi:
            cost = (centre - hi) ** 2
        elif centre < lo:
            cost = (lo - centre) ** 2
        else:
            cost = step**2 / 12
        total += float(counts[index]) * cost
    return total


def test_mse_range_clips_a_lone_outlier() -> None:
    """All mass in the lowest 10% of [0, 10] and one count at 10: clipping the outlier buys a 255-step grid
    fine enough for the two million others, so the range ends well below 10 (yet above the mass)."""
    counts = np.zeros(BINS, np.int64)
    counts[: BINS // 10] = 10_000
    counts[-1] = 1
    low, high = mse_range(counts, 0.0, 10.0)
    assert low == 0.0
    assert 1.0 <= high < 5.0, high
    assert _expected_error(counts, 0.0, 10.0, high / 10.0) < 0.5 * _expected_error(counts, 0.0, 10.0, 1.0)


@pytest.mark.parametrize("low", [0.0, -3.0])
def test_mse_range_keeps_a_uniform_range(low: float) -> None:
    """Values spread evenly over the range: any clipping costs more than the finer step saves, so min-max stays."""
    assert mse_range(np.full(BINS, 50, np.int64), low, 10.0) == pytest.approx((low, 10.0))


def test_mse_range_degenerate_inputs_keep_the_bounds() -> None:
    """No counts (only exact zeros) or an empty range: nothing to trade, the min-max bounds come back."""
    assert mse_range(np.zeros(BINS, np.int64), 0.0, 4.0) == (0.0, 4.0)
    assert mse_range(np.ones(BINS, np.int64), 2.0, 2.0) == (2.0, 2.0)


@pytest.mark.parametrize(("seed", "low"), [(0, 0.0), (1, -2.0), (2, 0.0)])
def test_mse_range_is_the_brute_force_argmin(seed: int, low: float) -> None:
    """On a random histogram (a dense bulk around zero, 20 sparse counts anywhere else), the vectorised
    choice is the scale of least error by a plain loop over SCALES and values (an interior scale, so the
    min-max fallback alone would not pass)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(BINS, np.int64)
    zero = int(-low / (6.0 - low) * BINS)  # the bin of 0.0 in [low, 6]
    bulk = slice(max(zero - 150, 0), zero + 250)
    counts[bulk] = rng.integers(0, 20_000, bulk.stop - bulk.start)
    tail = np.setdiff1d(np.arange(BINS), np.arange(BINS)[bulk])
    counts[rng.choice(tail, 20, replace=False)] = rng.integers(1, 4, 20)
    errors = [_expected_error(counts, low, 6.0, float(s)) for s in SCALES]
    best = int(np.argmin(errors))
    assert SCALES[best] < 0.9
    chosen_low, chosen_high = mse_range(counts, low, 6.0)
    assert chosen_high == pytest.approx(SCALES[best] * 6.0) and chosen_low == pytest.approx(SCALES[best] * low)
    assert _expected_error(counts, low, 6.0, chosen_high / 6.0) == pytest.approx(errors[best], rel=1e-9)


def _relu_neg(path: Path) -> None:
    """x -> Relu -> r (an intermediate, not a graph output) -> Neg -> y."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Neg", ["r"], ["y"], name="neg"),
        ],
        "relu_neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_histograms_and_mse_ranges_on_a_model(tmp_path: Path) -> None:
    """Counts read from the tensors ORT computes (an intermediate and the output): one count per nonzero value,
    the far outlier in the last bin, ReLU's zeros left out; the chosen range clips the outlier (at both
    ends: y = -r has its outlier at the bottom), and a degenerate range is left alone."""
    path = tmp_path / "relu_neg.onnx"
    _relu_neg(path)
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.uniform(-0.25, 1.0, (1, 1_000_000)).astype(np.float32)} for _ in range(2)]
    feeds[1]["x"][0, 7] = 100.0  # one far outlier among 1.6 million values in (0, 1)
    nonzero = sum(int((feed["x"] > 0).sum()) for feed in feeds)
    bounds = {"r": (0.0, 100.0), "y": (-100.0, 0.0), "flat": (1.0, 1.0)}

    counts = histograms(path, bounds, iter(feeds), total=len(feeds))
    assert sorted(counts) == ["r", "y"]
    assert int(counts["r"].sum()) == int(counts["y"].sum()) == nonzero
    first = BINS // 100 + 1  # the bins over [0, 1.025]: every value but the outlier
    assert counts["r"][-1] == 1 and counts["r"][first:-1].sum() == 0
    assert counts["y"][0] == 1 and counts["y"][1:-first].sum() == 0
    small = np.concatenate([feed["x"][(feed["x"] > 0) & (feed["x"] < 100)] for feed in feeds])
    expected, _ = np.histogram(small, first, range=(0.0, first * 100 / BINS))
    assert np.abs(counts["r"][:first] - expected).sum() <= 10  # bin edges: float32 vs float64 arithmetic
    assert np.abs(counts["y"][-first:][::-1] - counts["r"][:first]).sum() <= 100  # y = -r: mirrored bins

    chosen = mse_ranges(path, bounds, iter(feeds), total=len(feeds))
    assert chosen["flat"] == (1.0, 1.0)
    assert chosen["r"][0] == 0.0 and 1.0 <= chosen["r"][1] < 50.0
    assert chosen["y"] == pytest.approx((-chosen["r"][1], 0.0))


# -- quantize.onnx_float ------------------------------------------------------------------------------------
def test_ort_drops_the_relus_into_the_quantizers(models: dict[str, onnx.ModelProto]) -> None:
    """The precondition of the Relu re-insertion: ORT removes each Relu and lets the QuantizeLinear (zero point
    at -128, the bottom of int8) clamp the negatives; the Conv writes the Relu's tensor name."""
    int8 = models["int8"]
    assert not any(node.op_type == "Relu" for node in int8.graph.node)
    quantizers = activation_quantizers(int8)
    assert sorted(quantizers) == ["f", "g", "r1", "r2", "x"]
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    assert int(inits[quantizers["r1"].input[2]]) == -128
    assert int(inits[quantizers["x"].input[2]]) != -128  # the input has negatives: no Relu for it
    producer = {out: node for node in int8.graph.node for out in node.output}
    assert producer["r1"].name == "conv1" and producer["r2"].name == "conv2"


def test_all_activations_float_is_the_float_model(models: dict[str, onnx.ModelProto]) -> None:
    """Every pair removed (Relus put back), weights exactly on the int8 grid: the FP32 logits to 1e-5, on an
    input whose conv1 pre-activations are partly negative. Without the re-inserted Relus the same graph is
    far off, which is what this test guards."""
    images = _images(4, seed=11)
    reference, pre_relu = _run(models["fp32"], images, ("c1",))
    assert (pre_relu < 0).mean() > 0.2
    floated = _floated(models["int8"], sorted(activation_quantizers(models["int8"])))
    assert not any(node.op_type in ("QuantizeLinear",) for node in floated.graph.node)
    np.testing.assert_allclose(_run(floated, images)[0], reference, atol=1e-5)
    assert np.abs(_run(models["int8"], images)[0] - reference).max() > 1e-2  # int8 itself is not that close

    no_relu = _copy(floated)  # the same graph with the re-inserted Relus bypassed
    relus = {node.output[0]: node.input[0] for node in no_relu.graph.node if node.op_type == "Relu"}
    assert set(relus) >= {"r1_float_relu", "r2_float_relu"}
    kept = [node for node in no_relu.graph.node if node.op_type != "Relu"]
    for node in kept:
        node.input[:] = [relus.get(name, name) for name in node.input]
    del no_relu.graph.node[:]
    no_relu.graph.node.extend(kept)
    assert np.abs(_run(no_relu, images)[0] - reference).max() > 1e-2


def test_one_float_activation_changes_only_its_rounding(models: dict[str, onnx.ModelProto]) -> None:
    """Floating r1 alone: conv2 reads exactly relu(conv1's float output); every other pair and its scale is
    untouched; the logits then differ from both the int8 and the FP32 model."""
    int8 = models["int8"]
    images = _images(4, seed=12)
    one = _floated(int8, ["r1"])
    assert sorted(activation_quantizers(one)) == ["f", "g", "r2", "x"]
    for name, quantize in activation_quantizers(one).items():
        assert list(quantize.input) == list(activation_quantizers(int8)[name].input)
    conv2 = next(node for node in one.graph.node if node.name == "conv2")
    assert conv2.input[0] == "r1_float_relu"
    logits, relu_out, conv1_out = _run(one, images, ("r1_float_relu", "r1"))
    np.testing.assert_array_equal(relu_out, np.maximum(conv1_out, 0))
    (int8_logits, int8_conv1) = _run(int8, images, ("r1",))
    np.testing.assert_array_equal(conv1_out, int8_conv1)  # conv1 itself computes as before
    reference = _run(models["fp32"], images)[0]
    assert np.abs(logits - int8_logits).max() > 1e-3
    assert np.abs(logits - reference).max() > 1e-3


def test_float_activations_keeps_weights_int8_and_size(models: dict[str, onnx.ModelProto]) -> None:
    """The weights stay int8 initializers behind their DequantizeLinear, none turns float, and the file
    grows by at most a few hundred bytes (a Relu node or two)."""
    int8 = models["int8"]
    floated = _floated(int8, sorted(activation_quantizers(int8)))
    assert _int8_weight_dequantizers(int8) == _int8_weight_dequantizers(floated) == 3
    before = {t.name: t.data_type for t in int8.graph.initializer}
    after = {t.name: t.data_type for t in floated.graph.initializer}
    assert after == before
    assert floated.ByteSize() <= int8.ByteSize() + 300


def test_a_float_stem_keeps_conv1_s_activations_float_and_its_weights_int8(
    models: dict[str, onnx.ModelProto],
) -> None:
    """The `float-stem-activations` pass: the tensors conv1 reads and writes (the image, its Relu'd output)
    lose their rounding, so conv1 computes on the float image with its int8 weights, and nothing else moves."""
    int8 = models["int8"]
    assert tensors_around(int8, ["conv1"]) == ["x", "r1"]
    assert tensors_around(int8, ["fc"]) == ["f"]  # the logits are not quantized here (float_outputs empty)
    assert tensors_around(int8, ["no-such-node"]) == []
    stem = _floated(int8, tensors_around(int8, ["conv1"]))
    assert sorted(activation_quantizers(stem)) == ["f", "g", "r2"]
    assert _int8_weight_dequantizers(stem) == 3
    images = _images(4, seed=13)
    (logits, r1) = _run(stem, images, ("r1",))
    conv1 = next(node for node in stem.graph.node if node.name == "conv1")
    assert conv1.input[0] == "x"  # the float image itself
    (_, int8_r1) = _run(int8, images, ("r1",))
    assert np.abs(r1 - int8_r1).max() > 1e-3  # conv1 no longer reads a rounded image
    reference = _run(models["fp32"], images)[0]
    assert np.abs(logits - reference).mean() < np.abs(_run(int8, images)[0] - reference).mean()


def _stem_graph(conv: str, relu: str, pool: str) -> onnx.ModelProto:
    """A normalisation, a conv/relu/max-pool stem named `conv`, `relu`, `pool`, and a second conv."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w1")
    weight2 = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2")
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["m"], name="normalise"),
        helper.make_node("Conv", ["m", "w1"], ["c"], name=conv, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name=relu),
        helper.make_node("MaxPool", ["r"], ["p"], name=pool, kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, IMAGE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, weight2],
    )  # fmt: skip
    return helper.make_model(graph)


def test_the_float_stem_is_found_by_structure() -> None:
    """The recipes name the reference network's stem; a model that names it otherwise (the torchvision variant:
    conv1.bn, conv1, maxpool1) gets its own stem floated, and the user's other names are kept as given."""
    from quantize.onnx_float import stem_nodes
    from quantize.onnx_weights import with_model_stem
    from quantize.presets import FLOAT_STEM

    reference = _stem_graph(*FLOAT_STEM)
    torchvision = _stem_graph("conv1.bn", "conv1", "maxpool1")
    assert stem_nodes(reference) == list(FLOAT_STEM)
    assert stem_nodes(torchvision) == ["conv1.bn", "conv1", "maxpool1"]
    assert with_model_stem(reference, (*FLOAT_STEM, "avgpool")) == (*FLOAT_STEM, "avgpool")
    assert with_model_stem(torchvision, (*FLOAT_STEM, "avgpool")) == ("conv1.bn", "conv1", "maxpool1", "avgpool")
    assert with_model_stem(torchvision, ("conv2",)) == ("conv2",)  # no stem asked for: nothing added
    no_pool = _stem_graph("a", "b", "c")
    no_pool.graph.node[3].op_type = "AveragePool"
    assert stem_nodes(no_pool) == []


def test_tensors_read_by_names_the_quantized_inputs(models: dict[str, onnx.ModelProto]) -> None:
    """Through each op's DequantizeLinear back to its QuantizeLinear: the activation tensors the op reads,
    never its weights; none once that activation is float."""
    int8 = models["int8"]
    assert tensors_read_by(int8, ["Gemm"]) == ["f"]
    assert tensors_read_by(int8, ["Conv"]) == ["x", "r1"]
    assert tensors_read_by(int8, ["GlobalAveragePool", "Gemm"]) == ["r2", "f"]
    assert tensors_read_by(int8, ["Relu"]) == []
    assert tensors_read_by(_floated(int8, ["f"]), ["Gemm"]) == []


@pytest.mark.parametrize("tensors", [["r1"], ["x", "f"], ["r2", "g", "r1", "x", "f"]])
def test_float_activations_gives_a_valid_sorted_model(models: dict[str, onnx.ModelProto], tensors: list[str]) -> None:
    """The result passes the full ONNX checker (topological order, types) and loads in ORT; unknown and
    repeated names are ignored and the input model is untouched by the copy."""
    int8 = models["int8"]
    model = _copy(int8)
    assert float_activations(model, [*tensors, tensors[0], "no_such_tensor", "w1"]) == tensors
    assert _is_topological(model)
    onnx.checker.check_model(model, full_check=True)
    assert _session(model).get_outputs()[0].name == "y"
    assert sorted(activation_quantizers(model)) == sorted(set(activation_quantizers(int8)) - set(tensors))
    assert float_activations(model, ["no_such_tensor"]) == []


# -- quantize.accuracy_control ------------------------------------------------------------------------------
def test_judge_and_budget() -> None:
    """Agreement and top-1 drop against FP32, unlabelled rows left out of the drop, and the budget's verdict."""
    reference = np.eye(4, dtype=np.float32)
    logits = reference.copy()
    logits[3] = [0, 2, 0, 0]  # row 3 now picks class 1
    labelled = judge(reference, logits, np.arange(4))
    assert labelled["agreement"] == 0.75 and labelled["drop_pp"] == pytest.approx(25.0)
    assert labelled["logit_rms"] == pytest.approx(np.sqrt(5 / 16))
    assert judge(reference, logits, np.full(4, -1))["drop_pp"] == 0.0
    assert judge(reference, logits, np.array([0, 1, 2, -1]))["drop_pp"] == 0.0
    assert not AccuracyBudget()
    assert AccuracyBudget(min_agreement=0.75).holds(labelled)
    assert not AccuracyBudget(min_agreement=0.8).holds(labelled)
    assert not AccuracyBudget(max_drop_pp=20.0, min_agreement=0.5).holds(labelled)


def test_met_budget_keeps_everything_int8(models: dict[str, onnx.ModelProto]) -> None:
    """A budget the int8 model already meets: the model comes back as it was, nothing float."""
    images = _images(40, seed=0)
    model, report = keep_float_until(
        models["int8"], models["fp32"], images, np.full(40, -1), AccuracyBudget(min_agreement=0.0), MACS
    )
    assert model is models["int8"]
    assert report["met"] and report["kept_float"] == []
    assert report["before"] == report["after"] and report["before"]["agreement"] < 1.0
    assert report["float_macs_before"] == report["float_macs_after"] == MACS["fc"]
    assert summary_line(report, sum(MACS.values())).startswith("accuracy control: the budget already holds")


# image draws whose smallest prefix is 1 candidate (the first try), 2 (found by doubling) and 3 (by bisection
# after 4 met it): the pooled features' group first, then the convolutions' activations
@pytest.mark.parametrize(
    ("seed", "budget_kind"), [(7, "min_agreement"), (0, "max_drop"), (9, "min_agreement"), (9, "max_drop")]
)
def test_unmet_budget_keeps_the_smallest_float_prefix(
    models: dict[str, onnx.ModelProto], seed: int, budget_kind: str
) -> None:
    """A budget int8 misses and FP32 meets (full agreement, or no top-1 drop with FP32's argmax as labels):
    the returned model meets it when rerun here, some activations are float, and floating one fewer of the
    ranked groups misses it (the smallest prefix). Float activations next to a convolution cost its MACs."""
    int8, fp32 = models["int8"], models["fp32"]
    images = _images(40, seed=seed)
    reference = _run(fp32, images)[0]
    labels = reference.argmax(axis=1)
    if budget_kind == "min_agreement":
        budget, given = AccuracyBudget(min_agreement=1.0), np.full(40, -1)
    else:
        budget, given = AccuracyBudget(max_drop_pp=0.0), labels
    assert not budget.holds(judge(reference, _run(int8, images)[0], given))  # int8 alone misses

    model, report = keep_float_until(int8, fp32, images, given, budget, MACS)
    kept, groups = report["kept_float"], report["kept_groups"]
    assert report["met"] and kept and kept == [name for group in groups for name in group]
    assert set(kept) <= set(activation_quantizers(int8)) and len(set(kept)) == len(kept)
    assert sorted(activation_quantizers(model)) == sorted(set(activation_quantizers(int8)) - set(kept))
    logits = _run(model, images)[0]
    assert (logits.argmax(axis=1) == labels).all()
    assert budget.holds(judge(reference, logits, given)) and report["after"] == judge(reference, logits, given)
    fewer = _floated(int8, [name for group in groups[:-1] for name in group]) if len(groups) > 1 else int8
    assert not budget.holds(judge(reference, _run(fewer, images)[0], given))
    if len(groups) > 1:  # the search tried that prefix itself (bisection ends between a miss and a hit)
        assert not budget.holds(report["trials"][str(len(groups) - 1)])
    assert report["float_macs_after"] == float_macs(model, MACS) >= report["float_macs_before"]
    assert (report["float_macs_after"] > report["float_macs_before"]) == (groups != [["f", "g"]])
    line = summary_line(report, sum(MACS.values()))  # what the CLI prints
    asked = "agreement >= 100%" if budget_kind == "min_agreement" else "top-1 drop <= 0 pp"
    assert line.startswith(f"accuracy control: budget ({asked}) met: ")
    assert f"{len(kept)} activations ({len(groups)} groups) kept float" in line and "% of the model)" in line
    onnx.checker.check_model(model, full_check=True)
    assert _is_topological(model)


def test_a_grid_shared_through_a_node_is_one_candidate(models: dict[str, onnx.ModelProto]) -> None:
    """Flatten's output `f` shares the pooled features' grid (`g`): keeping `f` alone float changes nothing at
    all (its values are already on that grid), so one at a time it would rank last. As a group it is one
    candidate, ranked by what floating both removes."""
    int8, fp32 = models["int8"], models["fp32"]
    assert grid_groups(int8) == [["f", "g"], ["r1"], ["r2"], ["x"]]
    images = _images(16, seed=3)
    base = _run(int8, images)[0]
    np.testing.assert_array_equal(_run(_floated(int8, ["f"]), images)[0], base)
    reference = _run(fp32, images)[0]
    ranked = dict(rank_activations(int8, images, reference))
    assert sorted(ranked) == [("f", "g"), ("r1",), ("r2",), ("x",)]
    both = float(np.mean((_run(_floated(int8, ["f", "g"]), images)[0] - reference) ** 2))
    assert ranked[("f", "g")] == pytest.approx(float(np.mean((base - reference) ** 2)) - both, rel=1e-6)
    assert ranked[("f", "g")] > 0


def test_an_impossible_budget_floats_everything_and_says_not_met(models: dict[str, onnx.ModelProto]) -> None:
    """A budget nothing can meet (int8 100 pp better than FP32): every candidate ends up float, the report
    says `met: false`, and the printed line says so instead of claiming success."""
    images = _images(40, seed=0)
    labels = _run(models["fp32"], images)[0].argmax(axis=1)
    model, report = keep_float_until(
        models["int8"], models["fp32"], images, labels, AccuracyBudget(max_drop_pp=-100.0), MACS
    )
    assert not report["met"] and sorted(report["kept_float"]) == sorted(activation_quantizers(models["int8"]))
    assert activation_quantizers(model) == {}
    assert "budget (top-1 drop <= -100 pp) NOT met even so" in summary_line(report, sum(MACS.values()))


def test_float_macs_counts_convolutions_outside_int8(models: dict[str, onnx.ModelProto]) -> None:
    """Only Conv/Gemm nodes between a DequantizeLinear and a QuantizeLinear run in int8: the float-logits
    Gemm always counts; floating r1 adds both the conv writing it and the conv reading it; the FP32 model
    counts every node."""
    int8, logits_int8 = models["int8"], models["int8_logits"]
    assert float_macs(int8, MACS) == MACS["fc"]
    assert float_macs(logits_int8, MACS) == 0
    assert float_macs(_floated(int8, ["r1"]), MACS) == MACS["conv1"] + MACS["conv2"] + MACS["fc"]
    assert float_macs(_floated(int8, ["x"]), MACS) == MACS["conv1"] + MACS["fc"]
    assert float_macs(_floated(logits_int8, ["f"]), MACS) == MACS["fc"]
    assert float_macs(models["fp32"], MACS) == sum(MACS.values())
    assert float_macs(int8, {}) == 0


# -- found by this suite and fixed: int8 logits, a refused call, a nonnegative graph input --------------------
def test_accuracy_control_with_int8_logits(models: dict[str, onnx.ModelProto]) -> None:
    """With the logits quantized (the default recipe, no float_outputs), the budget is still searched for:
    the graph output's pair cannot be floated and must be skipped, not abort the whole search."""
    images = _images(40, seed=0)
    model, report = keep_float_until(
        models["int8_logits"], models["fp32"], images, np.full(40, -1), AccuracyBudget(min_agreement=1.0)
    )
    assert report["met"] and report["kept_float"]
    reference = _run(models["fp32"], images)[0]
    assert (_run(model, images)[0].argmax(axis=1) == reference.argmax(axis=1)).all()


def test_refused_float_activations_leaves_the_model_untouched(models: dict[str, onnx.ModelProto]) -> None:
    """float_activations refuses a dequantized graph output with ValueError; it must not have half-edited the
    model (conv2 reading a `r1_float_relu` nothing produces) before raising."""
    model = _copy(models["int8_logits"])
    output_tensor = next(name for name in activation_quantizers(model) if name.startswith("y"))
    with pytest.raises(ValueError, match="graph output"):
        float_activations(model, ["r1", output_tensor])
    assert model == models["int8_logits"]


def test_float_nonnegative_graph_input(tmp_path: Path) -> None:
    """A graph input calibrated on nonnegative data gets the zero point -128; floating it must still give a
    valid model (its readers are rewired to a `x_float_relu` that is only produced after a node's output)."""
    weight = numpy_helper.from_array(np.full((2, 1, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [weight],
    )
    fp32 = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(fp32))
    calibration = [{"x": np.random.default_rng(0).uniform(0, 1, (1, 1, 2, 2)).astype(np.float32)}]
    model = _quantize(fp32, tmp_path / "conv.int8.onnx", calibration, ("Conv",))
    assert int(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "x_zero_point"))) == -128
    assert float_activations(model, ["x"]) == ["x"]
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(1).uniform(0, 1, (1, 1, 2, 2)).astype(np.float32)
    (y,) = _session(model).run(None, {"x": x})
    np.testing.assert_allclose(y, np.concatenate([0.5 * x, 0.5 * x], axis=1), atol=1e-6)


# -- wide-5x5-inputs -----------------------------------------------------------------------------------------
def _reduce_then_5x5(path: Path) -> Path:
    """x -> 1x1 Conv (4 channels) -> Relu -> 5x5 Conv -> Relu -> GlobalAveragePool -> Flatten: GoogLeNet's
    5x5 branch in miniature."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(_on_grid((4, 3, 1, 1), rng), "w_reduce"),
        numpy_helper.from_array(_on_grid((6, 4, 5, 5), rng), "w_5x5"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_reduce"], ["reduce"], name="reduce.conv"),
        helper.make_node("Relu", ["reduce"], ["reduce_relu"], name="reduce.relu"),
        helper.make_node("Conv", ["reduce_relu", "w_5x5"], ["wide"], name="wide.conv", pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["wide"], ["wide_relu"], name="wide.relu"),
        helper.make_node("GlobalAveragePool", ["wide_relu"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["logits"], name="flat"),
    ]
    graph = helper.make_graph(
        nodes,
        "five",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(IMAGE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


def _scale_of(model: onnx.ModelProto, tensor: str) -> float:
    """The scale of the QuantizeLinear that quantizes `tensor`."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits[node.input[1]])


def test_wide_5x5_inputs_widens_only_the_5x5_convs_input(tmp_path: Path) -> None:
    """The pass gives the tensor a 5x5 conv reads exactly 1.5x its calibrated range (its int8 step 1.5x
    coarser) and leaves every other activation's range as it was."""
    from quantize.calibration import ArraySource
    from quantize.onnx_int8 import quantize_onnx
    from quantize.passes import apply_passes
    from quantize.presets import ONNX_PASSES, WIDE_5X5_FACTOR, QuantizationConfig
    from quantize.ranges import inputs_of_5x5_convs

    fp32 = _reduce_then_5x5(tmp_path / "five.onnx")
    assert inputs_of_5x5_convs(onnx.load(str(fp32))) == ["reduce_relu"]
    source = ArraySource(_images(6, 0), origin="test")
    scales = {}
    for passes in ((), ("wide-5x5-inputs",)):
        config = apply_passes(QuantizationConfig.arm64(), passes, ONNX_PASSES)
        out = tmp_path / f"five.{len(passes)}.onnx"
        result = quantize_onnx(fp32, source, config, out_path=out)
        assert result.info["quantization"]["wide_5x5_inputs"] == (WIDE_5X5_FACTOR if passes else 1.0)  # recorded
        model = onnx.load(str(out))
        scales[passes] = {name: _scale_of(model, name) for name in ("x", "reduce_relu", "wide_relu")}
    widened, plain = scales[("wide-5x5-inputs",)], scales[()]
    assert widened["reduce_relu"] == pytest.approx(WIDE_5X5_FACTOR * plain["reduce_relu"], rel=1e-6)
    assert widened["x"] == plain["x"] and widened["wide_relu"] == plain["wide_relu"]
