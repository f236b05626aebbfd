"""The ONNX graph passes that make int8 fast: each checked against its definition on small graphs, run by
the real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import eight_bit_max_pools
from onnx import TensorProto, helper, numpy_helper

from export.onnx_lrn import LOWERED_LRN, lower_lrn, lowered_lrn_nodes
from quantize.onnx_pools import keep_max_pools_float


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimized: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _lrn_model(size: int, alpha: float, beta: float, bias: float, channels: int = 9) -> onnx.ModelProto:
    node = helper.make_node("LRN", ["x"], ["y"], name="norm", size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph(
        [node],
        "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 5, 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


LRN_SETTINGS = [(5, 1e-4, 0.75, 1.0), (3, 2e-2, 0.75, 2.0), (5, 1e-3, 0.6, 1.5)]


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "bias"), [(5, 1e-4, 0.75, 1.0), (3, 2e-2, 0.75, 2.0), (5, 1e-3, 0.6, 1.5)]
)
def test_lowered_lrn_computes_the_lrn_node(size: int, alpha: float, beta: float, bias: float) -> None:
    x = np.random.default_rng(size).normal(0, 40, (2, 9, 5, 6)).astype(np.float32)  # batch 2: shape-agnostic
    model = _lrn_model(size, alpha, beta, bias)
    reference = _run(model, {"x": x})
    assert lower_lrn(model) == ["norm"]
    onnx.checker.check_model(model, full_check=True)
    assert "LRN" not in {n.op_type for n in model.graph.node}
    assert set(lowered_lrn_nodes(model)) == {n.name for n in model.graph.node}  # every node is marked
    assert all(n.doc_string == LOWERED_LRN for n in model.graph.node)
    got = _run(model, {"x": x})
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    torch_lrn = F.local_response_norm(torch.from_numpy(x), size, alpha, beta, bias).numpy()
    np.testing.assert_allclose(got, torch_lrn, rtol=1e-5, atol=1e-6)


def test_lowering_leaves_graphs_without_lrn_alone() -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    before = model.SerializeToString()
    assert lower_lrn(model) == [] and model.SerializeToString() == before


# ----------------------------------------------------------------------------- max pools after a float op
def _qdq_pools_model(second_scale: float = 0.05) -> onnx.ModelProto:
    """x -> Sqrt (float) -> pool_a (3x3/2) -> Q -> DQ -> {pool_b (3x3/1) -> Q -> DQ -> Conv, Conv}: the
    shape of GoogLeNet's LRN -> pool2 -> inception3a, with quantized 1x1 convolutions reading both."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s_a"),
        numpy_helper.from_array(np.array(0, np.uint8), "z_a"),
        numpy_helper.from_array(np.array(second_scale, np.float32), "s_b"),
        numpy_helper.from_array(np.array(0, np.uint8), "z_b"),
        numpy_helper.from_array(rng.integers(-127, 128, (8, 8, 1, 1)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_z"),
    ]
    pool = {"kernel_shape": [3, 3], "ceil_mode": 1}
    nodes = [
        helper.make_node("Sqrt", ["x"], ["root"], name="root"),
        helper.make_node("MaxPool", ["root"], ["a"], name="pool_a", strides=[2, 2], **pool),
        helper.make_node("QuantizeLinear", ["a", "s_a", "z_a"], ["a_q"], name="a_q"),
        helper.make_node("DequantizeLinear", ["a_q", "s_a", "z_a"], ["a_dq"], name="a_dq"),
        helper.make_node("MaxPool", ["a_dq"], ["b"], name="pool_b", strides=[1, 1], pads=[1, 1, 1, 1], **pool),
        helper.make_node("QuantizeLinear", ["b", "s_b", "z_b"], ["b_q"], name="b_q"),
        helper.make_node("DequantizeLinear", ["b_q", "s_b", "z_b"], ["b_dq"], name="b_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq", axis=0),
        helper.make_node("Conv", ["b_dq", "w"], ["c1"], name="conv_b"),
        helper.make_node("Conv", ["a_dq", "w"], ["c2"], name="conv_a"),
        helper.make_node("Concat", ["c1", "c2"], ["y"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_pools_after_a_float_op_stay_float_and_compute_the_same(tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(0, 400, (1, 8, 24, 24)).astype(np.float32)
    model = _qdq_pools_model()
    before = _run(model, {"x": x}, tmp_path / "before.onnx")
    assert eight_bit_max_pools(tmp_path / "before.onnx"), "ONNX Runtime no longer makes these pools 8-bit?"
    assert keep_max_pools_float(model) == ["pool_b"]
    onnx.checker.check_model(model, full_check=True)
    after = _run(model, {"x": x}, tmp_path / "after.onnx")
    np.testing.assert_array_equal(after, before)  # exact: max commutes with quantization
    assert eight_bit_max_pools(tmp_path / "after.onnx") == []


def test_pools_pass_refuses_when_the_requantization_differs() -> None:
    model = _qdq_pools_model(second_scale=0.07)  # pool_b's output grid is not its input's: not exact
    before = model.SerializeToString()
    assert keep_max_pools_float(model) == []
    assert model.SerializeToString() == before


def test_a_pool_feeding_a_float_op_gets_its_input_grid_and_stays_exact(tmp_path: Path) -> None:
    """pool_b -> a convolution kept in float (no Q between): the pass puts pool_b's output back on its input's
    grid (exact) so that it can read the float pool like the others, and ONNX Runtime loads the result."""
    model = _qdq_pools_model()
    graph = model.graph
    for node in list(graph.node):
        if node.name in ("b_q", "b_dq"):
            graph.node.remove(node)
    next(n for n in graph.node if n.name == "conv_b").input[0] = "b"
    x = np.random.default_rng(2).uniform(0, 400, (1, 8, 24, 24)).astype(np.float32)
    unoptimized = ort.SessionOptions()
    unoptimized.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    before = ort.InferenceSession(model.SerializeToString(), unoptimized).run(None, {"x": x})[0]
    assert keep_max_pools_float(model) == ["pool_b"]
    onnx.checker.check_model(model, full_check=True)
    after = ort.InferenceSession(model.SerializeToString(), unoptimized).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)
    np.testing.assert_allclose(_run(model, {"x": x}), before, rtol=1e-5, atol=1e-4)  # optimized: loads, same


@pytest.mark.parametrize(("dtype", "zero", "relu"), [(TensorProto.UINT8, 0, True), (TensorProto.INT8, 0, False)])
def test_lrn_reads_its_dequantized_input_once(tmp_path: Path, dtype: int, zero: int, relu: bool) -> None:
    """A Relu behind the LRN's input DequantizeLinear when every dequantized value is >= 0 (zero point at the
    bottom of the type): exact, and ONNX Runtime then computes the DequantizeLinear once, not once per reader."""
    from export.onnx_lrn import share_lrn_inputs

    model = _lrn_model(5, 1e-4, 0.75, 1.0)
    lower_lrn(model)
    readers = [n for n in model.graph.node if "x" in n.input]
    for node in readers:
        node.input[:] = ["x_dq" if name == "x" else name for name in node.input]
    np_type = np.uint8 if dtype == TensorProto.UINT8 else np.int8
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(np.array(zero, np_type), "z")]
    )
    qdq = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="q"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="dq"),
    ]
    for node in reversed(qdq):
        model.graph.node.insert(0, node)
    x = np.random.default_rng(0).uniform(0, 60, (1, 9, 5, 6)).astype(np.float32)
    before = _run(model, {"x": x})
    share_lrn_inputs(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("Relu") == int(relu)
    np.testing.assert_array_equal(_run(model, {"x": x}, tmp_path / "optimized.onnx"), before)
    ran = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ran.count("DequantizeLinear") == (1 if relu else len({n.name for n in readers}) + 1)
