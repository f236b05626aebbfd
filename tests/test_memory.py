"""Activation memory from the graph: exact liveness arithmetic on hand-built graphs, GoogLeNet in ONNX
(fp32 and QDQ int8) and TFLite (fp32, int8), and one-line errors for what cannot be sized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import convert_tiny_tflite
from onnx import TensorProto, helper, numpy_helper

from export.errors import ToolkitError
from export.memory import activation_bytes

FLOAT, UINT8 = TensorProto.FLOAT, TensorProto.UINT8
CONV1_OUT = 64 * 112 * 112 * 4  # GoogLeNet's largest activation: 3.2 MB of float32
IMAGE = 3 * 224 * 224 * 4


def _save(tmp_path: Path, nodes: list, inputs: list, outputs: list, inits: list, name: str = "hand.onnx") -> Path:
    graph = helper.make_graph(nodes, "hand", inputs, outputs, inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _hand_graph(tmp_path: Path, batch: int | str = 1) -> Path:
    """x f32[1,16] -> relu a -> (relu: never read) -> quantize q u8[1,16] -> concat u8[1,32] -> dequantize
    f32[1,32] -> concat with x f32[1,48] -> + w, where w is the dequantized [1,48] weight (a constant)."""
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"]),  # 0: constant-only, folded at load
        helper.make_node("Relu", ["x"], ["a"]),  # 1
        helper.make_node("Relu", ["a"], ["dead"]),  # 2: written, never read
        helper.make_node("QuantizeLinear", ["a", "s", "zp"], ["q"]),  # 3
        helper.make_node("Concat", ["q", "q"], ["qq"], axis=1),  # 4
        helper.make_node("DequantizeLinear", ["qq", "s", "zp"], ["d"]),  # 5
        helper.make_node("Concat", ["d", "x"], ["c"], axis=1),  # 6
        helper.make_node("Add", ["c", "w"], ["y"]),  # 7
    ]
    inits = [
        numpy_helper.from_array(np.zeros((1, 48), np.uint8), "wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
    ]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [batch, 16])]
    outputs = [helper.make_tensor_value_info("y", FLOAT, None)]
    return _save(tmp_path, nodes, inputs, outputs, inits)


def test_hand_built_onnx_liveness_is_exact(tmp_path: Path) -> None:
    """Live bytes per node: 1: x64+a64=128, 2: +dead64=192, 3: x+a+q16=144, 4: x+q+qq32=112,
    5: x+qq+d128=224, 6: x+d+c192=384, 7: c+y192=384 (w, 192 bytes, is a weight: not counted)."""
    result = activation_bytes(_hand_graph(tmp_path))
    assert result["activation_bytes"] == 384
    assert result["peak_op_index"] == 6 and result["peak_op"].startswith("c (Concat")  # the first op at the peak
    assert (result["largest_tensor_bytes"], result["largest_tensor"]) == (192, "c")
    assert (result["tensors"], result["ops"], result["order"], result["format"]) == (8, 7, "graph", "onnx")


def test_symbolic_batch_counts_one_image(tmp_path: Path) -> None:
    assert activation_bytes(_hand_graph(tmp_path, batch="N"))["activation_bytes"] == 384


def test_unknown_sizes_are_one_line_errors(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [1, "H"])
    y = helper.make_tensor_value_info("y", FLOAT, None)
    dynamic = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [x], [y], [], "dynamic.onnx")
    with pytest.raises(ToolkitError, match="dynamic size") as caught:
        activation_bytes(dynamic)
    assert str(dynamic) in str(caught.value) and "\n" not in str(caught.value)

    mystery = helper.make_node("Mystery", ["x"], ["m"], domain="example.custom")
    graph = helper.make_graph(
        [mystery, helper.make_node("Relu", ["m"], ["y"])], "g", [helper.make_tensor_value_info("x", FLOAT, [1, 4])], [y]
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("example.custom", 1)]
    unknown = tmp_path / "unknown.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), unknown)
    with pytest.raises(ToolkitError, match=r"unknown\.onnx: shape or dtype of tensor 'm' is unknown"):
        activation_bytes(unknown)


@pytest.mark.parametrize("name", ["garbage.onnx", "garbage.tflite", "notes.txt"])
def test_not_a_model(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\xff" * 64 + b"not a model")
    with pytest.raises(ToolkitError, match=r"not an? (ONNX|TFLite) model") as caught:
        activation_bytes(path)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(ToolkitError, match="no such file"):
        activation_bytes(tmp_path / "absent.tflite")


# ---------------------------------------------------------------------------------- GoogLeNet ONNX


@pytest.fixture(scope="module")
def bvlc_qdq(bvlc_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The BVLC model as QDQ int8 (uint8 activations), calibrated on one zero image: sizes ignore the ranges."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    name = onnx.load(bvlc_weights, load_external_data=False).graph.input[0].name
    batches = iter([{name: np.zeros((1, 3, 224, 224), np.float32)}])

    class Reader:
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    out = tmp_path_factory.mktemp("memory_onnx") / "bvlc.qdq.onnx"
    quantization.quantize_static(
        str(bvlc_weights), str(out), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True
    )
    return out


@pytest.mark.slow
def test_googlenet_onnx_fp32_and_int8(bvlc_weights: Path, bvlc_qdq: Path) -> None:
    fp32 = activation_bytes(bvlc_weights)
    # conv1's output and its ReLU's output (a separate node in ONNX) are alive together.
    assert fp32["activation_bytes"] == 2 * CONV1_OUT
    assert fp32["largest_tensor_bytes"] == CONV1_OUT
    assert "Relu" in fp32["peak_op"]
    assert CONV1_OUT + IMAGE <= fp32["activation_bytes"] <= 10_000_000
    int8 = activation_bytes(bvlc_qdq)
    assert int8["activation_bytes"] < fp32["activation_bytes"]
    # The peak moves to LRN, which stays float between dequantize and quantize: its input and output.
    assert int8["activation_bytes"] == 2 * 56 * 56 * 192 * 4
    assert "LRN" in int8["peak_op"]


# -------------------------------------------------------------------------------- GoogLeNet TFLite


@pytest.fixture(scope="module")
def googlenet_tflite(bvlc_loaded, imagenet_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")
    from export.evaluation import load_eval_set
    from export.images import list_images
    from export.tflite_export import input_preprocess
    from quantize.tflite_quant import convert

    calib = load_eval_set(
        list_images(imagenet_sample_dir).images[:8], None, input_preprocess(bvlc_loaded.preprocess, "float32"), None
    ).inputs
    out = tmp_path_factory.mktemp("memory_tflite")
    paths = {"fp32": out / "googlenet.tflite", "int8": out / "googlenet.int8.tflite"}
    paths["fp32"].write_bytes(convert(bvlc_loaded, None, "float32", None))
    paths["int8"].write_bytes(convert(bvlc_loaded, "int8", "float32", calib))
    return paths


@pytest.mark.slow
def test_googlenet_tflite_fp32_and_int8(googlenet_tflite: dict) -> None:
    fp32 = activation_bytes(googlenet_tflite["fp32"])
    assert fp32["format"] == "tflite"
    assert fp32["largest_tensor_bytes"] == CONV1_OUT
    assert CONV1_OUT + 3 * 230 * 230 * 4 <= fp32["activation_bytes"] <= 10_000_000  # conv1 reads the padded image
    # The peak is the second LRN's: lowered (export/tflite_graph.py), four 56x56x192 float tensors live at once
    lrn2 = 4 * 56 * 56 * 192 * 4
    assert fp32["activation_bytes"] == lrn2 and "norm2/lrn_" in fp32["peak_op"]
    int8 = activation_bytes(googlenet_tflite["int8"])
    # The int8 recipe keeps the stem in float, so conv1's float output is still the largest tensor...
    assert int8["largest_tensor_bytes"] == CONV1_OUT
    # ...and LRN has no int8 kernel, so its float island keeps the peak exactly where fp32 has it.
    assert int8["activation_bytes"] == lrn2 and "norm2/lrn_" in int8["peak_op"]


def _tiny_tflite(tmp_path: Path, int8: bool) -> Path:
    """conv 3x3 3->4, depthwise 3x3 and a spatial mean on an 8x8x3 input; int8 end to end (float I/O)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w1, w2 = (tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in ((3, 3, 3, 4), (3, 3, 4, 1)))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def tiny(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        y = tf.nn.relu(tf.nn.depthwise_conv2d(y, w2, [1, 1, 1, 1], "SAME"))
        return tf.reduce_mean(y, axis=[1, 2])

    return convert_tiny_tflite(tiny, tmp_path / ("tiny.int8.tflite" if int8 else "tiny.tflite"), int8)


@pytest.mark.slow
def test_tiny_tflite_exact(tmp_path: Path) -> None:
    """fp32: input 768 + conv out 1024, then conv out + depthwise out 2 x 1024 (the peak), then 1024 + 16.
    int8: QUANTIZE reads the float input (768) and writes 192 (the peak); then 192 + 256, 256 + 256, 256 + 4
    and the final DEQUANTIZE 4 + 16."""
    pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")
    fp32 = activation_bytes(_tiny_tflite(tmp_path, int8=False))
    assert (fp32["activation_bytes"], fp32["peak_op_index"], fp32["largest_tensor_bytes"]) == (2048, 1, 1024)
    int8 = activation_bytes(_tiny_tflite(tmp_path, int8=True))
    assert (int8["activation_bytes"], int8["peak_op_index"], int8["largest_tensor_bytes"]) == (960, 0, 768)
    assert int8["peak_op"].startswith("QUANTIZE #0")
