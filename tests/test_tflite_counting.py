"""Parameters and MACs of .tflite files: GoogLeNet in fp32, int8 and fp16 against torch and ONNX, a tiny
generic graph with known answers, the CLI and unreadable files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import convert_tiny_tflite

from export.counting import BLOCK_ORDER, CountReport, count_torch
from export.errors import ToolkitError
from export.inspect_onnx import count_file, count_onnx
from export.inspect_tflite import count_tflite
from export.model import GoogLeNet

pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
REFERENCE_PARAMS = 6_998_552
REFERENCE_MACS = 1_582_671_872
MODES = ("fp32", "int8", "fp16")


@pytest.fixture(scope="module")
def googlenet_tflite(
    bvlc_loaded, imagenet_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The BVLC model converted once per mode (8 calibration photos for int8: counts ignore the ranges)."""
    from export.evaluation import load_eval_set
    from export.images import list_images
    from export.tflite_export import input_preprocess
    from quantize.tflite_quant import convert

    calib = load_eval_set(
        list_images(imagenet_sample_dir).images[:8], None, input_preprocess(bvlc_loaded.preprocess, "float32"), None
    ).inputs
    out = tmp_path_factory.mktemp("tflite_counting")
    paths = {}
    for mode in MODES:
        paths[mode] = out / f"googlenet.{mode}.tflite"
        paths[mode].write_bytes(convert(bvlc_loaded, None if mode == "fp32" else mode, "float32", calib))
    return paths


@pytest.fixture(scope="module")
def torch_report() -> CountReport:
    return count_torch(GoogLeNet())


def _rows(report: CountReport) -> list[tuple[str, int, int]]:
    return sorted((layer.name, layer.macs, layer.params) for layer in report.layers)


@pytest.mark.parametrize("mode", MODES)
def test_googlenet_counts_like_torch_and_onnx(
    mode: str, googlenet_tflite: dict[str, Path], torch_report: CountReport, bvlc_weights: Path
) -> None:
    report = count_tflite(googlenet_tflite[mode])
    assert (report.params, report.macs) == (REFERENCE_PARAMS, REFERENCE_MACS)
    onnx_report = count_onnx(bvlc_weights)
    assert (onnx_report.params, onnx_report.macs) == (report.params, report.macs)
    # Layer by layer under the torch module paths, although the converter reorders branches within a block.
    assert _rows(report) == _rows(torch_report)
    blocks = {name: (b.params, b.macs) for name, b in report.by_block().items()}
    assert blocks == {name: (b.params, b.macs) for name, b in torch_report.by_block().items()}
    assert list(blocks) == list(BLOCK_ORDER)
    first, last = report.layers[0], report.layers[-1]
    assert (first.name, first.op, first.output_shape) == ("conv1.conv", "CONV_2D", (1, 112, 112, 64))  # NHWC
    assert (last.name, last.op, last.block, last.params) == ("fc", "FULLY_CONNECTED", "linear", 1024 * 1000 + 1000)


def test_weights_are_counted_in_their_stored_dtype(googlenet_tflite: dict[str, Path]) -> None:
    """int8 weights with int32 biases, and fp16 weights reached through DEQUANTIZE, count their elements."""
    from edge_runtime.sessions import tflite_op_histogram

    int8_ops = tflite_op_histogram(googlenet_tflite["int8"])
    # conv1 is the float stem, its kernel stored as float16, as are the lowered LRNs' band kernels (not layers):
    assert int8_ops["CONV_2D[INT8]"] == 56
    assert int8_ops["CONV_2D[FLOAT32]"] == 1 + 2 and int8_ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 1 + 2
    assert count_file(googlenet_tflite["int8"]).params == REFERENCE_PARAMS
    fp16_ops = tflite_op_histogram(googlenet_tflite["fp16"])
    assert fp16_ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 2 * (58 + 2)  # every weight and bias, the LRN bands too
    assert count_file(googlenet_tflite["fp16"]).params == REFERENCE_PARAMS


def _tiny_graph(tmp_path: Path, int8: bool) -> Path:
    """conv 3x3 3->4, depthwise 3x3, dense 256->10 on a dynamic-batch 8x8x3 input."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def const(*shape: int):
        return tf.constant(rng.normal(size=shape).astype(np.float32))

    w1, b1, w2, b2, w3, b3 = const(3, 3, 3, 4), const(4), const(3, 3, 4, 1), const(4), const(256, 10), const(10)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def tiny(x):
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w1, 1, "SAME"), b1))
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.depthwise_conv2d(y, w2, [1, 1, 1, 1], "SAME"), b2))
        return tf.matmul(tf.reshape(y, [-1, 256]), w3) + b3

    return convert_tiny_tflite(tiny, tmp_path / ("tiny.int8.tflite" if int8 else "tiny.tflite"), int8)


@pytest.mark.parametrize("int8", [False, True])
def test_generic_graph_keeps_tf_names(int8: bool, tmp_path: Path) -> None:
    report = count_tflite(_tiny_graph(tmp_path, int8))
    got = [(layer.name, layer.op, layer.params, layer.macs, layer.output_shape, layer.block) for layer in report.layers]
    assert got == [
        ("Conv2D", "CONV_2D", 3 * 3 * 3 * 4 + 4, 8 * 8 * 4 * 27, (1, 8, 8, 4), "other"),
        ("depthwise", "DEPTHWISE_CONV_2D", 3 * 3 * 4 + 4, 8 * 8 * 4 * 9, (1, 8, 8, 4), "other"),
        ("MatMul", "FULLY_CONNECTED", 256 * 10 + 10, 256 * 10, (1, 10), "linear"),
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", *args]
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False)


def test_cli_macs_on_int8_tflite(googlenet_tflite: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "macs.json"
    result = _cli("macs", str(googlenet_tflite["int8"]), "--layers", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "1.583 G" in result.stdout and "inception5b.branch4.1.conv" in result.stdout
    data = json.loads(out.read_text())
    assert (data["params"], data["macs"]) == (REFERENCE_PARAMS, REFERENCE_MACS)
    assert [row["block"] for row in data["blocks"]] == list(BLOCK_ORDER)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="no such file"):
        count_tflite(tmp_path / "absent.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00\xff" * 64 + b"not a flatbuffer")
    with pytest.raises(ToolkitError, match="not a TFLite model"):
        count_file(garbage)
    result = _cli("macs", str(garbage))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {garbage}: not a TFLite model (no TFL3 file identifier)"]
