"""The ceiling models `edge_runtime.ceiling` times, written on first use into the user's cache (and into each
device bundle), not kept in the repository: one 3x3 convolution, 256 -> 256 channels on a 28x28 map (462 M
multiply-adds, a GEMM with K = 2304: large enough for each runtime's best kernel), in FP32 and int8, for ONNX
Runtime (QDQ with uint8 and with int8 activations, so each host gets the kernel it prefers) and for LiteRT.

The TFLite files are written straight as flatbuffers through LiteRT's own schema (no TensorFlow needed), the
ONNX ones with `onnx.helper`. Same bytes on every run: fixed seeds, no timestamps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.emulation_env import default_cache_dir
from edge_runtime.ceiling import CEILING_MODELS, CHANNELS, KERNEL, SIDE
from export.errors import write_error

VERSION = 2  # bump when the models change: the cache folder is named after it
X_SCALE, Y_SCALE = 2 / 127, 0.5  # the input is uniform in [-2, 2]; the outputs stay within +-14


def _weights() -> np.ndarray:
    """OIHW float weights (seeded)."""
    return np.random.default_rng(0).normal(0, 0.05, (CHANNELS, CHANNELS, KERNEL, KERNEL)).astype(np.float32)


def _int8(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-output-channel symmetric int8 grid ONNX Runtime and TFLite both use (scale max|w|/127)."""
    scale = (np.abs(weights).reshape(CHANNELS, -1).max(axis=1) / 127).astype(np.float32)
    return np.round(weights / scale[:, None, None, None]).astype(np.int8), scale


def onnx_model(activation: str | None):
    """FP32 Conv, or the QDQ pattern ONNX Runtime fuses into one QLinearConv (`activation`: uint8 or int8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = _weights()
    shape = [1, CHANNELS, SIDE, SIDE]
    conv = {"pads": [KERNEL // 2] * 4}
    if activation is None:
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **conv)]
        initializers = [numpy_helper.from_array(weights, "w")]
    else:
        dtype, zero = (np.uint8, 128) if activation == "uint8" else (np.int8, 0)
        ints, scale = _int8(weights)
        initializers = [
            numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(zero, dtype), "x_zero"),
            numpy_helper.from_array(ints, "w_int8"),
            numpy_helper.from_array(scale, "w_scale"),
            numpy_helper.from_array(np.zeros(CHANNELS, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(Y_SCALE, np.float32), "y_scale"),
            numpy_helper.from_array(np.array(zero, dtype), "y_zero"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="x_q"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="x_dq"),
            helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["w"], name="w_dq", axis=0),
            helper.make_node("Conv", ["x_dq", "w"], ["c"], name="conv", **conv),
            helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zero"], ["c_q"], name="c_q"),
            helper.make_node("DequantizeLinear", ["c_q", "y_scale", "y_zero"], ["y"], name="y_dq"),
        ]
    graph = helper.make_graph(
        nodes,
        "ceiling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    model.producer_name = "googlenet-edge ceiling"
    onnx.checker.check_model(model, full_check=True)
    return model


def tflite_model(int8: bool) -> bytes:
    """One CONV_2D (NHWC, SAME), float; or int8 with per-channel weights between QUANTIZE and DEQUANTIZE."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = schema.ModelT()
    model.version, model.description = 3, b"googlenet-edge ceiling"
    model.buffers = [schema.BufferT()]  # buffer 0: the empty one every model starts with
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = [], []

    def tensor(name: str, shape, kind, data: np.ndarray | None = None, quant=None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), kind, 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(s) for s in quant[0]], [int(z) for z in quant[1]]
            q.quantizedDimension = quant[2] if len(quant) > 2 else 0
            t.quantization = q
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    codes: list[int] = []

    def op(code: int, inputs: list[int], outputs: list[int], options=None, options_type: int = 0) -> None:
        if code not in codes:
            codes.append(code)
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), inputs, outputs
        if options is not None:
            o.builtinOptionsType, o.builtinOptions = options_type, options
        graph.operators.append(o)

    ops, types = schema.BuiltinOperator, schema.TensorType
    nhwc = (1, SIDE, SIDE, CHANNELS)
    weights = _weights()
    options = schema.Conv2DOptionsT()
    options.padding, options.strideW, options.strideH = schema.Padding.SAME, 1, 1
    options.dilationWFactor = options.dilationHFactor = 1
    x = tensor("x", nhwc, types.FLOAT32)
    y = tensor("y", nhwc, types.FLOAT32)
    if not int8:
        w = tensor("w", (CHANNELS, KERNEL, KERNEL, CHANNELS), types.FLOAT32, weights.transpose(0, 2, 3, 1))
        b = tensor("b", (CHANNELS,), types.FLOAT32, np.zeros(CHANNELS, np.float32))
        op(ops.CONV_2D, [x, w, b], [y], options, schema.BuiltinOptions.Conv2DOptions)
    else:
        ints, scale = _int8(weights)
        x_q = tensor("x_q", nhwc, types.INT8, quant=([X_SCALE], [0]))
        w = tensor("w", (CHANNELS, KERNEL, KERNEL, CHANNELS), types.INT8, ints.transpose(0, 2, 3, 1),
                   (scale, [0] * CHANNELS, 0))  # fmt: skip
        b = tensor("b", (CHANNELS,), types.INT32, np.zeros(CHANNELS, np.int32), (scale * X_SCALE, [0] * CHANNELS, 0))
        y_q = tensor("y_q", nhwc, types.INT8, quant=([Y_SCALE], [0]))
        op(ops.QUANTIZE, [x], [x_q])
        op(ops.CONV_2D, [x_q, w, b], [y_q], options, schema.BuiltinOptions.Conv2DOptions)
        op(ops.DEQUANTIZE, [y_q], [y])
    graph.inputs, graph.outputs, graph.name = [x], [y], b"ceiling"
    model.subgraphs = [graph]
    model.operatorCodes = []
    for code in codes:
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 3 if int8 else 1
        model.operatorCodes.append(c)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def write_ceiling_models(folder: Path) -> Path:
    """Write the five files `edge_runtime.ceiling.CEILING_MODELS` names into `folder`."""

    folder.mkdir(parents=True, exist_ok=True)
    writers = {
        "ceiling.onnx": lambda: onnx_model(None).SerializeToString(),
        "ceiling.u8s8.onnx": lambda: onnx_model("uint8").SerializeToString(),
        "ceiling.s8s8.onnx": lambda: onnx_model("int8").SerializeToString(),
        "ceiling.tflite": lambda: tflite_model(int8=False),
        "ceiling.int8.tflite": lambda: tflite_model(int8=True),
    }
    assert set(writers) == {name for names in CEILING_MODELS.values() for name in names}
    for name, write in writers.items():
        (folder / name).write_bytes(write())
    return folder


def ceiling_models_dir() -> Path:
    """The cached ceiling models, written once (staged, then renamed into place, so a crash leaves nothing)."""
    cache = default_cache_dir()  # the emulation environment's too: $GOOGLENET_EDGE_CACHE, ~/.cache/googlenet-edge
    final = cache / f"ceiling-v{VERSION}"
    if final.is_dir():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".ceiling-", dir=cache))
        try:
            write_ceiling_models(stage)
            os.replace(stage, final)
        except OSError:
            if final.is_dir():  # another process won the race
                return final
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        raise write_error(exc, final) from None
    return final
