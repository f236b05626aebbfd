"""`python -m export tflite`: real conversions (once per session), run in the real LiteRT interpreter."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.metrics import file_sha256
from edge_runtime.sessions import OnnxRunner, TfliteRunner, tflite_op_histogram
from export.errors import ToolkitError
from export.evaluation import accuracy, fidelity, load_eval_set
from export.images import list_images

pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")

pytestmark = pytest.mark.slow

BLOCK_NETWORK = """
import socket

def _refuse(*args, **kwargs):
    raise OSError("network blocked by the test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
"""


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A child environment whose every socket connection fails (a sitecustomize on PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("offline")
    (folder / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_NETWORK))
    return {"PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def tflite_run(run_export_cli, bvlc_weights: Path, imagenet_sample_dir: Path, offline_env, tmp_path_factory):
    """The issue's acceptance command, offline: fp32 + int8 from 100 calibration photos."""
    out = tmp_path_factory.mktemp("tflite")
    done = run_export_cli(
        "tflite", "--weights", bvlc_weights, "--quantize", "int8", "--calib", imagenet_sample_dir,
        "--calib-size", "100", "--out", out, env=offline_env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_writes_fp32_and_int8_with_sidecars(tflite_run) -> None:
    out, done = tflite_run
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "googlenet.int8.tflite",
        "googlenet.int8.tflite.json",
        "googlenet.onnx",
        "googlenet.onnx.json",
        "googlenet.tflite",
        "googlenet.tflite.json",
    ]
    assert "TFLite (run in LiteRT)" in done.stdout
    assert "Traceback" not in done.stderr


def test_fp32_matches_onnx_in_litert(tflite_run, imagenet_sample_dir: Path) -> None:
    out, _ = tflite_run
    info = json.loads((out / "googlenet.tflite.json").read_text())
    assert info["input"]["shape"] == [1, 224, 224, 3] and info["preprocess"]["layout"] == "NHWC"
    assert info["validation"]["passed"]
    # Independently of the sidecar: 12 real photos through LiteRT and ONNX Runtime.
    from export.preprocess import Preprocess

    pre = Preprocess.from_dict(json.loads((out / "googlenet.onnx.json").read_text())["preprocess"])
    photos = load_eval_set(list_images(imagenet_sample_dir).images[:12], None, pre, None)
    expected = OnnxRunner(out / "googlenet.onnx")(photos.inputs)
    got = TfliteRunner(out / "googlenet.tflite")(photos.inputs.transpose(0, 2, 3, 1))
    assert np.abs(expected - got).max() <= 1e-3 * (expected.max() - expected.min())
    assert (expected.argmax(1) == got.argmax(1)).all()


def test_int8_drift_and_size(tflite_run) -> None:
    out, _ = tflite_run
    info = json.loads((out / "googlenet.int8.tflite.json").read_text())
    drift = info["drift"]
    assert drift["eval"]["images"] == 400
    litert = drift["litert"]
    assert set(litert["fidelity"]) >= {"top1_agreement", "top5_overlap", "kl_mean", "cosine_mean"}
    assert litert["top1_drop_pp"] <= 0.5
    # plain TFLite int8 gives 97.5% here (docs/quantization-studies.md)
    assert litert["fidelity"]["top1_agreement"] >= 0.98
    # 26.1%: int8 weights, the float stem's fp16 conv1 and the lowered LRNs' fp16 band weights (82 KB)
    assert info["size_ratio"] <= 0.265
    assert info["calibration"]["images"] == 100
    # what LiteRT runs here, as the ONNX int8 sidecar says it: by the recipe conv1 is float and the classifier
    # hybrid (int8 weights, float features and logits); XNNPACK takes every op
    kernels = info["kernels"]
    assert (kernels["runtime"], kernels["int8_compute_ops"], kernels["compute_ops"]) == ("litert", 56, 58)
    assert kernels["delegated_ops"] == kernels["total_ops"] and 0.9 < kernels["int8_mac_share"] < 1
    recipe = info["quantization"]
    assert (recipe["float_stem"], recipe["bias_correction"], recipe["global_mean"], recipe["float_logits"]) == (
        True, True, True, True,
    )  # fmt: skip
    # the default recipe is `learned`: the weights GPTQ-rounded onto TFLite's grid
    assert recipe["passes"] == [
        "float-stem",
        "bias-correction",
        "pool-own-grid",
        "gptq-rounding",
        "hybrid-classifier",
        "wide-5x5-inputs",
    ]
    assert recipe["rounding"] == "gptq"
    assert "conv1 (float16 weights)" in recipe["kept_float"]
    assert "fc output (hybrid: int8 weights, float logits)" in recipe["kept_float"]


def test_metadata_travels_inside_the_tflite_files(tflite_run) -> None:
    """Preprocessing, labels and the FP32 baseline are embedded, equal to the sidecar, and LiteRT still loads."""
    from export.artifacts import read_tflite_metadata
    from export.preprocess import Preprocess

    out, _ = tflite_run
    for name in ("googlenet.tflite", "googlenet.int8.tflite"):
        embedded = read_tflite_metadata(out / name)
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert embedded["preprocess"] == sidecar["preprocess"]
        assert Preprocess.from_dict(embedded["preprocess"]).layout == "NHWC"
        assert len(embedded["labels"]["names"]) == 1000 and embedded["labels"] == sidecar["labels"]
        assert embedded["precision"] == sidecar["precision"] and embedded["weights_sha256"]
        assert embedded["fp32_baseline"]["accuracy"] == sidecar["drift"]["fp32"]["accuracy"]
        assert embedded["fp32_baseline"]["eval"]["images"] == 400
        assert sidecar["sha256"] == file_sha256(out / name)
    int8 = read_tflite_metadata(out / "googlenet.int8.tflite")
    assert int8["accuracy"]["top1"] > 0.7 and int8["quantization"]["float_stem"] is True


def test_int8_keeps_only_the_stem_lrn_and_classifier_in_float(tflite_run) -> None:
    out, _ = tflite_run
    ops = tflite_op_histogram(out / "googlenet.int8.tflite")
    float_compute = {op: n for op, n in ops.items() if op.endswith("[FLOAT32]")}
    # The stem (pad, conv1, pool1) and the two lowered LRNs (a band convolution each, then elementwise ops)
    stem = {"PAD[FLOAT32]": 1, "MAX_POOL_2D[FLOAT32]": 1}
    assert {op: float_compute.pop(op, 0) for op in stem} == stem
    assert float_compute.pop("CONV_2D[FLOAT32]") == 1 + 2
    # the hybrid classifier: the pool and the FC read float features (its weights stay int8: test_tflite_int8.py)
    classifier = {"MEAN[FLOAT32]": 1, "FULLY_CONNECTED[FLOAT32]": 1}
    assert {op: float_compute.pop(op, 0) for op in classifier} == classifier
    assert set(float_compute) <= {f"{op}[FLOAT32]" for op in ("MUL", "ADD", "SQRT", "RSQRT", "DIV")}, float_compute
    assert ops["CONV_2D[INT8]"] == 56 and "FULLY_CONNECTED[INT8]" not in ops and "MEAN[INT8]" not in ops
    assert ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 3  # conv1's and the two LRN bands' kernels, stored as float16
    assert not any(op.startswith("AVERAGE_POOL_2D") for op in ops)
    assert json.loads((out / "googlenet.int8.tflite.json").read_text())["ops"] == ops


def test_uint8_io_takes_raw_camera_pixels(bvlc_loaded, imagenet_sample_dir: Path, tmp_path: Path) -> None:
    """`--io uint8`: scale 1, zero point 0, RGB 0-255 in; predictions follow the FP32 model."""
    from export.tflite_export import input_preprocess
    from quantize.tflite_quant import convert

    raw = input_preprocess(bvlc_loaded.preprocess, "uint8")
    images = list_images(imagenet_sample_dir).images
    calib = load_eval_set(images[:16], None, raw, None).inputs
    path = tmp_path / "u8.tflite"
    path.write_bytes(convert(bvlc_loaded, "int8", "uint8", calib))
    runner = TfliteRunner(path)
    assert np.dtype(runner.input["dtype"]) == np.uint8
    assert runner.input["quantization"] == (1.0, 0)
    test = images[100:140]
    pixels = load_eval_set(test, None, raw, None).inputs
    assert pixels.min() >= 0 and pixels.max() <= 255 and np.array_equal(pixels, np.round(pixels))
    got = runner(pixels)
    fp32 = load_eval_set(test, None, bvlc_loaded.preprocess, None).inputs
    import torch

    with torch.no_grad():
        expected = bvlc_loaded.model(torch.from_numpy(fp32)).numpy()
    assert fidelity(expected, got)["top1_agreement"] >= 0.85
    labels = np.array([2 * i for i in range(100, 140)])  # imagenet-sample holds every even class, in order
    assert accuracy(got, labels)["top1"] >= accuracy(expected, labels)["top1"] - 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--int8-recipe", "plain"), "--int8-recipe only applies with --quantize int8"),
        (("--quantize", "int8", "--int8-recipe", "best"), "invalid choice: 'best'"),
    ],
)
def test_int8_recipe_misuse_is_a_usage_error(run_export_cli, tmp_path: Path, args, message: str) -> None:
    done = run_export_cli("tflite", *args, "--out", tmp_path / "o")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_io_without_int8_is_a_usage_error(run_export_cli, tmp_path: Path) -> None:
    done = run_export_cli("tflite", "--io", "uint8", "--out", tmp_path / "o")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --io uint8 needs --quantize int8"]
    assert not (tmp_path / "o").exists()


