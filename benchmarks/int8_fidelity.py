"""Both int8 backends over several calibration draws: agreement, top-1 drop, logit error, photos at risk.

    python -m benchmarks.int8_fidelity --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --calib-size 100 --seeds 0 1 2 3 4 \\
        --recipes toolkit learned --backends onnx tflite --out artifacts/int8-fidelity.json

One seed draws one calibration set; the other photos of the folder are held out and never used to choose
anything. Every int8 model is judged against the same FP32 ONNX model: the ONNX one emulated (ONNX
Runtime with graph optimisations off, the target-independent figure), the TFLite one in LiteRT.
"At risk" counts the held-out photos whose FP32 top-1 margin is below that photo's int8 logit error
(RMS over the classes): agreement on 400 photos moves in 0.25 pp steps and hinges on those near-ties.
Backend `weights`: PyTorch, float activations, weights rounded as the TFLite recipe rounds them (the floor
that weight rounding alone sets; size not measured).
Judge by the mean and the worst draw, never by one draw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.errors import EXIT_USAGE, ToolkitError
from export.evaluation import accuracy, fidelity, load_eval_folder, predict, round_floats

METRICS = ("top1_agreement", "top1_drop_pp", "logit_rms", "at_risk", "size_ratio", "seconds")


def figures(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    error = np.sqrt(np.mean((logits - reference) ** 2, axis=1))
    return {
        "top1_agreement": fidelity(reference, logits)["top1_agreement"],
        "top1_drop_pp": 100 * (accuracy(reference, labels)["top1"] - accuracy(logits, labels)["top1"]),
        "logit_rms": float(np.sqrt(np.mean((logits - reference) ** 2))),
        "at_risk": int((margin < error).sum()),
    }


def _onnx(fp32: Path, loaded, source, recipe: str, out: Path, inputs: np.ndarray) -> tuple[np.ndarray, float]:
    from edge_runtime.sessions import throughput_runner
    from quantize.api import Int8Preset, quantize

    quantize(fp32, source, Int8Preset("onnx", recipe), out_path=out, reference=loaded.model)
    return predict(throughput_runner(out, optimize=False), inputs, "int8 ONNX (emulated)"), out.stat().st_size


def _tflite(loaded, calibration: np.ndarray, recipe: str, out: Path, inputs_nchw: np.ndarray):
    from edge_runtime.sessions import TfliteRunner
    from quantize.api import Int8Preset
    from quantize.tflite_quant import convert

    out.write_bytes(convert(loaded, "int8", "float32", calibration, Int8Preset("tflite", recipe).settings()))
    return predict(TfliteRunner(out), inputs_nchw.transpose(0, 2, 3, 1), "int8 TFLite"), out.stat().st_size


def validation_indices(size: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of a draw's `size` calibration photos are fitted on and which `count` are held out (sorted)."""
    order = np.random.default_rng(1000 + seed).permutation(size)
    return np.sort(order[count:]), np.sort(order[:count])


def _validation_split(source, loaded, calib: Path, count: int, seed: int):
    """Calibrate on all but `count` of the draw's calibration photos, measure on those `count`: how passes are
    chosen without looking at the evaluation photos."""
    from export.evaluation import load_eval_set
    from quantize.calibration import ArraySource

    fit, val = validation_indices(len(source.chosen), count, seed)
    images = source.arrays()
    held_out = load_eval_set([source.chosen[i] for i in val], calib, loaded.preprocess, loaded.labels, "Validation")
    return ArraySource(images[fit], origin=f"{len(fit)} of the calibration draw"), held_out


def _weights_only(loaded, calibration_nchw: np.ndarray, recipe: str, inputs: np.ndarray) -> tuple[np.ndarray, int]:
    """PyTorch with float activations and the weights rounded as the TFLite recipe rounds them (conv1 float):
    the floor the weight rounding alone sets."""
    import torch

    from quantize.api import Int8Preset
    from quantize.rounding import nearest_ints, quantized_layers, to_float
    from quantize.tflite_quant import fitted_weights

    config = Int8Preset("tflite", recipe).settings()
    skip = ("conv1.conv",) if config.float_stem else ()
    model, _ = fitted_weights(loaded.model, calibration_nchw, config)
    if config.rounding == "nearest":
        with torch.no_grad():
            for module in quantized_layers(model, skip).values():
                w = module.weight.reshape(module.weight.shape[0], -1)
                module.weight.copy_(to_float(w, nearest_ints(w)).reshape(module.weight.shape))
    with torch.no_grad():
        logits = np.concatenate(
            [model(torch.from_numpy(inputs[i : i + 25])).numpy() for i in range(0, len(inputs), 25)]
        )
    return logits, 0


