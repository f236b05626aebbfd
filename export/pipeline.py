"""The export pipeline as one call: what `python -m export onnx|tflite [--quantize ...]` does, for scripts.

`export_model("onnx", weights=..., quantize="int8", calibration=FolderSource(...) or a folder)` loads the
weights, exports and validates the FP32 model, quantizes it, measures the drift, and publishes every file
into `out` as one set. With a calibration folder, evaluation runs on that folder's photos that calibration
did not use (or on `eval_dir`), never on calibration photos. `export.commands` is only its argument parser.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.formats import BY_NAME
from export import ui
from export.artifacts import check_out_dir, publish, staging_dir
from export.errors import ToolkitError
from export.images import list_images
from export.onnx_export import DEFAULT_OPSET, OnnxExportOptions, OnnxExportResult, check_opset, export_onnx
from export.paths import DEFAULT_OUT
from export.preprocess import Preprocess, check_io
from export.summaries import summarize_onnx, summarize_onnx_int8, summarize_tflite
from export.weights import LoadedModel, RandomInitWarning, load_model
from quantize.calibration import CalibrationSource, FolderSource, calibration_source
from quantize.presets import DEFAULT_CALIB_SIZE, DEFAULT_TARGET
from quantize.recipes import DEFAULT_RECIPE

if TYPE_CHECKING:  # heavy (onnxruntime's quantizer, TensorFlow): imported when the format needs them
    from export.tflite_export import TfliteExportResult
    from quantize.onnx_int8 import Int8Result


@dataclass
class ExportOutcome:
    """What one export published: every file in `out`, and the results behind them."""

    out: Path
    files: list[Path] = field(default_factory=list)  # models and sidecars, as published
    onnx: OnnxExportResult | None = None  # the FP32 ONNX model (TFLite: the reference it is checked against)
    int8_onnx: Int8Result | None = None
    tflite: TfliteExportResult | None = None


@dataclass(frozen=True)
class ExportRequest:
    """Every choice `python -m export FORMAT` offers, with the CLI's defaults (see `export_model`)."""

    format: str
    weights: Path | None = None
    num_classes: int | None = None
    labels: Path | None = None
    seed: int = 0
    out: Path = DEFAULT_OUT
    eval_dir: Path | None = None
    evaluate: bool = True
    quantize: str | None = None
    calibration: CalibrationSource | Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    int8_recipe: str = DEFAULT_RECIPE
    target: str = DEFAULT_TARGET  # ONNX only, like the four below
    exclude: tuple[str, ...] = ()
    max_drop: float | None = None  # accuracy-aware int8 (ONNX): the budget on the calibration photos
    min_agreement: float | None = None
    calibration_method: str | None = None  # ORT's calibration (default: the target preset's)
    opset: int | None = None
    dynamic_batch: bool = False
    simplify: bool = True
    io: str = "float32"  # TFLite only


@dataclass(frozen=True)
class _Evaluation:
    """Where accuracy is measured: `eval_dir` minus the calibration photos, or nothing."""

    eval_dir: Path | None
    evaluate: bool
    exclude: frozenset[Path] = frozenset()


