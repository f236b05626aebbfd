"""PyTorch weights -> verified FP32 TFLite (`python -m export tflite`), and what every .tflite shares.

Route: the toolkit's own `tf.nn` port of the network (`export.tflite_graph`) -> `tf.lite.TFLiteConverter`.
The file is run in LiteRT right after conversion against the FP32 ONNX model. The quantized variants
(int8, fp16, dynamic-range) are made by `quantize.tflite_quant` with the helpers here, so every .tflite
gets the same sidecar and embedded metadata. TensorFlow is an optional extra.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_runtime import kernel_coverage
from edge_runtime.formats import BY_NAME
from edge_runtime.sessions import TfliteRunner, tflite_op_histogram
from export import __version__
from export.artifact_record import UNSET, ArtifactRecord, write_sidecar
from export.artifacts import MODEL_IDENTITY_KEYS, set_tflite_metadata, sidecar_path
from export.errors import ToolkitError, one_line
from export.evaluation import EvalSet, accuracy, check_logits_match, load_eval_set, measure_drift
from export.preprocess import Preprocess
from export.sample_images import validation_photos
from export.ui import step
from export.weights import LoadedModel

TFLITE_TOLERANCE = BY_NAME["tflite"].tolerance  # max |TFLite fp32 - ONNX fp32| logit error, relative to the logit range
QUANTIZE_MODES = ("int8", "fp16", "dynamic")


def require_tensorflow():
    """Import TensorFlow, or a one-line error saying what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ INFO/WARNING lines
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            # absl prints "log messages before absl::InitializeLog()" and oneDNN notes at import time,
            # whatever TF_CPP_MIN_LOG_LEVEL says; they would come before any one-line error.
            with native_output_captured():
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
    suffix = BY_NAME["tflite"].suffix
    return f"{base}{suffix}" if quantize is None else f"{base}.{quantize}{suffix}"


def input_preprocess(preprocess: Preprocess, io: str) -> Preprocess:
    """What the .tflite input expects: NHWC in the weights' convention, or raw RGB pixels for uint8 I/O."""
    from export.tflite_graph import raw_pixel_preprocess

    return raw_pixel_preprocess(preprocess) if io == "uint8" else preprocess.with_layout("NHWC")


def tf_network(loaded: LoadedModel, io: str, model=None, global_mean: bool = True):
    """The `tf.nn` port of `model` (default: the loaded one) and the body the converter will trace: the
    network itself, or with uint8 I/O the network behind the pixel normalisation."""
    from export.tflite_graph import TFGoogLeNet, with_preprocessing

    net = TFGoogLeNet(loaded.model if model is None else model, global_mean=global_mean)
    return net, (with_preprocessing(net, loaded.preprocess) if io == "uint8" else net)


def serving_function(loaded: LoadedModel, body):
    """The TF concrete function the converter reads (one NHWC image), with the module that owns it."""
    tf = require_tensorflow()
    crop = loaded.preprocess.crop
    module = tf.Module()
    module.serve = tf.function(
        body, input_signature=[tf.TensorSpec([1, crop, crop, 3], tf.float32, name="input")], autograph=False
    )
    return module.serve.get_concrete_function(), module


@contextlib.contextmanager
def native_output_captured() -> Iterator[Path]:
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


def run_converter(convert: Callable[[], bytes]) -> bytes:
    """`convert()` with the converter's native output kept out of the report; its failure as one line."""
    with native_output_captured() as captured:
        try:
            return convert()
        except Exception as exc:
            detail = one_line(exc) if str(exc).strip() else captured.read_text(errors="replace")[-300:]
            raise ToolkitError(f"TFLite conversion failed ({detail.strip()})") from None


def convert_fp32(loaded: LoadedModel, global_mean: bool = True) -> bytes:
    """The FP32 TFLite flatbuffer (float32 I/O). `global_mean`: the 7x7 average pool as MEAN (see
    `export.tflite_graph`); the int8 recipe chooses it, and the FP32 file is built the same way."""
    tf = require_tensorflow()
    _, body = tf_network(loaded, "float32", global_mean=global_mean)
    function, module = serving_function(loaded, body)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    return run_converter(converter.convert)


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


