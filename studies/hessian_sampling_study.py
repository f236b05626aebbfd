"""What estimating GPTQ's H from sampled output positions costs: weights-only logit error on validation splits.

    python -m studies.hessian_sampling_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --positions 0 128 64 32 16 --out hs.json

Per seed: the calibration draw of 100 photos is split as `benchmarks.int8_fidelity --validation 30` splits it
(fit on 70, measure on the other 30 and their mirror images); the evaluation photos are never read. The
weights are rounded by GPTQ with H from at most N positions per input column (0 = every position), put back
into the float network (conv1 float), and the logit RMS against FP32 is measured: the weight rounding alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding
from studies.splits import validation_views

STEM = ("conv1.conv",)


def _logits(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(inputs[i : i + 20])).numpy() for i in range(0, len(inputs), 20)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--positions", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--fit-images", type=int, nargs="+", default=[70], help="fit on the first N of the 70")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.weights)
    cells = []
    for seed in args.seeds:
        fit, inputs = validation_views(loaded, args.calib, seed)
        images = fit.array
        reference = _logits(loaded.model, inputs)
        for positions in args.positions:
            for fit_images in args.fit_images:
                model = copy.deepcopy(loaded.model).eval()
                settings = RoundingSettings(method="gptq", positions_per_input=positions or None)
                started = time.perf_counter()
                learned_rounding(model, images[:fit_images], settings, STEM)
                seconds = time.perf_counter() - started
                rms = float(np.sqrt(np.mean((_logits(model, inputs) - reference) ** 2)))
                cells.append(
                    {
                        "seed": seed,
                        "positions_per_input": positions,
                        "fit_images": fit_images,
                        "logit_rms": rms,
                        "fit_seconds": seconds,
                    }
                )
                print(json.dumps(cells[-1]), flush=True)
    args.out.write_text(json.dumps({"cells": cells}, indent=1) + "\n")


if __name__ == "__main__":
    main()