def run(
    weights: Path,
    calib: Path,
    calib_size: int,
    seeds: list[int],
    recipes: list[str],
    backends: list[str],
    validation: int = 0,
    progress_path: Path | None = None,
) -> dict:
    import torch

    from edge_runtime.sessions import throughput_runner
    from export.onnx_export import OnnxExportOptions, export_onnx
    from export.weights import load_model
    from quantize.calibration import FolderSource

    torch.set_num_threads(2)
    loaded = load_model(weights)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(loaded, OnnxExportOptions(out_dir=Path(tmp), evaluate=False)).path
        fp32_size = fp32.stat().st_size
        for seed in seeds:
            source = FolderSource(calib, loaded.preprocess, size=calib_size, seed=seed)
            if validation:
                source, held_out = _validation_split(source, loaded, calib, validation, seed)
            else:
                held_out = load_eval_folder(calib, loaded.preprocess, loaded.labels, exclude=set(source.chosen))
            reference = predict(throughput_runner(fp32), held_out.inputs, "FP32")
            nhwc = np.concatenate(list(source.batches())).transpose(0, 2, 3, 1).copy()
            for recipe in recipes:
                for backend in backends:
                    started = time.perf_counter()
                    out = Path(tmp) / f"{seed}-{recipe}.int8.{backend}"
                    if backend == "onnx":
                        logits, size = _onnx(fp32, loaded, source, recipe, out, held_out.inputs)
                    elif backend == "weights":
                        calibration = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
                        logits, size = _weights_only(loaded, calibration, recipe, held_out.inputs)
                    else:
                        logits, size = _tflite(loaded, nhwc, recipe, out, held_out.inputs)
                    cell = {
                        "seed": seed,
                        "recipe": recipe,
                        "backend": backend,
                        **figures(reference, logits, held_out.labels),
                        "size_ratio": size / fp32_size,
                        "seconds": time.perf_counter() - started,  # quantize + evaluate
                    }
                    print(cell, flush=True)
                    cells.append(cell)
                    if progress_path is not None:  # a long run keeps what it measured so far
                        from export.artifacts import write_json

                        write_json(progress_path, round_floats({"cells": cells}))
    summary = {}
    for recipe in recipes:
        for backend in backends:
            mine = [c for c in cells if c["recipe"] == recipe and c["backend"] == backend]
            row = {}
            for metric in METRICS:
                values = [c[metric] for c in mine]
                row[f"{metric}_mean"] = float(np.mean(values))
                row[f"{metric}_worst"] = float(min(values) if metric == "top1_agreement" else max(values))
            summary[f"{backend}/{recipe}"] = row
    return round_floats(
        {
            "weights": str(weights),
            "calib": str(calib),
            "calib_size": calib_size,
            "eval_images": len(held_out),
            "evaluated_on": f"{validation} calibration photos left out of the fit" if validation else "held-out photos",
            "seeds": seeds,
            "cells": cells,
            "summary": summary,
        }
    )


def render(report: dict) -> str:
    """A markdown table: per draw agreement / drop / logit RMS / at risk, then mean and worst."""
    keys = list(report["summary"])
    lines = [
        "| draw | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    by = {(c["seed"], f"{c['backend']}/{c['recipe']}"): c for c in report["cells"]}

    def cell(c: dict, suffix: str = "") -> str:
        return (
            f"{100 * c['top1_agreement' + suffix]:.2f}% / {c['top1_drop_pp' + suffix]:+.2f} pp / "
            f"{c['logit_rms' + suffix]:.3f} / {c['at_risk' + suffix]:.0f}"
        )

    for seed in report["seeds"]:
        lines.append(f"| {seed} | " + " | ".join(cell(by[seed, k]) for k in keys) + " |")
    summary = report["summary"]
    lines.append("| mean | " + " | ".join(cell(summary[k], "_mean") for k in keys) + " |")
    lines.append("| worst | " + " | ".join(cell(summary[k], "_worst") for k in keys) + " |")
    return "\n".join(lines)


def draw_study_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every study over calibration draws takes: weights, photos, draw size, draw seeds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--calib-size", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    return parser


def main(argv: list[str] | None = None) -> int:
    from export.artifacts import write_json

    parser = draw_study_parser(__doc__)
    parser.add_argument("--recipes", nargs="+", default=["toolkit", "learned"])
    parser.add_argument("--backends", nargs="+", default=["onnx", "tflite"], choices=["weights", "onnx", "tflite"])
    parser.add_argument(
        "--validation", type=int, default=0, metavar="N", help="measure on N of each draw's calibration photos "
        "(calibrating on the rest), never on the held-out ones: for choosing a recipe",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("artifacts/int8-fidelity.json"))
    args = parser.parse_args(argv)
    try:
        report = run(
            args.weights,
            args.calib,
            args.calib_size,
            args.seeds,
            args.recipes,
            args.backends,
            args.validation,
            args.out.with_suffix(".partial.json"),
        )
        write_json(args.out, report)
        args.out.with_suffix(".partial.json").unlink(missing_ok=True)  # the checkpoint, now in the report
    except ToolkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