def _kernels(path: Path, io_details: dict) -> dict:
    """What LiteRT runs of a quantized file on this host: ops in int8 kernels, their share of the MACs, and
    how many XNNPACK took (`edge_runtime.kernel_coverage`)."""
    from export.inspect_tflite import count_tflite

    sample = np.zeros(io_details["input"]["shape"], io_details["input"]["dtype"])
    return kernel_coverage.coverage(path, sample, [[layer.name, layer.macs] for layer in count_tflite(path).layers])


def finish_artifact(
    staged: Path,
    loaded: LoadedModel,
    onnx_path: Path,
    mode: str | None,
    io: str,
    extra: dict,
    eval_set: EvalSet | None = None,
    fp32_logits: np.ndarray | None = None,
    fp32_size: int | None = None,
) -> TfliteArtifact:
    """The sidecar of a converted `staged` .tflite (precision `mode`, None = fp32), with its drift on the
    FP32 ONNX model's evaluation, and the metadata embedded in the file. `extra`: the mode's own entries
    (the fp32 validation, the int8 calibration and recipe); `fp32_size`: the FP32 file's, for `size_ratio`."""
    preprocess = input_preprocess(loaded.preprocess, io)
    drift = UNSET
    if eval_set is not None and fp32_logits is not None and len(eval_set):
        inputs = _inputs_for(eval_set, preprocess, loaded)
        label = f"Evaluating TFLite {mode or 'fp32'}"
        drift = {
            "eval": {"images": len(eval_set)},
            "fp32": {"accuracy": accuracy(fp32_logits, eval_set.labels)},
            "litert": measure_drift(TfliteRunner(staged), replace(eval_set, inputs=inputs), fp32_logits, label),
        }
    io_details = _io_details(staged)
    record = ArtifactRecord(
        format="tflite",
        precision=mode or "fp32",
        io=io,
        **loaded.describe(),
        preprocess=preprocess.to_dict(),
        labels=loaded.labels.to_dict(),
        **io_details,
        ops=tflite_op_histogram(staged),
        converter="toolkit tf.nn port -> tf.lite.TFLiteConverter",
        producer={"toolkit": __version__, "tensorflow": require_tensorflow().__version__},
        reference=onnx_path.name,
        drift=drift,
        **({"kernels": _kernels(staged, io_details)} if mode else {}),
        **extra,
    )
    set_tflite_metadata(staged, _embedded_metadata(record.to_dict()))
    record = record.for_file(staged)
    if fp32_size is not None:
        record = replace(record, size_ratio=round(record.size_bytes / fp32_size, 4))
    write_sidecar(staged, record)
    return TfliteArtifact(staged, sidecar_path(staged), record.to_dict())


def export_tflite_fp32(
    loaded: LoadedModel,
    onnx_path: Path,
    stage: Path,
    eval_set: EvalSet | None = None,
    fp32_logits: np.ndarray | None = None,
    global_mean: bool = True,
) -> tuple[TfliteArtifact, float]:
    """`<onnx stem>.tflite` and its sidecar in `stage`, verified against the FP32 ONNX model on real photos;
    with the conversion's seconds. `eval_set`/`fp32_logits`: the ONNX model's evaluation, for the drift."""
    require_tensorflow()
    photos = load_eval_set(validation_photos(), None, loaded.preprocess, None, "Loading validation photos")
    started = time.perf_counter()
    step("converting to TFLite fp32")
    staged = stage / tflite_name(onnx_path.stem, None)
    staged.write_bytes(convert_fp32(loaded, global_mean))
    elapsed = time.perf_counter() - started
    validation = {"validation": verify_fp32(staged, onnx_path, photos.inputs)}
    return finish_artifact(staged, loaded, onnx_path, None, "float32", validation, eval_set, fp32_logits), elapsed


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