def test_missing_tensorflow_is_one_line(run_export_cli, tmp_path: Path) -> None:
    """Without the extra installed: one line naming what to install, exit 2."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTF:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorflow' or name.startswith('tensorflow.'):\n"
        "            raise ImportError('hidden by the test')\n"
        "sys.meta_path.insert(0, _NoTF())\n"
    )
    done = run_export_cli("tflite", "--no-eval", "--out", tmp_path / "o", env={"PYTHONPATH": str(hide)})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["error: TFLite export needs TensorFlow: pip install -e '.[tflite]'"]
    assert not (tmp_path / "o").exists()


def test_convert_refuses_int8_without_calibration(bvlc_loaded) -> None:
    from quantize.tflite_quant import convert

    with pytest.raises(ToolkitError, match="calibration"):
        convert(bvlc_loaded, "int8", "float32", None)


@pytest.mark.parametrize("mode", ["fp16", "dynamic"])
def test_fp16_and_dynamic_follow_fp32(mode: str, bvlc_loaded, imagenet_sample_dir: Path, tmp_path: Path) -> None:
    from quantize.tflite_quant import convert

    path = tmp_path / f"{mode}.tflite"
    path.write_bytes(convert(bvlc_loaded, mode, "float32", None))
    photos = load_eval_set(list_images(imagenet_sample_dir).images[200:220], None, bvlc_loaded.preprocess, None)
    import torch

    with torch.no_grad():
        expected = bvlc_loaded.model(torch.from_numpy(photos.inputs)).numpy()
    got = TfliteRunner(path)(photos.inputs.transpose(0, 2, 3, 1))
    assert fidelity(expected, got)["top1_agreement"] >= 0.9
    ops = tflite_op_histogram(path)
    if mode == "fp16":  # fp16 weights, dequantized once at load: half the file
        assert any(op.startswith("DEQUANTIZE[FLOAT16") for op in ops)
        assert path.stat().st_size < 0.55 * 28e6
    else:  # int8 weights, float activations
        assert path.stat().st_size < 0.27 * 28e6
