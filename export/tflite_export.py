"""PyTorch weights -> verified TFLite (`python -m export tflite`): fp32, fp16, dynamic-range, full int8.

Route: the toolkit's own `tf.nn` port of the network (`export.tflite_graph`) -> `tf.lite.TFLiteConverter`
with a `representative_dataset` fed by the toolkit's calibration sources (real photos, same
preprocessing). Every file is run in LiteRT right after conversion: fp32 against the FP32 ONNX model,
the others with the same drift report as the int8 ONNX model. TensorFlow is an optional extra.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_runtime.device_runner import file_sha256
from edge_runtime.sessions import TfliteRunner, tflite_op_histogram
from export import __version__
from export.artifacts import MODEL_IDENTITY_KEYS, publish, set_tflite_metadata, sidecar_path, staging_dir, write_json
from export.errors import ToolkitError, one_line
from export.evaluation import EvalSet, accuracy, check_logits_match, load_eval_set, measure_drift, round_floats
from export.preprocess import Preprocess
from export.sample_images import validation_photos
from export.tflite_int8 import TfliteInt8Config, bias_shifts
from export.tflite_int8 import quantize as quantize_int8
from export.ui import step
from export.weights import LoadedModel

TFLITE_TOLERANCE = 1e-3  # max |TFLite fp32 - ONNX fp32| logit error, relative to the logit range
QUANTIZE_MODES = ("int8", "fp16", "dynamic")
IO_TYPES = ("float32", "int8", "uint8")


def require_tensorflow():
    """Import TensorFlow, or a one-line error saying what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ INFO/WARNING lines
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            # absl prints "log messages before absl::InitializeLog()" and oneDNN notes at import time,
            # whatever TF_CPP_MIN_LOG_LEVEL says; they would come before any one-line error.
            with _native_output_captured():
                import tensorflow as tf
    except ImportError:
        raise ToolkitError("TFLite export needs TensorFlow: pip install -e '.[tflite]'") from None
    return tf


@dataclass
class TfliteArtifact:
    path: Path
    sidecar: Path
    info: dict


@dataclass
class TfliteExportResult:
    artifacts: list[TfliteArtifact] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def tflite_name(base: str, quantize: str | None) -> str:
    return f"{base}.tflite" if quantize is None else f"{base}.{quantize}.tflite"


def input_preprocess(preprocess: Preprocess, io: str) -> Preprocess:
    """What the .tflite input expects: NHWC in the weights' convention, or raw RGB pixels for uint8 I/O."""
    from export.tflite_graph import raw_pixel_preprocess

    return raw_pixel_preprocess(preprocess) if io == "uint8" else preprocess.with_layout("NHWC")


def _concrete_function(
    loaded: LoadedModel, io: str, calibration: np.ndarray | None = None, config: TfliteInt8Config | None = None
):
    """The TF function the converter reads; with `calibration`, int8 weight-rounding bias corrected."""
    tf = require_tensorflow()
    from export.tflite_graph import TFGoogLeNet, with_preprocessing

    model = loaded.model
    if calibration is not None and config is not None and config.rounding != "nearest":
        model = _rounded_model(loaded, io, calibration, config)
    net = TFGoogLeNet(model, global_mean=config is None or config.global_mean)
    body = with_preprocessing(net, loaded.preprocess) if io == "uint8" else net
    if calibration is not None and config is not None and config.bias_correction:
        recorded = net.record_layer_inputs(body, (calibration[i : i + 10] for i in range(0, len(calibration), 10)))
        net.bias_shift = bias_shifts(recorded, skip=("conv1",) if config.float_stem else ())
    crop = loaded.preprocess.crop
    module = tf.Module()
    module.serve = tf.function(
        body, input_signature=[tf.TensorSpec([1, crop, crop, 3], tf.float32, name="input")], autograph=False
    )
    return module.serve.get_concrete_function(), module


