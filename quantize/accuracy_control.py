"""Accuracy-aware int8 (`--max-drop PP`, `--min-agreement F`): keep the fewest activations in float until
the int8 model meets the budget on validation photos (never the evaluation photos).

In the spirit of NNCF's `quantize_with_accuracy_control`: rank the quantized activations by how much
keeping each in float lowers the logit error against FP32 (a continuous score, so a ranking exists even
where agreement does not move), then keep the top k float, for the smallest k whose model meets the budget
(k doubled until it does, then halved back by bisection). Activations that share one grid through a node
(`grid_groups`: a MaxPool's input and output, a Concat's inputs and output) are ranked and kept as one:
alone, each would score next to nothing, the others still rounding its values on the same grid. Weights
stay int8, so the file does not grow; the cost is the convolutions that now compute in float, in MACs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.formats import OnnxSession
from export.evaluation import EvalSet, accuracy, fidelity, round_floats
from export.ui import progress, step
from quantize.onnx_float import float_activations, floatable_activations, grid_groups

RANKING_IMAGES = 16  # images each candidate is scored on; the budget itself is checked on all of them


@dataclass(frozen=True)
class AccuracyBudget:
    """What the int8 model must keep on the validation photos; None = not asked."""

    max_drop_pp: float | None = None
    min_agreement: float | None = None

    def __bool__(self) -> bool:
        return self.max_drop_pp is not None or self.min_agreement is not None

    def holds(self, figures: dict) -> bool:
        if self.min_agreement is not None and figures["agreement"] < self.min_agreement:
            return False
        return self.max_drop_pp is None or figures["drop_pp"] <= self.max_drop_pp


def logits_of(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """Emulated (graph optimisations off): the target-independent arithmetic the budget is promised for."""
    return OnnxSession(model.SerializeToString(), optimize=False)(images)


def judge(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Agreement with FP32, top-1 drop over the labelled rows (0 when none is labelled), logit RMS error."""
    ref, own = accuracy(reference, labels), accuracy(logits, labels)
    return {
        "agreement": fidelity(reference, logits)["top1_agreement"],
        "drop_pp": 100 * (ref["top1"] - own["top1"]) if ref and own else 0.0,
        "logit_rms": float(np.sqrt(np.mean((logits - reference) ** 2))),
    }


