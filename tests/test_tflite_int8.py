"""The int8 TFLite fixes of `quantize.tflite_int8`, each checked with the real converter and LiteRT on tiny graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.sessions import TfliteRunner, tflite_op_histogram
from export.errors import ToolkitError
from quantize.tflite_int8 import TfliteInt8Config, bias_shifts, quantize, rounding_error, stem_weights_to_fp16

tf = pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")

RNG = np.random.default_rng(0)
KERNEL_1 = RNG.normal(0, 0.3, (3, 3, 3, 8)).astype(np.float32)
KERNEL_2 = RNG.normal(0, 0.3, (3, 3, 8, 16)).astype(np.float32)
CALIBRATION = RNG.normal(0, 1, (8, 16, 16, 3)).astype(np.float32)


def _converter(with_pool: bool = True):
    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)], autograph=False)
    def net(x):
        y = tf.nn.relu(tf.nn.conv2d(x, KERNEL_1, 1, "SAME"))
        if with_pool:
            y = tf.nn.max_pool2d(y, 3, 2, "SAME")
        return tf.nn.conv2d(y, KERNEL_2, 1, "SAME")

    return tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)


def _kernels(path: Path) -> dict[str, np.ndarray]:
    """Constant 4-D kernels of a .tflite file, dequantized (int8 per channel, or float16/float32 as stored)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    kernels = {}
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if data is None or len(tensor.shape) != 4:
            continue
        dtype = {9: np.int8, 1: np.float16, 0: np.float32}[tensor.type]
        values = np.frombuffer(bytes(data), dtype).reshape(tensor.shape).astype(np.float64)
        if tensor.type == 9:
            values = values * np.asarray(tensor.quantization.scale).reshape(-1, 1, 1, 1)
        kernels[tensor.name.decode()] = values.transpose(1, 2, 3, 0)  # TFLite OHWI -> HWIO
    return kernels


def test_rounding_error_is_what_the_converter_rounds(tmp_path: Path) -> None:
    """W + rounding_error(W) equals the int8 kernel TFLite writes, so the bias correction corrects the real error."""
    path = tmp_path / "int8.tflite"
    path.write_bytes(quantize(_converter(), CALIBRATION, "float32", TfliteInt8Config(float_stem=False)))
    stored = sorted(_kernels(path).values(), key=lambda k: k.shape[-1])
    for kernel, got in zip((KERNEL_1, KERNEL_2), stored, strict=True):
        expected = kernel + rounding_error(kernel.astype(np.float64))
        assert np.abs(got - expected).max() <= 1e-6 * np.abs(kernel).max()
        assert np.abs(got - kernel).max() > 0  # there was rounding to correct


def test_bias_shift_is_the_mean_output_error_of_the_rounding() -> None:
    """For a 1x1 convolution the shift equals the measured mean of (Wq - W) x over the data."""
    kernel = RNG.normal(0, 0.2, (1, 1, 6, 5))
    x = RNG.uniform(0, 3, (40, 6))  # post-ReLU inputs: a non-zero mean is what biases the output
    measured = (x @ rounding_error(kernel)[0, 0]).mean(axis=0)
    shifts = bias_shifts({"layer": [kernel, x.mean(axis=0)], "skipped": [kernel, x.mean(axis=0)]}, skip=("skipped",))
    assert set(shifts) == {"layer"}
    np.testing.assert_allclose(shifts["layer"], measured, rtol=1e-5, atol=1e-7)
    fc = RNG.normal(0, 0.2, (6, 5))  # a fully connected kernel [in, out] goes through the same formula
    np.testing.assert_allclose(bias_shifts({"fc": [fc, x.mean(axis=0)]})["fc"], (x @ rounding_error(fc)).mean(0), 1e-5)


def test_float_stem_keeps_everything_up_to_the_first_max_pool_in_float(tmp_path: Path) -> None:
    stem = tmp_path / "stem.tflite"
    plain = tmp_path / "plain.tflite"
    stem.write_bytes(quantize(_converter(), CALIBRATION, "float32", TfliteInt8Config()))
    plain.write_bytes(quantize(_converter(), CALIBRATION, "float32", TfliteInt8Config(float_stem=False)))
    ops = tflite_op_histogram(stem)
    assert ops["CONV_2D[FLOAT32]"] == 1 and ops["MAX_POOL_2D[FLOAT32]"] == 1 and ops["CONV_2D[INT8]"] == 1
    assert ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 1  # the float kernel is stored as float16
    assert tflite_op_histogram(plain)["CONV_2D[INT8]"] == 2
    # Both run in LiteRT and follow the float graph; the float stem strictly more closely on these inputs.
    fp32 = tmp_path / "fp32.tflite"
    fp32.write_bytes(_converter().convert())
    x = RNG.normal(0, 1, (16, 16, 16, 3)).astype(np.float32)
    expected = TfliteRunner(fp32)(x)
    errors = {p.name: np.abs(TfliteRunner(p)(x) - expected).mean() for p in (stem, plain)}
    assert errors["stem.tflite"] < errors["plain.tflite"] < 0.1 * np.abs(expected).mean()


