"""Target presets: which int8 types and ranges each target's kernels need (cf. optimum's
`AutoQuantizationConfig.arm64/avx2/avx512_vnni`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from export.errors import ToolkitError

CalibrationName = Literal["minmax", "entropy", "percentile", "mse"]
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile", "mse")
# Measured on BVLC weights and 400 held-out ImageNet photos (docs/quantization-studies.md): the best here.
DEFAULT_CALIBRATION = "minmax"
DEFAULT_CALIB_SIZE = 200  # calibration images drawn when the user gives none


@dataclass(frozen=True)
class QuantizationConfig:
    """Static QDQ quantization settings for ONNX Runtime. Weights are always per-channel symmetric
    int8 with int32 bias; activations and `reduce_range` are what differs between targets."""

    target: str
    activation_type: Literal["int8", "uint8", "int16"]
    activation_symmetric: bool
    reduce_range: bool
    per_channel: bool = True
    calibration: CalibrationName = "minmax"
    percentile: float = 99.999
    exclude: tuple[str, ...] = ()
    why: str = ""
    # "nearest" (ONNX Runtime's own) or a `quantize.rounding` method: weights pre-rounded onto ORT's grid
    rounding: str = "nearest"
    # op types whose output stays float (ORT's OpTypesToExcludeOutputQuantization): ["Gemm"] keeps the logits
    # out of an int8 grid whose step (~0.2 logit) flips near-ties
    float_outputs: tuple[str, ...] = ()
    # op types whose activation inputs stay float while their weights stay int8 (`quantize.onnx_float`):
    # ["Gemm"] reads the pooled features unrounded, like the TFLite recipe's hybrid classifier
    float_inputs: tuple[str, ...] = ()
    # give every input of a Concat the Concat output's range: the branch outputs are then rounded once, on the
    # grid the concatenation keeps, instead of twice (their own grid, then the coarser concatenated one)
    shared_concat_ranges: bool = False
    # nodes whose activations (what they read and write) stay float while their weights stay int8
    # (`quantize.onnx_float`): a float stem that does not grow the file
    float_activation_nodes: tuple[str, ...] = ()
    # the activations feeding 5x5 convolutions (the 16-48-channel 5x5-reduce outputs) get this many times their
    # calibrated maximum: so few channels give an unstable maximum that unseen photos exceed by up to 1.6x
    wide_5x5_inputs: float = 1.0
    # every activation float, the weights int8 (W8A32: the size of int8, the weights' error alone, float arithmetic)
    weights_only: bool = False
    # "int8" (per-channel symmetric, QDQ) or "palette" (`quantize.palette`: a uint8 index per weight into a
    # 256-level codebook per layer, unpacked by Cast/Gather/Mul that ONNX Runtime folds at load; W8A32)
    weight_grid: Literal["int8", "palette"] = "int8"
    recipe: str = "toolkit"  # the name in RECIPES these settings came from (recorded in the sidecar)
    passes: tuple[str, ...] = ()  # that recipe's `quantize.passes`, in the order applied

    @classmethod
    def arm64(cls, **overrides) -> QuantizationConfig:
        """ARM (Raspberry Pi, phones): int8 activations on the sdot/smmla kernels; no saturation."""
        return replace(
            cls("arm64", "int8", False, False, why="ARM int8 kernels accumulate in int32 without saturation"),
            **overrides,
        )

    @classmethod
    def x86_avx2(cls, **overrides) -> QuantizationConfig:
        """x86 without VNNI: u8s8 with 7-bit weights so vpmaddubsw's int16 sums cannot saturate."""
        return replace(
            cls("x86-avx2", "uint8", False, True, why="u8s8 on AVX2 saturates int16 pairs; reduce_range avoids it"),
            **overrides,
        )

    @classmethod
    def x86_vnni(cls, **overrides) -> QuantizationConfig:
        """x86 with AVX512-VNNI/AVX-VNNI: u8s8 dot products accumulate in int32; full 8-bit range."""
        return replace(
            cls("x86-vnni", "uint8", False, False, why="VNNI accumulates u8s8 in int32; full range is safe"),
            **overrides,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exclude"] = list(self.exclude)
        data["float_outputs"] = list(self.float_outputs)
        data["float_inputs"] = list(self.float_inputs)
        data["float_activation_nodes"] = list(self.float_activation_nodes)
        data["passes"] = list(self.passes)
        if self.weight_grid == "palette":
            data.update(weight_type="uint8 index into a float32 codebook", bias_type="float32", format="Gather LUT")
            return data
        data["weight_type"] = "int8"
        data["weight_symmetric"] = True
        data["bias_type"] = "int32"
        # weights only: Cast -> Mul instead of DequantizeLinear, so that ONNX Runtime folds them at load
        data["format"] = "Cast/Mul dequantization" if self.weights_only else "QDQ"
        return data


# The float stem of the TFLite recipe: conv1's 0-4300 output range quantized in 17-unit steps right before LRN.
FLOAT_STEM = ("conv1.conv", "conv1.relu", "pool1")
# How ONNX carries out each pass of `quantize.passes` it supports: overrides of `QuantizationConfig`.
# chosen on validation splits (logit RMS, seeds 0-2, docs/int8-fidelity.md); the same factor on both backends
WIDE_5X5_FACTOR = 1.5
ONNX_PASSES: dict[str, dict] = {
    "float-stem": {"exclude": FLOAT_STEM},
    "float-stem-activations": {"float_activation_nodes": FLOAT_STEM},
    # int8 AveragePool keeps inception 5b's coarse scale; float, the pooled features get their own grid
    "pool-own-grid": {"exclude": ("avgpool",)},
    "gptq-rounding": {"rounding": "gptq"},  # pre-rounded weights that ORT's round-to-nearest reproduces
    "hybrid-classifier": {"float_inputs": ("Gemm",), "float_outputs": ("Gemm",)},
    "shared-concat-grid": {"shared_concat_ranges": True},
    "mse-ranges": {"calibration": "mse"},
    "int16-activations": {"activation_type": "int16", "activation_symmetric": False},
    "wide-5x5-inputs": {"wide_5x5_inputs": WIDE_5X5_FACTOR},
    # no int8 kernel runs, so no u8s8 saturation to avoid: full 8-bit weights on every target
    "weights-only": {"weights_only": True, "reduce_range": False},
    "palette-weights": {"weight_grid": "palette", "weights_only": True, "reduce_range": False},
}
# `toolkit`: `learned` without its GPTQ fit, and with a float stem whose conv1 weights stay int8 (so the file stays
# within 26% of FP32); chosen on validation splits: logit RMS 0.138 -> 0.066 (docs/int8-fidelity.md)
_TOOLKIT = ("float-stem-activations", "pool-own-grid", "hybrid-classifier", "shared-concat-grid")
# conv1's weights int8 (GPTQ-rounded) under a float stem: the file stays within 26% of FP32 (conv1 float: 26.06%),
# for the same logit error on validation splits (0.0534 against 0.0540 mean of seeds 0-2; docs/int8-fidelity.md)
# + the 5x5-reduce outputs' ranges 1.5x (session 13: logit RMS on validation splits 0.0452 / 0.0454 / 0.0696 ->
# 0.0442 / 0.0451 / 0.0433; five draws 98.70 / 97.75% -> 98.95 / 98.50% mean / worst agreement)
_LEARNED = (
    "gptq-rounding",
    "float-stem-activations",
    "pool-own-grid",
    "hybrid-classifier",
    "shared-concat-grid",
    "wide-5x5-inputs",
)
# Named recipes (`--int8-recipe`, the names every int8 format defines), as ONNX passes on top of any target preset.
RECIPES: dict[str, tuple[str, ...]] = {
    "toolkit": _TOOLKIT,  # `learned` without its fit; LRN (no int8 kernel exists) and the max pools after it stay float
    "plain": (),  # ONNX Runtime's static quantization alone
    # the default (quantize.recipes.DEFAULT_RECIPE): 52-56 s on 2 cores with its fit; chosen on validation splits
    # (docs/int8-fidelity.md); GPTQ removes the mean error bias correction would (so no bias-correction pass here)
    "learned": _LEARNED,
    # opt-in, ONNX only: `learned` with int16 activations (A16W8), for accelerators with such kernels
    "learned-a16": (*_LEARNED, "int16-activations"),
    # opt-in: `learned`'s int8 weights with every activation float (W8A32), for GPU delegates and short flash
    "learned-weights": (*_LEARNED, "weights-only"),
    # opt-in, ONNX only: 8-bit palettized weights (GPTQ onto a codebook per layer), conv1 float, every activation
    # float; a fifth less weight error than the int8 grid (docs/int8-fidelity.md, session 17), FP32's speed
    "learned-palette": ("gptq-rounding", "float-stem", "palette-weights"),
    # single steps, measured on their own (docs/int8-fidelity.md)
    "learned-float-conv1": ("gptq-rounding", "float-stem", *_LEARNED[2:5]),  # `learned` until session 11
    "learned-calibrated-5x5": _LEARNED[:5],  # `learned` until session 13 (the 5x5-reduce ranges as calibrated)
    "float-stem": ("float-stem",),
    "float-pool": ("pool-own-grid",),
    "hybrid-classifier": ("hybrid-classifier",),
    "concat": ("shared-concat-grid",),
    "mse": ("mse-ranges",),
}


def refuse_accuracy_control(config: QuantizationConfig) -> None:
    """The accuracy-aware mode keeps activations float; a palette recipe has no other kind (a ToolkitError)."""
    if config.weight_grid == "palette":
        raise ToolkitError(f"--max-drop/--min-agreement keep activations float; {config.recipe}'s all are already")


def recipe_passes(name: str) -> tuple[str, ...]:
    try:
        return RECIPES[name]
    except KeyError:
        raise ToolkitError(f"unknown --int8-recipe {name!r} (choose from {', '.join(RECIPES)})") from None


PRESETS = {
    "arm64": QuantizationConfig.arm64,
    "x86-avx2": QuantizationConfig.x86_avx2,
    "x86-vnni": QuantizationConfig.x86_vnni,
}
DEFAULT_TARGET = "arm64"
# `--target host`: the preset of the machine running the export (a CI runner building for itself, a benchmark)
HOST_TARGET = "host"


def host_target() -> str:
    """The preset for this machine's int8 kernels: arm64 on ARM, else x86-vnni or x86-avx2 by its ISA."""
    from edge_runtime.hostinfo import has_vnni, host_facts

    facts = host_facts()
    if facts["machine"].lower() in ("aarch64", "arm64"):
        return "arm64"
    return "x86-vnni" if has_vnni(facts) else "x86-avx2"


def preset(target: str, **overrides) -> QuantizationConfig:
    if target == HOST_TARGET:
        target = host_target()
    try:
        factory = PRESETS[target]
    except KeyError:
        choices = ", ".join([*PRESETS, HOST_TARGET])
        raise ToolkitError(f"unknown --target {target!r} (choose from {choices})") from None
    if overrides.get("calibration", "minmax") not in CALIBRATION_METHODS:
        raise ToolkitError(f"unknown --calibration {overrides['calibration']!r}")
    return factory(**overrides)


def recipe(name: str, target: str = DEFAULT_TARGET, exclude: tuple[str, ...] = (), **overrides) -> QuantizationConfig:
    """The ONNX Runtime settings of int8 recipe `name` (its passes) on top of target preset `target`, with the
    user's `--exclude` nodes added to the recipe's."""
    from quantize.passes import apply_passes

    passes = recipe_passes(name)
    config = apply_passes(preset(target, **overrides), passes, ONNX_PASSES)
    merged = tuple(dict.fromkeys((*config.exclude, *exclude)))
    return replace(config, exclude=merged, recipe=name, passes=passes)
