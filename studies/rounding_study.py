"""Weights-only int8 fidelity of each weight rounding, over calibration draws, in PyTorch (float activations).

    python -m studies.rounding_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --calib-size 100 --seeds 0 1 2 3 4 \\
        --out artifacts/rounding-study.json

The weights are rounded onto the per-channel symmetric int8 grid both backends use (scale = max|w|/127)
and put back into the float network, so the only noise left is the weight rounding: the floor that no
activation recipe can go below. conv1 stays float (the float stem of both int8 recipes). One seed draws
one calibration set (the images the rounding is fitted on); the other photos of the folder are held out.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from export.errors import EXIT_USAGE, ToolkitError
from export.evaluation import accuracy, fidelity, load_eval_folder, round_floats
from quantize.rounding import RoundingSettings, learned_rounding

STEM = ("conv1.conv",)


def _logits(model: torch.nn.Module, inputs: np.ndarray, batch: int = 25) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(inputs[i : i + batch])).numpy() for i in range(0, len(inputs), batch)]
        )


def summarize(cells: list[dict], key: str) -> dict:
    out = {}
    for metric in ("top1_agreement", "top1_drop_pp", "logit_rms", "flips_at_risk", "seconds"):
        values = [c[metric] for c in cells if c["config"] == key]
        out[f"{metric}_mean"] = float(np.mean(values))
        out[f"{metric}_worst"] = float(np.min(values) if metric == "top1_agreement" else np.max(values))
    return out


def run(weights: Path, calib: Path, calib_size: int, seeds: list[int], configs: dict[str, RoundingSettings]) -> dict:
    from export.weights import load_model
    from quantize.calibration import FolderSource

    torch.set_num_threads(2)
    loaded = load_model(weights)
    cells = []
    for seed in seeds:
        source = FolderSource(calib, loaded.preprocess, size=calib_size, seed=seed)
        images = source.arrays()
        held_out = load_eval_folder(calib, loaded.preprocess, loaded.labels, exclude=set(source.chosen))
        reference = _logits(loaded.model, held_out.inputs)
        ref_top1 = accuracy(reference, held_out.labels)["top1"]
        top2 = np.sort(reference, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        for name, settings in configs.items():
            model = copy.deepcopy(loaded.model)
            started = time.perf_counter()
            layers = learned_rounding(model, images, settings, skip=STEM)
            seconds = time.perf_counter() - started
            logits = _logits(model, held_out.inputs)
            per_image_rms = np.sqrt(np.mean((logits - reference) ** 2, axis=1))
            cell = {
                "seed": seed,
                "config": name,
                "top1_agreement": fidelity(reference, logits)["top1_agreement"],
                "top1_drop_pp": 100 * (ref_top1 - accuracy(logits, held_out.labels)["top1"]),
                "logit_rms": float(np.sqrt(np.mean((logits - reference) ** 2))),
                "flips_at_risk": int((margin < per_image_rms).sum()),  # as in benchmarks.int8_fidelity
                "fit_error_ratio": float(
                    np.mean([v["error"] / max(v["nearest_error"], 1e-30) for v in layers.values()])
                ),
                "seconds": seconds,
            }
            print(f"seed {seed} {name}: {cell}", flush=True)
            cells.append(cell)
    return round_floats(
        {
            "what": "weights-only int8 (float activations), conv1 float; PyTorch",
            "weights": str(weights),
            "calib": str(calib),
            "calib_size": calib_size,
            "eval_images": len(held_out),
            "seeds": seeds,
            "configs": {k: v.to_dict() for k, v in configs.items()},
            "cells": cells,
            "summary": {name: summarize(cells, name) for name in configs},
        }
    )


CONFIGS = {
    "nearest": RoundingSettings(method="nearest"),
    "adaround": RoundingSettings(method="adaround"),
    "gptq": RoundingSettings(method="gptq"),
    "gptq-damp0.01": RoundingSettings(method="gptq", damping=0.01),
}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.int8_fidelity import draw_study_parser
    from export.artifacts import write_json

    parser = draw_study_parser(__doc__)
    parser.add_argument("--configs", nargs="+", default=["nearest", "adaround", "gptq"], choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("artifacts/rounding-study.json"))
    args = parser.parse_args(argv)
    try:
        report = run(args.weights, args.calib, args.calib_size, args.seeds, {k: CONFIGS[k] for k in args.configs})
        write_json(args.out, report)
    except ToolkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    for name, row in report["summary"].items():
        print(name, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
