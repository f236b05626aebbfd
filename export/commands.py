"""One `run_<format>` function per row of `export.formats.FORMATS`: parsed arguments -> artifacts."""

from __future__ import annotations

import argparse
import time
import warnings

from export import ui
from export.onnx_export import DEFAULT_OPSET, OnnxExportOptions, OnnxExportResult, export_onnx
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


def summarize_onnx(result: OnnxExportResult, elapsed: float) -> None:
    from benchmarks.counting import format_count

    info = result.info
    evaluation = info.get("evaluation") or {}
    acc = evaluation.get("accuracy") or {}
    rows = [
        ("artifact", str(result.path)),
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


def run_onnx(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    loaded = _load(args)
    options = OnnxExportOptions(
        out_dir=args.out,
        opset=args.opset or DEFAULT_OPSET,
        dynamic_batch=args.dynamic_batch,
        simplify=not args.no_simplify,
        eval_dir=args.eval,
        evaluate=not args.no_eval,
    )
    result = export_onnx(loaded, options)
    from benchmarks.counting import count_onnx, render_table

    ui.show(render_table(count_onnx(result.path), paper=True))
    summarize_onnx(result, time.perf_counter() - started)
    return 0
