"""The steps an int8 recipe is made of, named once for every backend.

A recipe (`--int8-recipe`) is a tuple of pass names per backend; each backend module says how it carries
out the passes that make sense for it (`ONNX_PASSES` in `quantize.presets`, `TFLITE_PASSES` in
`quantize.tflite_int8`) as overrides of its own settings object, and which passes each recipe applies. The
sidecar of every int8 artifact lists the passes it was made with, so a report says how each model was made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar


@dataclass(frozen=True)
class Pass:
    name: str
    does: str  # one line for reports and --help


PASSES: dict[str, Pass] = {
    p.name: p
    for p in (
        Pass("float-stem", "conv1 (0-4300 output range, 17-unit int8 steps before LRN), its ReLU and pool1 stay float"),
        Pass(
            "float-stem-activations",
            "conv1's input and output and pool1's stay float, conv1's weights int8 (the file does not grow)",
        ),
        Pass(
            "bias-correction", "each layer's bias absorbs the mean error its int8 weights cause on calibration inputs"
        ),
        Pass("pool-own-grid", "the 7x7 average pool's output gets its own int8 range instead of inception 5b's"),
        Pass("gptq-rounding", "weights rounded by GPTQ on the calibration images (quantize.rounding), on both grids"),
        Pass("hybrid-classifier", "the classifier reads float features and writes float logits; its weights int8"),
        Pass("shared-concat-grid", "each Concat's inputs quantized on the Concat's grid: rounded once, not twice"),
        Pass(
            "int16-activations",
            "activations on int16 grids, weights int8 (A16W8: NPU kernels such as Qualcomm HTP's; CPUs run float)",
        ),
        Pass(
            "weights-only",
            "int8 weights behind a dequantize, every activation float (W8A32): the size of int8, float arithmetic",
        ),
        Pass(
            "palette-weights",
            "8-bit palettized weights (256 levels per layer x a scale per channel, GPTQ-rounded), activations float",
        ),
        Pass(
            "equalize-channels",
            "W8A32 only: channels rescaled between layers (same function) so each int8 row's grid fits its weights",
        ),
        Pass(
            "float16-sensitive",
            "W8A32 only: the convolutions of most measured logit error per byte keep float16 weights (1% of FP32's)",
        ),
        Pass("mse-ranges", "activation ranges of least int8 error instead of min-max (quantize.ranges)"),
        Pass(
            "wide-5x5-inputs",
            "the 16-48-channel activations feeding 5x5 convs get 1.5x their calibrated range (unseen photos exceed it)",
        ),
    )
}

Settings = TypeVar("Settings")


def apply_passes(base: Settings, names: Iterable[str], implementations: Mapping[str, Mapping[str, Any]]) -> Settings:
    """`base` with the overrides of every pass in `names` (tuples are joined, other values replaced)."""
    settings = base
    for name in names:
        if name not in PASSES:
            raise KeyError(f"unknown int8 pass {name!r}")
        for field, value in implementations[name].items():
            current = getattr(settings, field)
            merged = tuple(dict.fromkeys((*current, *value))) if isinstance(current, tuple) else value
            settings = replace(settings, **{field: merged})
    return settings
