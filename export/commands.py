"""The `run_command` of each row of `edge_runtime.formats.FORMATS`: parsed arguments -> `export_model`.

Only what is about the command line stays here: options given without the `--quantize` they need are an
error, not silently ignored. Everything else (the hold-out of calibration photos, the drift report, the
publishing) is `export.pipeline`, which scripts call directly.
"""

from __future__ import annotations

import argparse

from edge_runtime.formats import QUANTIZE_OPTIONS
from export.errors import ToolkitError
from export.formats import OPTIONS, option_default
from export.onnx_export import DEFAULT_OPSET, check_opset
from export.pipeline import check_paths, export_model
from export.preprocess import check_io
from quantize.recipes import check_recipe


def _common(args: argparse.Namespace) -> dict:
    """The options every format has, as `export_model` keywords."""
    return {
        "weights": args.weights,
        "num_classes": args.num_classes,
        "labels": args.labels,
        "seed": args.seed,
        "out": args.out,
        "eval_dir": args.eval,
        "evaluate": not args.no_eval,
        "quantize": args.quantize,
        "calibration": args.calib,
        "calib_size": args.calib_size,
        "int8_recipe": args.int8_recipe,
    }


def _check_quantize_options(args: argparse.Namespace) -> None:
    """Options that only mean something with --quantize are an error without it, not silently ignored."""
    if args.quantize:
        return
    given = [
        flag
        for flag, value, default in (
            (OPTIONS[key].flags[0], getattr(args, key), option_default(key)) for key in QUANTIZE_OPTIONS
        )
        if value != default
    ]
    if given:
        raise ToolkitError(f"{', '.join(given)} only apply with --quantize int8")


def run_onnx(args: argparse.Namespace) -> int:
    check_opset(args.opset or DEFAULT_OPSET)  # cheap checks first, in the order they always came
    check_paths(args.out, args.eval, not args.no_eval)
    _check_quantize_options(args)
    check_recipe("onnx", args.int8_recipe)
    if args.quantize and (args.max_drop is not None or args.min_agreement is not None):
        from quantize.api import Int8Preset
        from quantize.presets import refuse_accuracy_control

        refuse_accuracy_control(Int8Preset("onnx", args.int8_recipe, args.target).settings())
    export_model(
        "onnx",
        **_common(args),
        target=args.target,
        exclude=tuple(args.exclude),
        max_drop=args.max_drop,
        min_agreement=args.min_agreement,
        calibration_method=args.calibration,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        simplify=not args.no_simplify,
    )
    return 0


def run_tflite(args: argparse.Namespace) -> int:
    check_io(args.io, args.quantize)
    if args.quantize != "int8" and (args.calib is not None or args.calib_size != option_default("calib_size")):
        raise ToolkitError("--calib and --calib-size only apply with --quantize int8")
    if args.quantize != "int8" and args.int8_recipe != option_default("int8_recipe"):
        raise ToolkitError("--int8-recipe only applies with --quantize int8")
    check_recipe("tflite", args.int8_recipe)
    export_model("tflite", **_common(args), io=args.io)
    return 0