def load_weights(weights: Path | None, num_classes: int | None, labels: Path | None, seed: int) -> LoadedModel:
    """The model, with every warning about the weights shown once (random init is already in the table)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomInitWarning)
        loaded = load_model(weights, num_classes=num_classes, labels=labels, seed=seed)
    for warning in caught:
        ui.warn(str(warning.message))
    for note in loaded.warnings:
        if not loaded.is_random or "RANDOM" not in note:
            ui.warn(note)
    return loaded


def check_paths(out: Path, eval_dir: Path | None, evaluate: bool) -> None:
    """`out` and `eval_dir` are checked before any slow work: a typo must not cost a whole export."""
    check_out_dir(out)
    if eval_dir is not None and evaluate and not list_images(eval_dir).images:
        raise ToolkitError("no images to evaluate on (.jpg/.jpeg/.png/.bmp)", eval_dir)


@contextlib.contextmanager
def _bundle() -> Iterator[Path]:
    """The command's staging folder. torch's inductor cache goes inside it too: by default torch leaves
    a `torchinductor_<user>` folder in $TMPDIR, which an interrupted or finished run must not."""
    key = "TORCHINDUCTOR_CACHE_DIR"
    with staging_dir() as bundle:
        ours = key not in os.environ
        if ours:
            os.environ[key] = str(bundle / "torchinductor")
        try:
            yield bundle
        finally:
            if ours:  # a later export in this process must not recreate the removed folder
                os.environ.pop(key, None)


def _publish_together(bundle: Path, out: Path) -> list[Path]:
    """Every file the command made, moved into `out` as one set: an FP32 model never lands without the
    int8 model made from it (whose sidecar records the FP32 file's sha256), nor the reverse."""
    moves = {path: out / path.name for path in sorted(bundle.iterdir()) if path.is_file()}
    publish(moves)
    return list(moves.values())


def _calibration_plan(
    calibration: CalibrationSource | Path | None,
    preprocess: Preprocess,
    size: int,
    seed: int,
    evaluation: _Evaluation,
) -> tuple[CalibrationSource, _Evaluation]:
    """The calibration source (a folder or `.npy`/`.npz` file is opened here), loaded and validated now
    (before the slow export), and where to evaluate: `eval_dir`, else the calibration folder's images that
    calibration did not use."""
    if isinstance(calibration, CalibrationSource):
        source = calibration
    else:
        source = calibration_source(calibration, preprocess, size, seed)
        if calibration is None:
            ui.warn("no --calib: calibrating on built-in photographs; a set from your own data is more representative")
    source.describe()
    if not isinstance(source, FolderSource):
        return source, evaluation
    for note in source.notes:
        ui.warn(note)
    eval_dir, evaluate = evaluation.eval_dir, evaluation.evaluate
    if eval_dir is None:
        eval_dir = source.folder
        if not source.unused:
            ui.warn("every image of --calib was used for calibration; pass --eval DIR for an accuracy report")
            evaluate = False
    return source, _Evaluation(eval_dir, evaluate, frozenset(source.chosen))  # never evaluate on calibration images


def export_model(format: str, **choices) -> ExportOutcome:
    """Export (and with `quantize=`, quantize) the model to `format` ("onnx" or "tflite") into `out=`.

    Keywords are the fields of `ExportRequest`. `calibration=`: a `CalibrationSource` in the model input's
    preprocessing (TFLite: NHWC, see `export.tflite_export.input_preprocess`), a folder or `.npy`/`.npz`
    file (opened with `calib_size` and `seed`), or None for the built-in photos.
    """
    request = ExportRequest(format, **choices)
    request = replace(request, out=Path(request.out), exclude=tuple(request.exclude))
    if format not in BY_NAME:
        raise ToolkitError(f"unknown export format {format!r} (choose from {', '.join(BY_NAME)})")
    modes = BY_NAME[format].quantize
    if request.quantize is not None and request.quantize not in modes:
        raise ToolkitError(f"{format} cannot be quantized to {request.quantize!r} (choose from {', '.join(modes)})")
    return BY_NAME[format].exporter(request)


def export_onnx_request(request: ExportRequest) -> ExportOutcome:
    started = time.perf_counter()
    opset = request.opset or DEFAULT_OPSET
    check_opset(opset)  # cheap checks first: no progress output before an error
    check_paths(request.out, request.eval_dir, request.evaluate)
    loaded = load_weights(request.weights, request.num_classes, request.labels, request.seed)
    source, preset, evaluation = None, None, _Evaluation(request.eval_dir, request.evaluate)
    if request.quantize:
        from quantize.api import Int8Preset
        from quantize.presets import DEFAULT_CALIBRATION

        preset = Int8Preset(
            "onnx",
            request.int8_recipe,
            request.target,
            request.exclude,
            calibration=request.calibration_method or DEFAULT_CALIBRATION,
        )
        preset.settings()  # an unknown target or recipe fails here, before any slow work
        source, evaluation = _calibration_plan(
            request.calibration, loaded.preprocess, request.calib_size, request.seed, evaluation
        )
    options = OnnxExportOptions(
        out_dir=request.out,
        opset=opset,
        dynamic_batch=request.dynamic_batch,
        simplify=request.simplify,
        eval_dir=evaluation.eval_dir,
        evaluate=evaluation.evaluate,
        eval_exclude=evaluation.exclude,
        compare_source=not request.quantize,  # keeps `--quantize int8` within its time budget
    )
    outcome = ExportOutcome(request.out)
    with _bundle() as bundle:
        outcome.onnx = result = export_onnx(loaded, replace(options, out_dir=bundle))
        from export.counting import render_table
        from export.inspect_onnx import count_onnx

        ui.show(render_table(count_onnx(result.path), paper=True))
        summarize_onnx(result, time.perf_counter() - started, request.out / result.path.name)
        if request.quantize:
            from quantize.accuracy_control import AccuracyBudget

            budget = AccuracyBudget(request.max_drop, request.min_agreement)
            outcome.int8_onnx = _quantize_onnx_int8(result, source, preset, loaded, request.out, budget)
        outcome.files = _publish_together(bundle, request.out)
    ui.show(f"total time {time.perf_counter() - started:.1f} s")
    return outcome


def _quantize_onnx_int8(
    result: OnnxExportResult, source: CalibrationSource, preset, loaded: LoadedModel, out: Path, budget
) -> Int8Result:
    """`googlenet.int8.onnx` beside the FP32 model, its drift measured on the FP32 model's evaluation."""
    from export.evaluation import load_eval_set
    from export.sample_images import validation_photos
    from quantize.api import quantize
    from quantize.drift import drift_table, layer_table

    config = preset.settings()
    ui.show(f"int8 target preset: [bold]{config.target}[/bold] ({config.why}); calibration: {config.calibration}")
    eval_set, fp32_logits = result.eval_set, result.eval_logits
    if eval_set is None:
        ui.warn("no held-out labelled images: drift is measured on the built-in photos (agreement only)")
        eval_set = load_eval_set(validation_photos(), None, loaded.preprocess, None, "Loading photos")
        fp32_logits = None
    validation = _validation_set(source, loaded) if budget else None
    q = quantize(
        result.path,
        source,
        preset,
        eval_set=eval_set,
        fp32_logits=fp32_logits,
        reference=loaded.model,
        budget=budget,
        validation=validation,
    )
    drift = q.info["drift"]
    if drift:
        ui.show(drift_table(drift))
        if drift["layers"]["worst_first"]:  # none when every activation is float (`learned-weights`)
            ui.show(layer_table(drift["layers"]["worst_first"]))
        if drift.get("host_caveat"):
            ui.warn(drift["host_caveat"])
        if drift.get("host_skipped"):
            ui.show(f"int8 on this host: not run ({drift['host_skipped']})")
    summarize_onnx_int8(q.info, q.timings, config.target, config.calibration, out / q.path.name)
    return q


def _validation_set(source: CalibrationSource, loaded: LoadedModel):
    """Accuracy control's photos: the calibration photos (already decoded by the source), labelled where their
    folder names them, never the evaluation photos (which the export keeps apart from calibration)."""
    import numpy as np

    from export.evaluation import EvalSet, labels_of

    images = np.concatenate(list(source.batches()))
    chosen = getattr(source, "chosen", None)
    if chosen is None:
        return EvalSet(paths=[], inputs=images, labels=np.full(len(images), -1, np.int64))
    unreadable = {path for path, _ in source.unreadable}  # left out of the arrays, in order
    paths = [path for path in chosen if path not in unreadable]
    return EvalSet(paths=paths, inputs=images, labels=labels_of(paths, source.folder, loaded.labels))


def export_tflite_request(request: ExportRequest) -> ExportOutcome:
    from export.tflite_export import input_preprocess, require_tensorflow
    from quantize.api import Int8Preset, quantize
    from quantize.tflite_quant import export_tflite

    started = time.perf_counter()
    check_io(request.io, request.quantize)
    preset = Int8Preset("tflite", request.int8_recipe, io=request.io)
    int8 = preset.settings()  # also shapes the FP32 file (the pool as MEAN)
    check_paths(request.out, request.eval_dir, request.evaluate)
    require_tensorflow()
    loaded = load_weights(request.weights, request.num_classes, request.labels, request.seed)
    source, evaluation = None, _Evaluation(request.eval_dir, request.evaluate)
    if request.quantize == "int8":
        preprocess = input_preprocess(loaded.preprocess, request.io)
        source, evaluation = _calibration_plan(
            request.calibration, preprocess, request.calib_size, request.seed, evaluation
        )
    outcome = ExportOutcome(request.out)
    with _bundle() as bundle:
        outcome.onnx = reference = export_onnx(
            loaded,
            OnnxExportOptions(
                out_dir=bundle,
                eval_dir=evaluation.eval_dir,
                evaluate=evaluation.evaluate,
                eval_exclude=evaluation.exclude,
                compare_source=False,
            ),
        )
        evaluated = {"eval_set": reference.eval_set, "fp32_logits": reference.eval_logits}
        if request.quantize == "int8":
            outcome.tflite = quantize(reference.path, source, preset, loaded=loaded, out_dir=bundle, **evaluated)
        else:
            outcome.tflite = export_tflite(
                loaded, reference.path, bundle, request.quantize, request.io, source, int8=int8, **evaluated
            )
        outcome.files = _publish_together(bundle, request.out)
    summarize_tflite(outcome.tflite.artifacts, time.perf_counter() - started, request.out)
    return outcome