def _rounded_model(loaded: LoadedModel, io: str, calibration: np.ndarray, config: TfliteInt8Config):
    """The PyTorch model with its int8 layers' weights rounded onto TFLite's grid by `config.rounding`,
    fitted on the calibration images (brought back to the model's NCHW, normalised convention)."""
    from quantize.rounding import RoundingSettings, rounded_copy

    if loaded.arch != "reference":  # batch norm is folded into the kernels later, which moves them off the grid
        raise ToolkitError(f"--int8-recipe with learned rounding needs the reference network, not {loaded.arch}")
    images = calibration.astype(np.float32)
    if io == "uint8":  # raw RGB pixels: normalise as `with_preprocessing` does inside the model
        p = loaded.preprocess
        order = [2, 1, 0] if p.color == "BGR" else [0, 1, 2]
        images = (images[..., order] * np.float32(p.scale) - np.asarray(p.mean, np.float32)) / np.asarray(
            p.std, np.float32
        )
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    skip = ("conv1.conv",) if config.float_stem else ()
    model, _ = rounded_copy(loaded.model, nchw, RoundingSettings(method=config.rounding), skip)
    return model


@contextlib.contextmanager
def _native_output_captured():
    """The converter's C++ side prints progress straight to fds 1 and 2; keep it out of the report."""
    with tempfile.NamedTemporaryFile(prefix="tflite-converter-", suffix=".log", delete=False) as log:
        path = Path(log.name)
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        path.unlink(missing_ok=True)


def convert(
    loaded: LoadedModel,
    quantize: str | None,
    io: str,
    calibration: np.ndarray | None,
    int8: TfliteInt8Config | None = None,
) -> bytes:
    """One TFLite flatbuffer. `calibration`: NHWC float batches in the model input's preprocessing."""
    tf = require_tensorflow()
    if quantize == "int8" and (calibration is None or not len(calibration)):
        raise ToolkitError("int8 TFLite needs calibration images")
    if quantize != "int8" and io != "float32":
        raise ToolkitError(f"--io {io} needs --quantize int8")
    int8 = int8 or TfliteInt8Config()
    function, module = _concrete_function(loaded, io, calibration if quantize == "int8" else None, int8)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with _native_output_captured() as captured:
        try:
            if quantize == "int8":
                return quantize_int8(converter, calibration, io, int8)
            return converter.convert()
        except Exception as exc:
            detail = one_line(exc) if str(exc).strip() else captured.read_text(errors="replace")[-300:]
            raise ToolkitError(f"TFLite conversion failed ({detail.strip()})") from None


def verify_fp32(path: Path, onnx_path: Path, inputs_nchw: np.ndarray) -> dict:
    """LiteRT fp32 vs ONNX Runtime fp32 on real photos; raises past 1e-3 x logit range."""
    from edge_runtime.sessions import OnnxRunner

    expected = OnnxRunner(onnx_path)(inputs_nchw)
    got = TfliteRunner(path)(inputs_nchw.transpose(0, 2, 3, 1))
    return check_logits_match(expected, got, TFLITE_TOLERANCE, "TFLite fp32 disagrees with ONNX", path)


def _io_details(path: Path) -> dict:
    runner = TfliteRunner(path)
    detail = {}
    for key, tensor in (("input", runner.input), ("output", runner.output)):
        scale, zero_point = tensor["quantization"]
        detail[key] = {
            "name": tensor["name"],
            "shape": [int(d) for d in tensor["shape"]],
            "dtype": np.dtype(tensor["dtype"]).name,
            "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
        }
    return detail