def test_fp16_kernels_run_in_litert_and_halve_the_float_weights(tmp_path: Path) -> None:
    fp32 = tmp_path / "fp32.tflite"
    half = tmp_path / "half.tflite"
    fp32.write_bytes(_converter().convert())
    half.write_bytes(stem_weights_to_fp16(fp32.read_bytes()))
    assert tflite_op_histogram(half)["DEQUANTIZE[FLOAT16->FLOAT32]"] == 2
    saved = fp32.stat().st_size - half.stat().st_size
    assert saved >= (KERNEL_1.size + KERNEL_2.size) * 2 - 512
    x = RNG.normal(0, 1, (4, 16, 16, 3)).astype(np.float32)
    expected, got = TfliteRunner(fp32)(x), TfliteRunner(half)(x)
    assert 0 < np.abs(got - expected).max() <= 2e-3 * np.abs(expected).max()


def test_a_graph_without_a_max_pool_has_no_stem_to_keep(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="no max pool"):
        quantize(_converter(with_pool=False), CALIBRATION, "float32", TfliteInt8Config())
    path = tmp_path / "plain.tflite"
    path.write_bytes(quantize(_converter(with_pool=False), CALIBRATION, "float32", TfliteInt8Config(float_stem=False)))
    assert tflite_op_histogram(path)["CONV_2D[INT8]"] == 2


DENSE = RNG.normal(0, 0.3, (16, 10)).astype(np.float32)


def _classifier_converter(first=KERNEL_1, second=KERNEL_2, dense=DENSE):
    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)], autograph=False)
    def net(x):
        y = tf.nn.relu(tf.nn.conv2d(x, first, 1, "SAME"))
        y = tf.nn.relu(tf.nn.conv2d(y, second, 1, "SAME"))
        return tf.matmul(tf.reduce_mean(y, axis=[1, 2]), dense)

    return tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)


def test_hybrid_classifier_keeps_int8_weights_and_float_logits(tmp_path: Path) -> None:
    """float_logits: the FC holds the same int8 per-channel weights a full-int8 model would (max|w|/127),
    takes float features and gives float logits, and follows the float graph more closely."""
    from ai_edge_litert.tools import flatbuffer_utils

    hybrid, full = tmp_path / "hybrid.tflite", tmp_path / "full.tflite"
    plain = TfliteInt8Config(float_stem=False, bias_correction=False)
    hybrid.write_bytes(quantize(_classifier_converter(), CALIBRATION, "float32", TfliteInt8Config(
        float_stem=False, bias_correction=False, float_logits=True)))  # fmt: skip
    full.write_bytes(quantize(_classifier_converter(), CALIBRATION, "float32", plain))
    ops = tflite_op_histogram(hybrid)
    assert ops["CONV_2D[INT8]"] == 2 and ops["MEAN[FLOAT32]"] == 1
    assert "FULLY_CONNECTED[INT8]" not in ops and tflite_op_histogram(full)["FULLY_CONNECTED[INT8]"] == 1
    model = flatbuffer_utils.read_model(str(hybrid))
    graph = model.subgraphs[0]
    (weights,) = [t for t in graph.tensors if tuple(t.shape) == (10, 16)]
    assert weights.type == 9  # int8
    ints = np.frombuffer(bytes(model.buffers[weights.buffer].data), np.int8).reshape(10, 16)
    scale = np.abs(DENSE.T.astype(np.float64)).max(axis=1) / 127
    np.testing.assert_allclose(weights.quantization.scale, scale, rtol=1e-6)
    np.testing.assert_array_equal(ints, np.round(DENSE.T / scale[:, None]).astype(np.int8))
    fp32 = tmp_path / "fp32.tflite"
    fp32.write_bytes(_classifier_converter().convert())
    x = RNG.normal(0, 1, (16, 16, 16, 3)).astype(np.float32)
    expected = TfliteRunner(fp32)(x)
    errors = {p.name: np.sqrt(np.mean((TfliteRunner(p)(x) - expected) ** 2)) for p in (hybrid, full)}
    assert errors["hybrid.tflite"] < errors["full.tflite"] < 0.1 * np.abs(expected).mean()


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k"), [(5, 1e-4, 0.75, 1.0), (4, 2e-2, 0.75, 2.0), (3, 1e-3, 0.6, 1.5)]
)
def test_the_tflite_lrn_computes_pytorch_s(size: int, alpha: float, beta: float, k: float) -> None:
    """The TF port's LRN (lowered to a band convolution for beta 0.75, an even window included; TF's own op
    otherwise) against PyTorch's, and the lowered ops all carry the name LiteRT's int8 recipe keeps in float."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F

    from edge_runtime.kernel_coverage import is_lowered_lrn
    from export.lrn import LRN
    from export.tflite_graph import TFGoogLeNet

    x = np.random.default_rng(size).uniform(0, 80, (2, 5, 6, 9)).astype(np.float32)  # NHWC, 9 channels
    port = SimpleNamespace(tf=tf, _const=lambda key, value: tf.constant(value, name=key))
    got = TFGoogLeNet.lrn(port, tf.constant(x), "norm", LRN(size, alpha, beta, k)).numpy()
    expected = F.local_response_norm(torch.from_numpy(x.transpose(0, 3, 1, 2)), size, alpha, beta, k).numpy()
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=2e-5, atol=1e-6)

    traced = tf.function(lambda t: TFGoogLeNet.lrn(port, t, "norm", LRN(size, alpha, beta, k)))
    graph = traced.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    ops = [op.name for op in graph.get_operations() if op.type not in ("Placeholder", "Const", "Identity", "NoOp")]
    assert all(is_lowered_lrn(name) for name in ops) == (beta == 0.75), ops


def _on_grid(kernel: np.ndarray) -> np.ndarray:
    """`kernel` (output channel last) rounded onto TFLite's per-channel int8 grid, as learned rounding leaves it."""
    scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 127
    return (np.round(kernel / scale) * scale).astype(np.float32)


