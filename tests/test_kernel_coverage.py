"""Kernel coverage: read from what ONNX Runtime and LiteRT really run, not from the file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import eight_bit_max_pools

from edge_runtime.kernel_coverage import coverage, summarize
from export.inspect_onnx import count_file

pytestmark = pytest.mark.slow


def _layer_macs(path: Path) -> list[list]:
    return [[layer.name, layer.macs] for layer in count_file(path).layers]


def _sample(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (1, 3, 224, 224) if path.suffix == ".onnx" else (1, 224, 224, 3)
    return (rng.standard_normal(shape) * 50).astype(np.float32)


def test_summary_counts_int8_compute_and_weights_it_by_macs() -> None:
    nodes = [
        {"name": "a", "op": "QLinearConv", "int8": True, "compute": True},
        {"name": "b", "op": "Conv", "int8": False, "compute": True},
        {"name": "q", "op": "QuantizeLinear", "int8": False, "compute": False},
    ]
    summary = summarize(nodes, [["a", 300], ["b", 100]])
    assert (summary["compute_ops"], summary["int8_compute_ops"], summary["float_compute_ops"]) == (2, 1, 1)
    assert summary["int8_mac_share"] == 0.75
    assert summary["ops"] == {"Conv": 1, "QLinearConv": 1, "QuantizeLinear": 1}
    assert summarize(nodes, [["x", 1], ["y", 2]])["int8_mac_share"] == 1 / 3  # unnamed: by graph order
    assert "int8_mac_share" not in summarize(nodes, [["x", 1]])  # neither names nor count match: no guess


def test_fp32_models_run_no_int8_kernel(bench_artifacts: dict) -> None:
    for path in bench_artifacts["models"]:
        if ".int8." in path.name or "black" in path.name:
            continue
        kernels = coverage(path, _sample(path), _layer_macs(path))
        assert kernels["compute_ops"] == 58 and kernels["int8_compute_ops"] == 0, path.name  # 57 convs + fc
        assert kernels["int8_mac_share"] == 0.0


def test_int8_onnx_coverage_is_what_onnx_runtime_fused(bench_artifacts: dict) -> None:
    """The arm64 preset (int8 activations) on x86: ONNX Runtime leaves some convolutions in float; the
    figures must say so rather than call the whole model int8."""
    path = bench_artifacts["folder"] / "googlenet.int8.onnx"
    kernels = coverage(path, _sample(path), _layer_macs(path))
    assert kernels["compute_ops"] == 58 and kernels["int8_compute_ops"] > 0
    assert kernels["int8_compute_ops"] + kernels["float_compute_ops"] == 58
    ran = kernels["ops"]
    # every op ONNX Runtime ran: the 57 convolutions and the two lowered LRNs' band convolutions (float)
    assert ran.get("QLinearConv", 0) + ran.get("Conv", 0) + ran.get("FusedConv", 0) == 57 + 2
    assert kernels["int8_compute_ops"] == ran.get("QLinearConv", 0) + ran.get("QGemm", 0)
    assert 0 < kernels["int8_mac_share"] <= 1


def test_uint8_activation_model_runs_every_convolution_int8_on_x86(
    bench_artifacts: dict, bvlc_loaded, imagenet_sample_dir: Path, tmp_path: Path
) -> None:
    from quantize.calibration import FolderSource
    from quantize.onnx_int8 import quantize_onnx
    from quantize.presets import QuantizationConfig

    if __import__("platform").machine() != "x86_64":
        pytest.skip("the u8s8 QLinearConv fusion checked here is ONNX Runtime's x86 path")
    fp32 = bench_artifacts["folder"] / "googlenet.onnx"
    calib = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=4, seed=0)
    out = quantize_onnx(fp32, calib, QuantizationConfig.x86_vnni(), out_path=tmp_path / "googlenet.int8.onnx").path
    kernels = coverage(out, _sample(out), _layer_macs(out))
    assert kernels["ops"].get("QLinearConv") == 57 and kernels["int8_compute_ops"] == 58
    assert kernels["int8_mac_share"] == 1.0
    # No max pool left on ONNX Runtime's generic 8-bit NCHW kernel (quantize/onnx_pools.py), LRN in float
    assert "LRN" not in kernels["ops"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    assert eight_bit_max_pools(tmp_path / "optimized.onnx") == []
    # the int8 sidecar says the same: what this host's ONNX Runtime ran in int8, measured at export time
    recorded = __import__("json").loads(out.with_name(out.name + ".json").read_text())["kernels"]
    assert (recorded["int8_compute_ops"], recorded["compute_ops"], recorded["int8_mac_share"]) == (58, 58, 1.0)


def test_int8_tflite_coverage_names_the_float_stem_classifier_and_xnnpack(bench_artifacts: dict) -> None:
    path = bench_artifacts["folder"] / "googlenet.int8.tflite"
    if not path.exists():
        pytest.skip("TensorFlow (the [tflite] extra) is not installed")
    kernels = coverage(path, _sample(path), _layer_macs(path))
    assert kernels["runtime"] == "litert"
    # by the recipe conv1 stays float and the classifier is hybrid (int8 weights, float features)
    assert (kernels["compute_ops"], kernels["int8_compute_ops"]) == (58, 56)
    float_share = (118_013_952 + 1024 * 1000) / 1_582_671_872
    assert kernels["int8_mac_share"] == pytest.approx(1 - float_share, abs=1e-6)
    # LRN is lowered (export/tflite_graph.py): XNNPACK takes every op, the LRNs' band convolutions included,
    # and those are LRN's work, not compute layers
    assert kernels["delegated_ops"] == kernels["total_ops"] and "LOCAL_RESPONSE_NORMALIZATION" not in kernels["ops"]
    assert kernels["ops"]["CONV_2D"] == 57 + 2