def float_macs(model: onnx.ModelProto, macs_by_node: dict[str, int]) -> int:
    """MACs of the Conv/Gemm nodes that are not between a DequantizeLinear and a QuantizeLinear: the ones an
    int8 runtime computes in float."""
    producers = {output: node for node in model.graph.node for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        source = producers.get(node.input[0])
        quantized_in = source is not None and source.op_type == "DequantizeLinear"
        quantized_out = any(r.op_type == "QuantizeLinear" for r in readers.get(node.output[0], []))
        if not (quantized_in and quantized_out):
            total += macs_by_node.get(node.name, 0)
    return total


def candidates(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """The groups of activations that can be kept float together (`grid_groups`, floatable members only)."""
    floatable = set(floatable_activations(model))
    groups = ([name for name in group if name in floatable] for group in grid_groups(model))
    return [tuple(group) for group in groups if group]


def rank_activations(
    model: onnx.ModelProto, images: np.ndarray, reference: np.ndarray
) -> list[tuple[tuple[str, ...], float]]:
    """Each candidate group with the logit mean-square error removed by keeping it (alone) in float, largest
    first (ties broken by name, so the order is reproducible)."""
    base = float(np.mean((logits_of(model, images) - reference) ** 2))
    scores = []
    for group in progress(candidates(model), "Ranking activations"):
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        float_activations(trial, group)
        scores.append((group, base - float(np.mean((logits_of(trial, images) - reference) ** 2))))
    return sorted(scores, key=lambda item: (-item[1], item[0]))


def keep_float_until(
    model: onnx.ModelProto,
    fp32: onnx.ModelProto,
    images: np.ndarray,
    labels: np.ndarray,
    budget: AccuracyBudget,
    macs_by_node: dict[str, int] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """The model with the fewest top-ranked activations kept float that meets `budget` on `images`."""
    reference = logits_of(fp32, images)
    start = judge(reference, logits_of(model, images), labels)
    report: dict = {
        "budget": asdict(budget),
        "validation_images": len(images),
        "before": start,
        "kept_float": [],
        "kept_groups": [],
    }
    macs = macs_by_node or {}
    report["float_macs_before"] = float_macs(model, macs)
    if budget.holds(start):
        unchanged = report["float_macs_before"]
        return model, {**report, "after": start, "met": True, "float_macs_after": unchanged, "trials": {}}
    step(f"accuracy control: ranking activations on {min(RANKING_IMAGES, len(images))} validation images")
    ranked = [group for group, _ in rank_activations(model, images[:RANKING_IMAGES], reference[:RANKING_IMAGES])]

    def top(k: int) -> list[str]:
        return [name for group in ranked[:k] for name in group]

    def trial(k: int) -> tuple[onnx.ModelProto, dict]:
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        float_activations(candidate, top(k))
        return candidate, judge(reference, logits_of(candidate, images), labels)

    tried: dict[int, tuple[onnx.ModelProto, dict]] = {}
    high = 1
    while True:
        tried[high] = trial(high)
        if budget.holds(tried[high][1]) or high >= len(ranked):
            break
        high = min(2 * high, len(ranked))
    low = high // 2  # the largest k known (or assumed, for 0) to miss the budget
    while budget.holds(tried[high][1]) and high - low > 1:
        middle = (low + high) // 2
        tried[middle] = trial(middle)
        if budget.holds(tried[middle][1]):
            high = middle
        else:
            low = middle
    chosen, figures = tried[high]
    return chosen, {
        **report,
        "after": figures,
        "met": budget.holds(figures),
        "kept_float": top(high),
        "kept_groups": [list(group) for group in ranked[:high]],
        "float_macs_after": float_macs(chosen, macs),
        "trials": {str(k): tried[k][1] for k in sorted(tried)},
    }


def control_accuracy(quantized: onnx.ModelProto, fp32_path: Path, validation: EvalSet, budget: AccuracyBudget) -> tuple:
    """`quantize.accuracy_control` on the validation photos and their mirror images (twice the near-ties)."""
    from export.inspect_onnx import count_file

    images = np.concatenate([validation.inputs, validation.inputs[..., ::-1]]).astype(np.float32)
    labels = np.concatenate([validation.labels, validation.labels])
    macs = {layer.name: layer.macs for layer in count_file(fp32_path).layers}
    model, report = keep_float_until(quantized, onnx.load(str(fp32_path)), images, labels, budget, macs)
    report["validation"] = f"{len(validation)} calibration photos and their mirror images"
    step(summary_line(report, sum(macs.values())))
    return model, round_floats(report)


def summary_line(report: dict, total_macs: int) -> str:
    """What the mode did, in one line: the budget, the figures before and after, what it cost in float MACs."""
    before, after = report["before"], report["after"]
    figures = (f"agreement {100 * before['agreement']:.1f}% -> {100 * after['agreement']:.1f}%, "
               f"logit RMS {before['logit_rms']:.4f} -> {after['logit_rms']:.4f} on {report['validation_images']} "
               "validation views")  # fmt: skip
    if not report["kept_float"]:
        return f"accuracy control: the budget already holds ({figures})"
    kept = f"{len(report['kept_float'])} activations ({len(report['kept_groups'])} groups) kept float"
    share = f" ({100 * report['float_macs_after'] / total_macs:.0f}% of the model)" if total_macs else ""
    macs = f"float MACs {report['float_macs_before'] / 1e9:.2f} -> {report['float_macs_after'] / 1e9:.2f} G{share}"
    budget = report["budget"]
    asked = " and ".join(
        ([f"agreement >= {100 * budget['min_agreement']:g}%"] if budget["min_agreement"] is not None else [])
        + ([f"top-1 drop <= {budget['max_drop_pp']:g} pp"] if budget["max_drop_pp"] is not None else [])
    )
    verdict = f"budget ({asked}) met" if report["met"] else f"budget ({asked}) NOT met even so"
    return f"accuracy control: {verdict}: {kept}; {figures}; {macs}"