def export_tflite(
    loaded: LoadedModel,
    onnx_path: Path,
    out_dir: Path,
    quantize: str | None = None,
    io: str = "float32",
    calibration: dict | None = None,
    eval_set: EvalSet | None = None,
    fp32_logits: np.ndarray | None = None,
    int8: TfliteInt8Config | None = None,
) -> TfliteExportResult:
    """Write `googlenet.tflite` and, with `quantize`, `googlenet.<mode>.tflite`, each verified in LiteRT.

    `calibration` = {"arrays": NHWC batches in the int8 model's input preprocessing, "describe": {...}}.
    `eval_set`/`fp32_logits`: the FP32 ONNX model's evaluation (NCHW), reused for the drift report.
    """

    if io not in IO_TYPES:
        raise ToolkitError(f"unknown --io {io!r}")
    if io != "float32" and quantize != "int8":
        raise ToolkitError(f"--io {io} needs --quantize int8")
    require_tensorflow()
    int8 = int8 or TfliteInt8Config()
    result = TfliteExportResult()
    base = onnx_path.stem
    photos = load_eval_set(validation_photos(), None, loaded.preprocess, None, "Loading validation photos")
    with staging_dir(out_dir) as stage:
        plan: list[tuple[str | None, str]] = [(None, "float32")] + ([(quantize, io)] if quantize else [])
        publishing: dict[Path, Path] = {}
        for mode, mode_io in plan:
            started = time.perf_counter()
            step(f"converting to TFLite {mode or 'fp32'}" + (f" ({mode_io} I/O)" if mode_io != "float32" else ""))
            arrays = calibration["arrays"] if (mode == "int8" and calibration) else None
            staged = stage / tflite_name(base, mode)
            staged.write_bytes(convert(loaded, mode, mode_io, arrays, int8))
            elapsed = time.perf_counter() - started
            preprocess = input_preprocess(loaded.preprocess, mode_io)
            info: dict = {
                "format": "tflite",
                "precision": mode or "fp32",
                "io": mode_io,
                **loaded.describe(),
                "preprocess": preprocess.to_dict(),
                **_io_details(staged),
                "ops": tflite_op_histogram(staged),
                "converter": "toolkit tf.nn port -> tf.lite.TFLiteConverter",
                "producer": {"toolkit": __version__, "tensorflow": require_tensorflow().__version__},
                "reference": onnx_path.name,
            }
            if mode is None:
                info["validation"] = verify_fp32(staged, onnx_path, photos.inputs)
            if mode == "int8" and calibration:
                info["calibration"] = calibration["describe"]
                info["quantization"] = int8.to_dict()
            if eval_set is not None and fp32_logits is not None and len(eval_set):
                inputs = _inputs_for(eval_set, preprocess, loaded)
                label = f"Evaluating TFLite {mode or 'fp32'}"
                info["drift"] = {
                    "eval": {"images": len(eval_set)},
                    "fp32": {"accuracy": accuracy(fp32_logits, eval_set.labels)},
                    "litert": measure_drift(TfliteRunner(staged), replace(eval_set, inputs=inputs), fp32_logits, label),
                }
            info = round_floats(info)
            info["preprocess"] = preprocess.to_dict()
            info["labels"] = loaded.labels.to_dict()
            info["artifact"] = staged.name
            set_tflite_metadata(staged, _embedded_metadata(info))
            info["size_bytes"] = staged.stat().st_size
            info["sha256"] = file_sha256(staged)
            write_json(sidecar_path(staged), info)
            final = out_dir / staged.name
            publishing[staged] = final
            publishing[sidecar_path(staged)] = sidecar_path(final)
            result.artifacts.append(TfliteArtifact(final, sidecar_path(final), info))
            result.timings[mode or "fp32"] = elapsed
        fp32_size = result.artifacts[0].info["size_bytes"]
        for artifact in result.artifacts[1:]:
            artifact.info["size_ratio"] = round(artifact.info["size_bytes"] / fp32_size, 4)
            staged = stage / artifact.path.name
            write_json(sidecar_path(staged), artifact.info)
        publish(publishing)
    return result


def _inputs_for(eval_set: EvalSet, preprocess: Preprocess, loaded: LoadedModel):
    """The eval images in this artifact's input convention (NHWC; raw pixels for uint8 I/O)."""
    if preprocess == loaded.preprocess.with_layout("NHWC"):
        return eval_set.inputs.transpose(0, 2, 3, 1)
    again = load_eval_set(eval_set.paths, None, preprocess, None, "Loading eval images (raw pixels)")
    return again.inputs


EMBEDDED_KEYS = (*MODEL_IDENTITY_KEYS, "precision", "io", "quantization")


def _embedded_metadata(info: dict) -> dict:
    """What travels inside the .tflite: how to feed it, what its outputs mean, and the FP32 baseline."""
    embedded = {k: info[k] for k in EMBEDDED_KEYS if k in info}
    embedded.update(preprocess=info["preprocess"], labels=info["labels"], producer=info["producer"])
    drift = info.get("drift") or {}
    if drift.get("fp32"):
        embedded["fp32_baseline"] = {"eval": drift["eval"], **drift["fp32"]}
    if "litert" in drift:
        embedded["accuracy"] = drift["litert"].get("accuracy")
    return embedded
