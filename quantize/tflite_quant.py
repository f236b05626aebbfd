"""Quantized TFLite (`python -m export tflite --quantize int8|fp16|dynamic`) beside the FP32 file.

The FP32 file comes from `export.tflite_export`; here the same `tf.nn` port goes through the converter with
a `representative_dataset` fed by a `CalibrationSource` (real photos, the int8 model's input
preprocessing) and the int8 recipe of `quantize.tflite_int8` (float stem, bias correction, learned
rounding). Every quantized file gets the same sidecar and drift report as the FP32 one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from export.artifacts import publish, sidecar_path, staging_dir
from export.errors import ToolkitError
from export.evaluation import EvalSet
from export.preprocess import check_io
from export.tflite_export import (
    TfliteArtifact,
    TfliteExportResult,
    export_tflite_fp32,
    finish_artifact,
    require_tensorflow,
    run_converter,
    serving_function,
    tf_network,
    tflite_name,
)
from export.ui import step, warn
from export.weights import LoadedModel
from quantize.calibration import CalibrationSource
from quantize.recipes import DEFAULT_RECIPE
from quantize.tflite_int8 import TfliteInt8Config, bias_shifts
from quantize.tflite_int8 import quantize as quantize_int8
from quantize.tflite_int8 import recipe as tflite_recipe


def calibration_arrays(source: CalibrationSource) -> np.ndarray:
    """Every calibration image as one NHWC array: the converter, the bias correction and learned rounding
    each read them again."""
    return np.concatenate(list(source.batches()))


def default_int8() -> TfliteInt8Config:
    """The settings of the default `--int8-recipe`, for callers that give none."""
    return tflite_recipe(DEFAULT_RECIPE)


def _concrete_function(
    loaded: LoadedModel, io: str, calibration: np.ndarray | None, config: TfliteInt8Config, fit: dict | None = None
):
    """The TF function the converter reads; with `calibration`, int8 weight-rounding bias corrected. `fit`, if
    given, receives what the weight fit decided (`float16_kernels`, and the sidecar's `record`)."""
    model = loaded.model
    if calibration is not None and config.rounding != "nearest":
        model, record = _rounded_model(loaded, io, calibration, config)
        if fit is not None:
            fit.update(record)
    net, body = tf_network(loaded, io, model, global_mean=config.global_mean)
    if calibration is not None and config.bias_correction:
        recorded = net.record_layer_inputs(body, (calibration[i : i + 10] for i in range(0, len(calibration), 10)))
        net.bias_shift = bias_shifts(recorded, skip=("conv1",) if config.float_stem else ())
    return serving_function(loaded, body)


def _rounded_model(loaded: LoadedModel, io: str, calibration: np.ndarray, config: TfliteInt8Config):
    """The PyTorch model with its int8 layers' weights rounded onto TFLite's grid by `config.rounding`,
    fitted on the calibration images (brought back to the model's NCHW, normalised convention); with the
    weights-only refinements, equalized first and some layers float16. Returns it and the fit's record."""
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
    model, record = fitted_weights(loaded.model, nchw, config)
    if config.float16_layers:
        from quantize.rounding import quantized_layers
        from quantize.tflite_weights import kernel_digest

        layers = quantized_layers(model)
        ohwi = [layers[name].weight.detach().permute(0, 2, 3, 1).numpy() for name in record["float16"]["layers"]]
        record["float16_kernels"] = frozenset(map(kernel_digest, ohwi))  # CONV_2D kernels are OHWI in the flatbuffer
    return model, record


def fitted_weights(model, nchw: np.ndarray, config: TfliteInt8Config):
    """`model` (the reference PyTorch network) with the weights `config` stores, fitted on `nchw`: rounded onto
    the int8 grid by `config.rounding` (conv1 float under a float stem); with the weights-only refinements,
    equalized first and some layers float16. Returns it and the fit's record for the sidecar."""
    import copy

    from quantize.rounding import RoundingSettings, rounded_copy

    skip = ("conv1.conv",) if config.float_stem else ()
    source, record = model, {}
    if config.equalize:
        from quantize.equalization import equalize_channels

        source = copy.deepcopy(model).eval()
        record["equalization"] = equalize_channels(source, nchw)
    rounded, _ = rounded_copy(source, nchw, RoundingSettings(method=config.rounding), skip)
    if config.float16_layers:
        from quantize.mixed_precision import keep_float16

        rounded = copy.deepcopy(rounded)  # the rounded copy is cached for the next caller
        record["float16"] = keep_float16(source, rounded, nchw, skip)
    return rounded, record


def convert(
    loaded: LoadedModel,
    quantize: str | None,
    io: str,
    calibration: np.ndarray | None,
    int8: TfliteInt8Config | None = None,
    fit: dict | None = None,
) -> bytes:
    """One TFLite flatbuffer of any mode (None = fp32). `calibration`: NHWC float images in the model
    input's preprocessing, for int8; `fit` receives the sidecar's record of the int8 weight fit."""
    tf = require_tensorflow()
    if quantize == "int8" and (calibration is None or not len(calibration)):
        raise ToolkitError("int8 TFLite needs calibration images")
    check_io(io, quantize)
    int8 = int8 or default_int8()
    decided: dict = {}
    function, module = _concrete_function(loaded, io, calibration if quantize == "int8" else None, int8, decided)
    float16_kernels = decided.pop("float16_kernels", frozenset())
    if fit is not None:
        fit.update(decided)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        return run_converter(lambda: quantize_int8(converter, calibration, io, int8, float16_kernels))
    return run_converter(converter.convert)


def export_tflite(
    loaded: LoadedModel,
    onnx_path: Path,
    out_dir: Path,
    quantize: str | None = None,
    io: str = "float32",
    calibration: CalibrationSource | None = None,
    eval_set: EvalSet | None = None,
    fp32_logits: np.ndarray | None = None,
    int8: TfliteInt8Config | None = None,
) -> TfliteExportResult:
    """Write `googlenet.tflite` and, with `quantize`, `googlenet.<mode>.tflite`, each verified in LiteRT;
    both appear in `out_dir` together or not at all.

    `calibration`: images in the int8 model's input preprocessing (`export.tflite_export.input_preprocess`).
    `eval_set`/`fp32_logits`: the FP32 ONNX model's evaluation (NCHW), reused for the drift report.
    """
    check_io(io, quantize)
    require_tensorflow()
    int8 = int8 or default_int8()
    if quantize == "int8" and int8.rounding != "nearest" and loaded.arch != "reference":
        # the recipe still applies its other passes; the sidecar records the rounding actually used
        warn(f"{int8.rounding} rounding needs the reference network, not {loaded.arch}: round-to-nearest instead")
        int8 = replace(int8, rounding="nearest", equalize=False, float16_layers=False)  # both refine the fit
    result = TfliteExportResult()
    with staging_dir(out_dir) as stage:
        fp32, result.timings["fp32"] = export_tflite_fp32(
            loaded, onnx_path, stage, eval_set, fp32_logits, global_mean=int8.global_mean
        )
        staged = [fp32]
        if quantize:
            quantized, result.timings[quantize] = _export_quantized(
                loaded, onnx_path, stage, quantize, io, calibration, int8, eval_set, fp32_logits, fp32.path
            )
            staged.append(quantized)
        publishing: dict[Path, Path] = {}
        for artifact in staged:
            final = out_dir / artifact.path.name
            publishing[artifact.path] = final
            publishing[artifact.sidecar] = sidecar_path(final)
            result.artifacts.append(TfliteArtifact(final, sidecar_path(final), artifact.info))
        publish(publishing)
    return result


def _export_quantized(
    loaded: LoadedModel,
    onnx_path: Path,
    stage: Path,
    quantize: str,
    io: str,
    calibration: CalibrationSource | None,
    int8: TfliteInt8Config,
    eval_set: EvalSet | None,
    fp32_logits: np.ndarray | None,
    fp32: Path,
) -> tuple[TfliteArtifact, float]:
    """`googlenet.<quantize>.tflite` and its sidecar in `stage` (its size relative to the `fp32` file's), with
    the conversion's seconds."""
    arrays = extra = None
    if quantize == "int8" and calibration is not None:
        arrays = calibration_arrays(calibration)
        extra = {"calibration": calibration.describe(), "quantization": int8.to_dict()}
    started = time.perf_counter()
    step(f"converting to TFLite {quantize}" + (f" ({io} I/O)" if io != "float32" else ""))
    staged = stage / tflite_name(onnx_path.stem, quantize)
    fit: dict = {}
    staged.write_bytes(convert(loaded, quantize, io, arrays, int8, fit))
    elapsed = time.perf_counter() - started
    if extra and fit:
        extra["quantization"]["fit"] = fit
    size = fp32.stat().st_size
    artifact = finish_artifact(staged, loaded, onnx_path, quantize, io, extra or {}, eval_set, fp32_logits, size)
    return artifact, elapsed