def test_weights_only_stores_the_int8_kernels_and_computes_in_float(tmp_path: Path) -> None:
    """weights_only: every kernel stored as the int8 integers a full-int8 model holds, behind a DEQUANTIZE, and
    every op in float; on weights already on the grid LiteRT computes what the float graph computes."""
    kernels = _on_grid(KERNEL_1), _on_grid(KERNEL_2), _on_grid(DENSE)
    fp32, weights, full = tmp_path / "fp32.tflite", tmp_path / "weights.tflite", tmp_path / "full.tflite"
    fp32.write_bytes(_classifier_converter(*kernels).convert())
    only = TfliteInt8Config(float_stem=False, bias_correction=False, weights_only=True)
    weights.write_bytes(quantize(_classifier_converter(*kernels), CALIBRATION, "float32", only))
    full.write_bytes(quantize(_classifier_converter(*kernels), CALIBRATION, "float32", TfliteInt8Config.plain()))
    ops = tflite_op_histogram(weights)
    assert ops["DEQUANTIZE[INT8->FLOAT32]"] == 3 and ops["CONV_2D[FLOAT32]"] == 2
    assert ops["FULLY_CONNECTED[FLOAT32]"] == 1 and not any("[INT8]" in op for op in ops), ops
    stored = sorted(_kernels(weights).values(), key=lambda k: k.shape[-1])
    for kernel, got in zip(kernels[:2], stored, strict=True):
        np.testing.assert_allclose(got, kernel, rtol=0, atol=1e-6 * np.abs(kernel).max())
    # 3 of every 4 bytes saved, less the scales and DEQUANTIZE ops (float16 kernels would save under 3,100)
    assert fp32.stat().st_size - weights.stat().st_size >= 3 * sum(k.size for k in kernels) - 1000
    x = RNG.normal(0, 1, (16, 16, 16, 3)).astype(np.float32)
    expected = TfliteRunner(fp32)(x)
    error = {p.name: np.abs(TfliteRunner(p)(x) - expected).max() for p in (weights, full)}
    assert error["weights.tflite"] <= 1e-5 * np.abs(expected).max() < error["full.tflite"], error
    with pytest.raises(ToolkitError, match="keeps activations float"):
        quantize(_classifier_converter(*kernels), CALIBRATION, "int8", only)


def test_weights_only_keeps_the_float_stem_in_float16(tmp_path: Path) -> None:
    path = tmp_path / "weights.tflite"
    path.write_bytes(quantize(_converter(), CALIBRATION, "float32", TfliteInt8Config(weights_only=True)))
    ops = tflite_op_histogram(path)
    assert ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 1 and ops["DEQUANTIZE[INT8->FLOAT32]"] == 1, ops


def test_weights_only_stores_the_kernels_it_is_given_in_float16(tmp_path: Path) -> None:
    """`learned-mixed`'s float16 layers: a kernel named by its value (`kernel_digest`, TFLite's OHWI layout) is
    stored float16, the other int8; a kernel the graph does not hold is refused, not silently left int8."""
    from quantize.tflite_weights import kernel_digest

    only = TfliteInt8Config(float_stem=False, bias_correction=False, weights_only=True)
    keep = frozenset({kernel_digest(KERNEL_2.transpose(3, 0, 1, 2))})
    path = tmp_path / "mixed.tflite"
    path.write_bytes(quantize(_converter(), CALIBRATION, "float32", only, keep))
    ops = tflite_op_histogram(path)
    assert ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 1 and ops["DEQUANTIZE[INT8->FLOAT32]"] == 1, ops
    stored = {k.shape[-1]: k for k in _kernels(path).values()}
    np.testing.assert_array_equal(stored[16], KERNEL_2.astype(np.float16))
    assert not np.array_equal(stored[8], KERNEL_1)  # int8: rounded onto its grid
    np.testing.assert_allclose(stored[8], KERNEL_1, atol=np.abs(KERNEL_1).max() / 254 + 1e-7)
    with pytest.raises(ToolkitError, match="found 0 of the 1 kernels"):
        quantize(_converter(), CALIBRATION, "float32", only, frozenset({kernel_digest(KERNEL_1 + 1)}))
