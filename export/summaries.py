"""The tables `python -m export` prints after each artifact: read from the sidecar info, nothing recomputed."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.kernel_coverage import coverage_text, mostly_float
from export import ui
from export.counting import format_count
from export.onnx_export import OnnxExportResult


def summarize_onnx(result: OnnxExportResult, elapsed: float, shown: Path | None = None) -> None:
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


def summarize_onnx_int8(info: dict, timings: dict[str, float], target: str, calibration: str, shown: Path) -> None:
    """The int8 ONNX model's table; `shown`: where it is published, `target`/`calibration`: the preset's."""
    calib = info["calibration"]
    fingerprint = calib.get("file_list_sha256") or calib.get("data_sha256") or ""
    rows = [
        ("artifact", str(shown)),
        ("size", f"{info['size_bytes'] / 1e6:.2f} MB ({info['size_ratio']:.1%} of FP32)"),
        ("target / calibration", f"{target} / {calibration}"),
        (
            "calibration set",
            f"{calib['images']} images from {calib['path']} (sha256 {fingerprint[:12]})",
        ),
        ("time", f"quantize {timings.get('quantize_s', 0):.1f} s, drift {timings.get('drift_s', 0):.1f} s"),
    ]
    kernels = info.get("kernels")
    if kernels:
        share = kernels.get("int8_mac_share")
        ops = f"{kernels['int8_compute_ops']}/{kernels['compute_ops']} compute ops"
        rows.append(("int8 kernels on this host", f"{share:.0%} of MACs ({ops})" if share is not None else ops))
        if info.get("quantization", {}).get("activation_type") == "int16":
            ui.warn("int16 activations (A16W8): CPU kernels run this model in float; it is meant for A16W8 NPUs")
        elif info.get("quantization", {}).get("weight_grid") == "palette":
            ui.warn("8-bit palettized weights (W8A32): float arithmetic, unpacked at load; int8's size, FP32's speed")
        elif info.get("quantization", {}).get("weights_only"):
            ui.warn("weights only (W8A32): int8 weights, float arithmetic; as small as int8, not faster than FP32")
        elif mostly_float(kernels):
            ui.warn(f"on this host only {share:.0%} of the int8 model's MACs run in int8 kernels (--target {target})")
    if calib.get("skipped_non_images"):
        rows.append(("skipped non-image files", str(calib["skipped_non_images"])))
    for entry in calib.get("unreadable", []):
        ui.warn(f"unreadable calibration image skipped: {entry}")
    ui.show(ui.table("int8 ONNX", ("", "value"), rows))


def summarize_tflite(artifacts: list, elapsed: float, out: Path) -> None:
    """One row per .tflite (`export.tflite_export.TfliteArtifact`), as published in `out`."""
    rows = []
    for artifact in artifacts:
        info = artifact.info
        drift = (info.get("drift") or {}).get("litert") or {}
        acc, fid = drift.get("accuracy") or {}, drift.get("fidelity") or {}
        float_ops = sum(n for op, n in info["ops"].items() if "FLOAT32]" in op and "QUANTIZE" not in op)
        kernels = info.get("kernels")
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
                coverage_text(kernels),
            )
        )
        if info["precision"] == "int8" and info.get("quantization", {}).get("weights_only"):
            ui.warn(f"{artifact.path.name} is weights only (W8A32): int8 weights, float arithmetic, not faster")
        elif info["precision"] == "int8" and mostly_float(kernels):
            share = kernels["int8_mac_share"]
            ui.warn(f"on this host only {share:.0%} of {artifact.path.name}'s MACs run in int8 kernels")
    columns = ("artifact", "precision", "input", "size", "top-1", "drop", "agreement", "float ops", "int8 MACs")
    ui.show(ui.table("TFLite (run in LiteRT)", columns, rows))
    ui.show(f"total time {elapsed:.1f} s")
