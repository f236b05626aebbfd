"""The CLI's options, declared once: a format's row in `edge_runtime.formats` lists the keys it takes.

Options, not formats: the parser (`export.cli`), the help text and the option checks (`export.commands`) read
these by the keys in each row, so a new format reuses them or adds its own here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export import paths
from export.preprocess import IO_TYPES
from quantize.presets import CALIBRATION_METHODS, DEFAULT_CALIB_SIZE, DEFAULT_TARGET, HOST_TARGET, PRESETS
from quantize.recipes import DEFAULT_RECIPE, RECIPE_CHOICES


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    kwargs: dict[str, Any]


OPTIONS: dict[str, Option] = {
    "weights": Option(
        ("--weights",),
        {
            "type": Path,
            "metavar": "PATH",
            "help": (
                "state_dict (.pt/.pth), torchvision state_dict, or BVLC GoogLeNet .onnx "
                "(default: $GOOGLENET_WEIGHTS, else random init)"
            ),
        },
    ),
    "num_classes": Option(
        ("--num-classes",),
        {
            "type": positive_int,
            "metavar": "N",
            "help": "classifier size when the weights are not a 1000-class ImageNet model",
        },
    ),
    "labels": Option(
        ("--labels",),
        {"type": Path, "metavar": "FILE", "help": "class names, one per line (or synset_words.txt format)"},
    ),
    "seed": Option(
        ("--seed",), {"type": int, "default": 0, "help": "seed for random init and calibration sampling (default 0)"}
    ),
    "out": Option(
        ("--out",),
        {"type": Path, "default": paths.DEFAULT_OUT, "metavar": "DIR", "help": "output folder (default artifacts/)"},
    ),
    "opset": Option(
        ("--opset",),
        {"type": int, "default": None, "help": "ONNX opset (default: the newest the whole pipeline supports)"},
    ),
    "dynamic_batch": Option(
        ("--dynamic-batch",), {"action": "store_true", "help": "symbolic batch axis instead of batch 1"}
    ),
    "no_simplify": Option(("--no-simplify",), {"action": "store_true", "help": "skip onnxsim/onnxslim"}),
    "eval": Option(
        ("--eval",),
        {
            "type": Path,
            "metavar": "DIR",
            "help": "labelled images for the accuracy report (default: the shared ImageNet sample, if present)",
        },
    ),
    "no_eval": Option(("--no-eval",), {"action": "store_true", "help": "skip the accuracy report"}),
    "calib": Option(
        ("--calib",),
        {
            "type": Path,
            "metavar": "DIR|NPY",
            "help": "calibration images (folder, recursive) or preprocessed .npy/.npz (default: built-in photos)",
        },
    ),
    "calib_size": Option(
        ("--calib-size",),
        {
            "type": int,
            "default": DEFAULT_CALIB_SIZE,
            "metavar": "N",
            "help": f"calibration images drawn from --calib (default {DEFAULT_CALIB_SIZE})",
        },
    ),
    "calibration": Option(
        ("--calibration",),
        {"choices": CALIBRATION_METHODS, "default": None, "help": "range estimator"},
    ),
    "target": Option(
        ("--target",),
        {
            "choices": (*PRESETS, HOST_TARGET),
            "default": DEFAULT_TARGET,
            "help": f"int8 kernel target (default {DEFAULT_TARGET}; {HOST_TARGET}: this machine's, by its ISA)",
        },
    ),
    "exclude": Option(
        ("--exclude",),
        {"nargs": "+", "default": [], "metavar": "NODE", "help": "node names to keep in float"},
    ),
    "max_drop": Option(
        ("--max-drop",),
        {
            "type": float,
            "default": None,
            "metavar": "PP",
            "help": "accuracy-aware int8: keep the fewest activations float until the top-1 drop on the "
            "calibration photos is at most PP points",
        },
    ),
    "min_agreement": Option(
        ("--min-agreement",),
        {
            "type": float,
            "default": None,
            "metavar": "F",
            "help": "accuracy-aware int8: ... until top-1 agreement with FP32 on the calibration photos is at least F",
        },
    ),
    "io": Option(
        ("--io",),
        {
            "choices": IO_TYPES,
            "default": "float32",
            "help": "int8 model input/output type; uint8 takes raw RGB camera pixels (default float32)",
        },
    ),
    "int8_recipe": Option(
        ("--int8-recipe",),
        {
            "choices": RECIPE_CHOICES,
            "default": DEFAULT_RECIPE,
            "help": "learned (default): float stem, the pool on its own grid, the classifier on float features, "
            "GPTQ weight rounding (TFLite: + bias correction; ONNX: + shared Concat grids); toolkit: the same "
            "without the GPTQ fit (faster); plain: the converter/ORT alone; learned-a16 (ONNX only): learned with "
            "int16 activations, for NPUs with A16W8 kernels; learned-weights: learned's int8 weights, float "
            "activations (W8A32: int8's size, float arithmetic); learned-palette (ONNX only): 8-bit palettized "
            "weights, a fifth less weight error than int8's grid, float activations (W8A32, FP32's speed); "
            "learned-mixed (TFLite only): learned-weights with channels equalized and the most sensitive "
            "convolutions in float16 (about the palette's error, on LiteRT's affine format)",
        },
    ),
}


def option_default(key: str) -> Any:
    """The CLI default of option `key` (declared once, in `OPTIONS`)."""
    return OPTIONS[key].kwargs.get("default")
