"""How much a quantized model drifts from FP32: accuracy, agreement, KL, cosine, and where it is lost.

`export.evaluation.measure_drift` works for any runner (ONNX Runtime, LiteRT), so every artifact's drift
report has the same fields; `layer_errors` finds the worst-quantized activations of a QDQ ONNX model.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from edge_runtime.hostinfo import int8_host_caveat
from edge_runtime.sessions import throughput_runner
from export.evaluation import EvalSet, measure_drift, predict
from export.ui import step, table

LAYER_REPORT_IMAGES = 4  # the per-layer error table's photos
DRIFT_METRICS = ("top1", "top5", "top1_drop_pp", "top1_agreement", "top5_overlap", "kl_mean", "cosine_mean")


def _sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better; inf when identical)."""
    # float32 differences and BLAS norms: 5-10x faster than float64 copies, and within 1e-4 dB of them
    noise = float(np.linalg.norm(np.subtract(reference, candidate, dtype=np.float32)))
    signal = float(np.linalg.norm(np.asarray(reference, np.float32)))
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(max(signal, 1e-30) / noise)


def layer_errors(fp32_path: Path, int8_path: Path, inputs: np.ndarray, workdir: Path) -> list[dict]:
    """SQNR of every quantized activation of the QDQ model against the FP32 model's, worst first.

    Uses ONNX Runtime's `qdq_loss_debug`: both models are augmented to output their intermediate
    tensors and run (without graph optimisation) on `inputs`.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    # ONNX Runtime writes `<model>-inferred.onnx` beside the model it is given: give it copies in
    # `workdir`, so nothing is ever written next to a published model.
    fp32_copy, int8_copy = workdir / "layers.fp32.onnx", workdir / "layers.int8.onnx"
    shutil.copyfile(fp32_path, fp32_copy)
    shutil.copyfile(int8_path, int8_copy)
    float_aug, qdq_aug = workdir / "float.aug.onnx", workdir / "qdq.aug.onnx"
    modify_model_output_intermediate_tensors(str(fp32_copy), str(float_aug))
    modify_model_output_intermediate_tensors(str(int8_copy), str(qdq_aug))
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    ort.set_default_logger_severity(3)  # its sessions take no options: their graph-cleanup warnings are noise

    def reader():
        return iter([{input_name: inputs[i : i + 1]} for i in range(len(inputs))])

    float_acts = collect_activations(str(float_aug), reader())
    qdq_acts = collect_activations(str(qdq_aug), reader())
    matched = create_activation_matching(qdq_acts, float_acts)
    fp32_nodes = onnx.load(str(fp32_path)).graph.node
    producers = {out: node.name for node in fp32_nodes for out in node.output}
    relu_outputs = {out for node in fp32_nodes if node.op_type == "Relu" for out in node.output}
    rows = []
    for name, match in matched.items():
        if "float" not in match:
            continue
        float_value = np.concatenate([a.ravel() for a in match["float"]])
        pre = np.concatenate([a.ravel() for a in match["pre_qdq"]])
        if name in relu_outputs:
            # The quantizer folds a ReLU into the QuantizeLinear after the Conv (zero point at the bottom
            # of the range), so "pre" is the Conv's output: apply the ReLU to compare like with like.
            pre = np.maximum(pre, 0)
        post = np.concatenate([a.ravel() for a in match["post_qdq"]])
        # The int8 model's (dequantized) activation against FP32's: the error accumulated up to here;
        # and this tensor's own quantize-dequantize error inside the int8 model (what `layer_table` shows).
        rows.append(
            {
                "tensor": name,
                "node": producers.get(name, name),
                "sqnr_db": _finite(_sqnr_db(float_value, post)),
                "qdq_sqnr_db": _finite(_sqnr_db(pre, post)),
            }
        )
    return worst_first(rows)


def worst_first(rows: list[dict]) -> list[dict]:
    """Rows by SQNR, lowest first. Ties (avgpool and the flatten after it carry the same values) are
    settled by tensor name, not by the order ONNX Runtime returns tensors in, which changes from process
    to process; SQNRs are compared at the precision the sidecar stores."""
    return sorted(rows, key=lambda row: (_stored(row["sqnr_db"]), row["tensor"]))


def _stored(db: float | None) -> float:
    """The value as the sidecar stores it (7 significant digits, `round_floats`); None (exact) last."""
    return math.inf if db is None else float(f"{db:.7g}")


def _finite(db: float) -> float | None:
    """None for a lossless tensor (infinite SQNR): JSON has no Infinity."""
    return db if math.isfinite(db) else None


def _db_text(db: float | None) -> str:
    return "exact" if db is None else f"{db:.1f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def drift_table(report: dict, title: str = "int8 drift vs FP32"):
    """One row per way of running the quantized model (host, emulated), FP32 first."""
    fp32 = report["fp32"]["accuracy"] or {}
    rows = [("FP32 (reference)", _pct(fp32.get("top1")), _pct(fp32.get("top5")), "—", "100.0%", "—", "—", "—")]
    for key, label in (("host", "int8 on this host"), ("emulated", "int8 emulated (target-independent)")):
        run = report.get(key)
        if not run:
            continue
        acc, fid = run["accuracy"] or {}, run["fidelity"]
        drop = run.get("top1_drop_pp")
        rows.append(
            (
                label,
                _pct(acc.get("top1")),
                _pct(acc.get("top5")),
                "—" if drop is None else f"{drop:+.2f} pp",
                _pct(fid["top1_agreement"]),
                _pct(fid["top5_overlap"]),
                f"{fid['kl_mean']:.4f}",
                f"{fid['cosine_mean']:.4f}",
            )
        )
    columns = ("run", "top-1", "top-5", "top-1 drop", "agreement", "top-5 overlap", "KL", "cosine")
    images = report["eval"]["images"]
    return table(f"{title} ({images} images)", columns, rows)


def layer_table(rows: list[dict], limit: int = 10):
    shown = [(r["node"], _db_text(r["sqnr_db"]), _db_text(r["qdq_sqnr_db"])) for r in rows[:limit]]
    return table(
        f"worst-quantized activations (of {len(rows)}; SQNR dB, higher is better)",
        ("activation", "vs FP32", "own QDQ"),
        shown,
    )


def drift_report(
    fp32_path: Path,
    int8_path: Path,
    eval_set: EvalSet,
    fp32_logits: np.ndarray | None,
    workdir: Path,
    int8_activations: bool = True,
    host_skipped: str | None = None,
) -> dict:
    """The drift of `int8_path` from `fp32_path`, emulated (target-independent) and, unless `host_skipped`
    says why not, run on this host's kernels. `int8_activations` False (int16 ones, run in float
    everywhere): the host's int8 kernels are no caveat."""
    if fp32_logits is None:
        fp32_logits = predict(throughput_runner(fp32_path), eval_set.inputs, "Evaluating FP32")
    from export.evaluation import accuracy

    report: dict = {
        "eval": {"images": len(eval_set), "labelled": int((eval_set.labels >= 0).sum())},
        "fp32": {"accuracy": accuracy(fp32_logits, eval_set.labels)},
        "host": None,
        "emulated": measure_drift(
            throughput_runner(int8_path, optimize=False), eval_set, fp32_logits, "Evaluating int8 (emulated)"
        ),
        "host_caveat": None,
        "host_skipped": host_skipped,
    }
    if host_skipped is None:
        report["host"] = measure_drift(throughput_runner(int8_path), eval_set, fp32_logits, "Evaluating int8 (host)")
        report["host_caveat"] = int8_host_caveat() if int8_activations else None
    step("measuring per-layer quantization error")
    rows = layer_errors(fp32_path, int8_path, eval_set.inputs[:LAYER_REPORT_IMAGES], workdir)
    report["layers"] = {"images": min(len(eval_set), LAYER_REPORT_IMAGES), "worst_first": rows}
    return report


def host_skipped(target: str, host_run: bool | None) -> str | None:
    """Why the drift is not also run on this host's int8 kernels (None: it is). By default only when they are
    the target's: an arm64 model on an x86 host runs other kernels than it was made for (ARM's compute what
    the emulated run computes, docs/arm-emulation.md), and 400 more photos cost ~7 s of a 60 s budget."""
    from quantize.presets import host_target

    host = host_target()
    if host_run or (host_run is None and target == host):
        return None
    return f"made for {target} int8 kernels, this host has {host} ones: `python -m benchmarks run` measures them"
