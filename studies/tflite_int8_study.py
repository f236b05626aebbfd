"""int8 TFLite fidelity over several calibration draws: TFLite's plain post-training int8 vs the toolkit's.

    python -m studies.tflite_int8_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --calib-size 100 --seeds 0 1 2 3 4 \\
        --out artifacts/tflite-int8-study.json

One seed draws one calibration set; the rest of the folder is the held-out set both models are judged
on, in LiteRT, against the fp32 TFLite model. Agreement on 400 photos moves in steps of 0.25 pp and
hinges on a handful of near-ties, so the logit error (RMS vs fp32) is reported beside it: it is the
smooth measure of the quantization noise the fixes remove.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_runtime.hostinfo import host_facts
from export.errors import EXIT_USAGE, ToolkitError
from export.evaluation import accuracy, fidelity, load_eval_folder, round_floats
from quantize.tflite_int8 import TfliteInt8Config, recipe

CONFIGS = {  # the two recipes of --int8-recipe, and the steps between them
    "plain": recipe("plain"),
    "global-mean": replace(TfliteInt8Config.plain(), global_mean=True),
    "mean+stem": TfliteInt8Config(bias_correction=False),
    "toolkit": recipe("toolkit"),
}


def _logits(path: Path, inputs_nhwc: np.ndarray, label: str) -> np.ndarray:
    from edge_runtime.sessions import TfliteRunner
    from export.evaluation import predict

    return predict(TfliteRunner(path), inputs_nhwc, label)


def run(weights: Path, calib: Path, calib_size: int, seeds: list[int], configs: list[str]) -> dict:
    from export.tflite_export import input_preprocess
    from export.weights import load_model
    from quantize.calibration import FolderSource
    from quantize.tflite_quant import convert

    loaded = load_model(weights)
    nhwc = input_preprocess(loaded.preprocess, "float32")
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.tflite"
        fp32_path.write_bytes(convert(loaded, None, "float32", None))
        fp32_size = fp32_path.stat().st_size
        for seed in seeds:
            source = FolderSource(calib, nhwc, size=calib_size, seed=seed)
            calibration = source.arrays()
            held_out = load_eval_folder(calib, nhwc, loaded.labels, exclude=set(source.chosen))
            inputs = held_out.inputs  # already NHWC: the preprocessing says so
            reference = _logits(fp32_path, inputs, f"seed {seed}: fp32")
            for name in configs:
                started = time.perf_counter()
                path = Path(tmp) / f"{name}.tflite"
                path.write_bytes(convert(loaded, "int8", "float32", calibration, CONFIGS[name]))
                seconds = time.perf_counter() - started
                logits = _logits(path, inputs, f"seed {seed}: {name}")
                top1 = accuracy(logits, held_out.labels)["top1"]
                cells.append(
                    {
                        "seed": seed,
                        "config": name,
                        "top1": top1,
                        "top1_drop_pp": 100 * (accuracy(reference, held_out.labels)["top1"] - top1),
                        "top1_agreement": fidelity(reference, logits)["top1_agreement"],
                        "logit_rms": float(np.sqrt(np.mean((logits - reference) ** 2))),
                        "size_ratio": path.stat().st_size / fp32_size,
                        "convert_seconds": seconds,
                    }
                )
    summary = {}
    for name in configs:
        mine = [c for c in cells if c["config"] == name]
        summary[name] = {
            "config": CONFIGS[name].to_dict(),
            **{
                f"{key}_{stat}": round(float(fn([c[key] for c in mine])), 6)
                for key in ("top1_agreement", "top1_drop_pp", "logit_rms")
                for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))
            },
        }
    return round_floats(
        {
            "host": host_facts(),
            "weights": str(weights),
            "calib": str(calib),
            "calib_size": calib_size,
            "eval_images": len(held_out),
            "seeds": seeds,
            "cells": cells,
            "summary": summary,
        }
    )


def render(report: dict) -> None:
    from export.ui import show, table

    by_seed = {(c["seed"], c["config"]): c for c in report["cells"]}
    configs = list(report["summary"])
    rows = []
    for seed in report["seeds"]:
        rows.append(
            [f"seed {seed}"]
            + [
                f"{100 * by_seed[seed, n]['top1_agreement']:.2f}% / {by_seed[seed, n]['logit_rms']:.3f}"
                for n in configs
            ]
        )
    summary = report["summary"]
    means = [f"{100 * summary[n]['top1_agreement_mean']:.2f}% / {summary[n]['logit_rms_mean']:.3f}" for n in configs]
    rows.append(["mean", *means])
    title = f"int8 TFLite in LiteRT: agreement with fp32 / logit RMS ({report['eval_images']} held-out photos per seed)"
    show(table(title, ["calibration draw", *configs], rows))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.int8_fidelity import draw_study_parser
    from export.artifacts import write_json

    parser = draw_study_parser(__doc__)
    parser.add_argument("--configs", nargs="+", default=["plain", "toolkit"], choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("artifacts/tflite-int8-study.json"))
    args = parser.parse_args(argv)
    try:
        report = run(args.weights, args.calib, args.calib_size, args.seeds, args.configs)
        write_json(args.out, report)
    except ToolkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    render(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
