"""One `run_<format>` function per row of `export.formats.FORMATS`: parsed arguments -> artifacts."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from export import ui
from export.artifacts import check_out_dir, publish, staging_dir
from export.errors import ToolkitError
from export.images import list_images
from export.onnx_export import DEFAULT_OPSET, OnnxExportOptions, OnnxExportResult, check_opset, export_onnx
from export.weights import RandomInitWarning, load_model


def _load(args: argparse.Namespace):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomInitWarning)
        loaded = load_model(args.weights, num_classes=args.num_classes, labels=args.labels, seed=args.seed)
    for warning in caught:
        ui.warn(str(warning.message))
    for note in loaded.warnings:
        if not loaded.is_random or "RANDOM" not in note:
            ui.warn(note)
    return loaded


def _check_paths(args: argparse.Namespace) -> None:
    """`--out` and `--eval` are checked before any slow work: a typo must not cost a whole export."""
    check_out_dir(args.out)
    if args.eval is not None and not args.no_eval and not list_images(args.eval).images:
        raise ToolkitError("no images to evaluate on (.jpg/.jpeg/.png/.bmp)", args.eval)


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


def _publish_together(bundle: Path, out: Path) -> None:
    """Every file the command made, moved into `--out` as one set: an FP32 model never lands without the
    int8 model made from it (whose sidecar records the FP32 file's sha256), nor the reverse."""
    publish({path: out / path.name for path in sorted(bundle.iterdir()) if path.is_file()})


def summarize_onnx(result: OnnxExportResult, elapsed: float, shown: Path | None = None) -> None:
    from export.counting import format_count

    info = result.info
    evaluation = info.get("evaluation") or {}
    acc = evaluation.get("accuracy") or {}
    rows = [
        ("artifact", str(shown or result.path)),
        ("weights", f"{info['weights']} ({info['weights_format']})"),
        ("size", f"{info['size_bytes'] / 1e6:.2f} MB"),
        ("params / MACs", f"{format_count(info['params'])} / {format_count(info['macs'])}"),
        ("opset / simplifier", f"{info['opset']} / {info['simplifier']}"),
        (
            "vs PyTorch (max |Δlogit|)",
            f"{info['validation']['max_abs_logit_diff']:.2e} on {info['validation']['images']} photos",
        ),
    ]
    if acc:
        rows.append(("top-1 / top-5", f"{acc['top1']:.1%} / {acc['top5']:.1%} on {acc['images']} images"))
    source = evaluation.get("vs_source_onnx")
    if source:
        rows.append(
            (
                "vs source ONNX",
                f"agreement {source['top1_agreement']:.1%}, max |Δprob| {source['max_abs_prob_diff']:.1e}",
            )
        )
    rows.append(("time", f"{elapsed:.1f} s"))
    ui.show(ui.table("ONNX export", ("", "value"), rows))


def _calibration_plan(args: argparse.Namespace, preprocess, evaluate: bool):
    """The calibration source `--calib` names, loaded and validated now (before the slow export), and
    where to evaluate: `--eval`, else the calibration folder's images that calibration did not use."""
    from quantize.calibration import FolderSource, calibration_source

    source = calibration_source(args.calib, preprocess, args.calib_size, args.seed)
    if args.calib is None:
        ui.warn("no --calib: calibrating on built-in photographs; a set from your own data is more representative")
    source.describe()
    eval_dir, exclude = args.eval, frozenset()
    if isinstance(source, FolderSource):
        for note in source.notes:
            ui.warn(note)
        exclude = frozenset(source.chosen)  # never evaluate on calibration images
        if eval_dir is None:
            eval_dir = source.folder
            if not source.unused:
                ui.warn("every image of --calib was used for calibration; pass --eval DIR for an accuracy report")
                evaluate = False
    return source, eval_dir, exclude, evaluate


def _check_quantize_options(args: argparse.Namespace) -> None:
    """Options that only mean something with --quantize are an error without it, not silently ignored."""
    if args.quantize:
        return
    given = [
        flag
        for flag, value, default in (
            ("--calib", args.calib, None),
            ("--calib-size", args.calib_size, 200),
            ("--calibration", args.calibration, None),
            ("--target", args.target, "arm64"),
            ("--exclude", args.exclude, []),
            ("--int8-recipe", args.int8_recipe, "toolkit"),
        )
        if value != default
    ]
    if given:
        raise ToolkitError(f"{', '.join(given)} only apply with --quantize int8")


def run_onnx(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_opset(args.opset or DEFAULT_OPSET)  # cheap checks first: no progress output before an error
    _check_paths(args)
    _check_quantize_options(args)
    loaded = _load(args)
    source = None
    eval_dir, exclude, evaluate = args.eval, frozenset(), not args.no_eval
    if args.quantize:
        from quantize.presets import DEFAULT_CALIBRATION
        from quantize.recipes import recipe

        config = recipe(
            "onnx",
            args.int8_recipe,
            args.target,
            tuple(args.exclude),
            calibration=args.calibration or DEFAULT_CALIBRATION,
        )
        source, eval_dir, exclude, evaluate = _calibration_plan(args, loaded.preprocess, evaluate)
    options = OnnxExportOptions(
        out_dir=args.out,
        opset=args.opset or DEFAULT_OPSET,
        dynamic_batch=args.dynamic_batch,
        simplify=not args.no_simplify,
        eval_dir=eval_dir,
        evaluate=evaluate,
        eval_exclude=exclude,
        compare_source=not args.quantize,  # keeps `--quantize int8` within its time budget
    )
    with _bundle() as bundle:
        result = export_onnx(loaded, replace(options, out_dir=bundle))
        from export.counting import render_table
        from export.inspect_onnx import count_onnx

        ui.show(render_table(count_onnx(result.path), paper=True))
        summarize_onnx(result, time.perf_counter() - started, args.out / result.path.name)
        if args.quantize:
            _quantize_int8(result, source, config, loaded, args.out)
        _publish_together(bundle, args.out)
    ui.show(f"total time {time.perf_counter() - started:.1f} s")
    return 0


def _quantize_int8(result: OnnxExportResult, source, config, loaded, out: Path) -> None:
    from export.evaluation import load_eval_set
    from export.sample_images import validation_photos
    from quantize.drift import drift_table, layer_table
    from quantize.onnx_int8 import quantize_onnx

    ui.show(f"int8 target preset: [bold]{config.target}[/bold] ({config.why}); calibration: {config.calibration}")
    eval_set, fp32_logits = result.eval_set, result.eval_logits
    if eval_set is None:
        ui.warn("no held-out labelled images: drift is measured on the built-in photos (agreement only)")
        eval_set = load_eval_set(validation_photos(), None, loaded.preprocess, None, "Loading photos")
        fp32_logits = None
    q = quantize_onnx(result.path, source, config, eval_set, fp32_logits, reference=loaded.model)
    drift = q.info["drift"]
    if drift:
        ui.show(drift_table(drift))
        ui.show(layer_table(drift["layers"]["worst_first"]))
        if drift.get("host_caveat"):
            ui.warn(drift["host_caveat"])
    calib = q.info["calibration"]
    fingerprint = calib.get("file_list_sha256") or calib.get("data_sha256") or ""
    rows = [
        ("artifact", str(out / q.path.name)),
        ("size", f"{q.info['size_bytes'] / 1e6:.2f} MB ({q.info['size_ratio']:.1%} of FP32)"),
        ("target / calibration", f"{config.target} / {config.calibration}"),
        (
            "calibration set",
            f"{calib['images']} images from {calib['path']} (sha256 {fingerprint[:12]})",
        ),
        ("time", f"quantize {q.timings.get('quantize_s', 0):.1f} s, drift {q.timings.get('drift_s', 0):.1f} s"),
    ]
    if calib.get("skipped_non_images"):
        rows.append(("skipped non-image files", str(calib["skipped_non_images"])))
    for entry in calib.get("unreadable", []):
        ui.warn(f"unreadable calibration image skipped: {entry}")
    ui.show(ui.table("int8 ONNX", ("", "value"), rows))


def run_tflite(args: argparse.Namespace) -> int:
    from export.tflite_export import export_tflite, input_preprocess, require_tensorflow
    from quantize.recipes import recipe

    started = time.perf_counter()
    if args.io != "float32" and args.quantize != "int8":
        raise ToolkitError(f"--io {args.io} needs --quantize int8")
    if args.quantize != "int8" and (args.calib is not None or args.calib_size != 200):
        raise ToolkitError("--calib and --calib-size only apply with --quantize int8")
    if args.quantize != "int8" and args.int8_recipe != "toolkit":
        raise ToolkitError("--int8-recipe only applies with --quantize int8")
    int8 = recipe("tflite", args.int8_recipe)
    _check_paths(args)
    require_tensorflow()
    loaded = _load(args)
    calibration, eval_dir, exclude, evaluate = None, args.eval, frozenset(), not args.no_eval
    if args.quantize == "int8":
        source, eval_dir, exclude, evaluate = _calibration_plan(
            args, input_preprocess(loaded.preprocess, args.io), evaluate
        )
        calibration = {"arrays": np.concatenate(list(source.batches())), "describe": source.describe()}
    with _bundle() as bundle:
        reference = export_onnx(
            loaded,
            OnnxExportOptions(
                out_dir=bundle, eval_dir=eval_dir, evaluate=evaluate, eval_exclude=exclude, compare_source=False
            ),
        )
        result = export_tflite(
            loaded,
            reference.path,
            bundle,
            quantize=args.quantize,
            io=args.io,
            calibration=calibration,
            eval_set=reference.eval_set,
            fp32_logits=reference.eval_logits,
            int8=int8,
        )
        _publish_together(bundle, args.out)
    _summarize_tflite(result, time.perf_counter() - started, args.out)
    return 0


def _summarize_tflite(result, elapsed: float, out: Path) -> None:
    rows = []
    for artifact in result.artifacts:
        info = artifact.info
        drift = (info.get("drift") or {}).get("litert") or {}
        acc, fid = drift.get("accuracy") or {}, drift.get("fidelity") or {}
        float_ops = sum(n for op, n in info["ops"].items() if "FLOAT32]" in op and "QUANTIZE" not in op)
        rows.append(
            (
                str(out / artifact.path.name),
                info["precision"],
                info["input"]["dtype"],
                f"{info['size_bytes'] / 1e6:.2f} MB",
                "—" if not acc else f"{acc['top1']:.1%}",
                "—" if "top1_drop_pp" not in drift else f"{drift['top1_drop_pp']:+.2f} pp",
                "—" if not fid else f"{fid['top1_agreement']:.1%}",
                str(float_ops),
            )
        )
    columns = ("artifact", "precision", "input", "size", "top-1", "drop", "agreement", "float ops")
    ui.show(ui.table("TFLite (run in LiteRT)", columns, rows))
    ui.show(f"total time {elapsed:.1f} s")
