"""Write the ceiling models that `edge_runtime.ceiling` times: one 1x1 convolution, 256 -> 256 channels on a
28x28 map (51.4 M multiply-adds, the shape of GoogLeNet's inception 4 layers), in FP32 and int8 for ONNX
Runtime (QDQ with uint8 and with int8 activations, so each host gets the kernel it prefers) and for LiteRT.

The files are committed (edge_runtime/ceiling/, ~0.7 MB) so that the device bundle and `benchmarks run`
need neither onnx nor TensorFlow to measure a ceiling. Rebuild with:
    python -m studies.build_ceiling_models edge_runtime/ceiling
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CHANNELS, SIDE = 256, 28


def _weights() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.05, (CHANNELS, CHANNELS, 1, 1)).astype(np.float32)


def onnx_model(activation: str | None):
    """FP32 Conv, or the QDQ pattern ONNX Runtime fuses into one QLinearConv (`activation`: uint8 or int8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = _weights()
    shape = [1, CHANNELS, SIDE, SIDE]
    if activation is None:
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
        initializers = [numpy_helper.from_array(weights, "w")]
    else:
        dtype, zero = (np.uint8, 128) if activation == "uint8" else (np.int8, 0)
        scale = np.abs(weights).max(axis=(1, 2, 3)) / 127
        initializers = [
            numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(zero, dtype), "x_zero"),
            numpy_helper.from_array(np.round(weights / scale[:, None, None, None]).astype(np.int8), "w_int8"),
            numpy_helper.from_array(scale.astype(np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(CHANNELS, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
            numpy_helper.from_array(np.array(zero, dtype), "y_zero"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="x_q"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="x_dq"),
            helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["w"], name="w_dq", axis=0),
            helper.make_node("Conv", ["x_dq", "w"], ["c"], name="conv"),
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
    import tensorflow as tf

    kernel = _weights()[:, :, 0, 0].T.reshape(1, 1, CHANNELS, CHANNELS)

    @tf.function(input_signature=[tf.TensorSpec([1, SIDE, SIDE, CHANNELS], tf.float32)])
    def conv(x):
        return tf.nn.conv2d(x, kernel, 1, "VALID")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()], conv)
    if int8:
        rng = np.random.default_rng(1)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.uniform(-2, 2, (1, SIDE, SIDE, CHANNELS)).astype(np.float32)] for _ in range(4)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    import onnx

    args.out.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model(None), str(args.out / "ceiling.onnx"))
    onnx.save(onnx_model("uint8"), str(args.out / "ceiling.u8s8.onnx"))
    onnx.save(onnx_model("int8"), str(args.out / "ceiling.s8s8.onnx"))
    (args.out / "ceiling.tflite").write_bytes(tflite_model(int8=False))
    (args.out / "ceiling.int8.tflite").write_bytes(tflite_model(int8=True))
    print(f"wrote 5 ceiling models to {args.out}")


if __name__ == "__main__":
    main()
