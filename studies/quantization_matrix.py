"""Every int8 target preset x calibration method on real photos: the numbers behind the default choice.

    python -m studies.quantization_matrix --fp32 artifacts/googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --calib-size 100 --out artifacts/quantization-matrix.json

Each cell quantizes the FP32 model, then measures drift on the images that were not used for
calibration, both as run by ONNX Runtime on this host and emulated (target-independent).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from edge_runtime.hostinfo import host_facts
from edge_runtime.sessions import throughput_runner
from export.artifacts import read_onnx_metadata, write_json
from export.errors import EXIT_USAGE, ToolkitError
from export.evaluation import load_eval_folder, predict, round_floats
from export.labels import LabelSet
from export.preprocess import Preprocess
from export.ui import show, table
from quantize.calibration import FolderSource
from quantize.onnx_int8 import quantize_onnx
from quantize.presets import CALIBRATION_METHODS, PRESETS, preset


def run(fp32: Path, calib: Path, calib_size: int, seed: int, targets: list[str], methods: list[str]) -> dict:
    metadata = read_onnx_metadata(fp32)
    preprocess = Preprocess.from_json(metadata["preprocess"])
    labels = LabelSet.from_dict(json.loads(metadata["labels"]))
    source = FolderSource(calib, preprocess, size=calib_size, seed=seed)
    eval_set = load_eval_folder(calib, preprocess, labels, exclude=set(source.chosen))
    fp32_logits = predict(throughput_runner(fp32), eval_set.inputs, "Evaluating FP32")
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            for target in targets:
                started = time.perf_counter()
                config = preset(target, calibration=method)
                result = quantize_onnx(
                    fp32, source, config, eval_set, fp32_logits, out_path=Path(tmp) / "m.onnx", host_run=True
                )
                drift = result.info["drift"]
                cells.append(
                    {
                        "target": target,
                        "calibration": method,
                        "seconds": time.perf_counter() - started,
                        "size_ratio": result.info["size_ratio"],
                        **{run: _headline(drift[run]) for run in ("host", "emulated")},
                    }
                )
    return round_floats(
        {
            "host": host_facts(),
            "fp32": str(fp32),
            "calibration_set": source.describe(),
            "eval_images": len(eval_set),
            "fp32_accuracy": drift["fp32"]["accuracy"],
            "cells": cells,
        }
    )


def _headline(run: dict) -> dict:
    return {
        "top1": run["accuracy"]["top1"] if run["accuracy"] else None,
        "top1_drop_pp": run.get("top1_drop_pp"),
        "top1_agreement": run["fidelity"]["top1_agreement"],
        "kl_mean": run["fidelity"]["kl_mean"],
    }


def render(report: dict) -> None:
    rows = []
    for cell in report["cells"]:
        host, emulated = cell["host"], cell["emulated"]
        rows.append(
            (
                f"{cell['target']} / {cell['calibration']}",
                f"{host['top1_drop_pp']:+.2f} pp",
                f"{100 * host['top1_agreement']:.1f}%",
                f"{emulated['top1_drop_pp']:+.2f} pp",
                f"{100 * emulated['top1_agreement']:.1f}%",
                f"{100 * cell['size_ratio']:.1f}%",
            )
        )
    fp32 = report["fp32_accuracy"]["top1"]
    title = f"int8 presets x calibration ({report['eval_images']} held-out images, FP32 top-1 {100 * fp32:.1f}%)"
    columns = ("target / calibration", "host drop", "host agree", "emulated drop", "emulated agree", "size")
    show(table(title, columns, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=Path("artifacts/googlenet.onnx"))
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--calib-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--methods", nargs="+", default=list(CALIBRATION_METHODS), choices=CALIBRATION_METHODS)
    parser.add_argument("--out", type=Path, default=Path("artifacts/quantization-matrix.json"))
    args = parser.parse_args(argv)
    try:
        report = run(args.fp32, args.calib, args.calib_size, args.seed, args.targets, args.methods)
    except ToolkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    write_json(args.out, report)
    render(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
