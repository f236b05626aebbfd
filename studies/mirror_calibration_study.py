"""Does calibrating on the photos and their mirror images help W8A8? PyTorch fake-quant on validation splits.

    python -m studies.mirror_calibration_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out mirror.json

A mirrored photo is another photo the network was trained to classify alike: more views for the activation
ranges (whose maxima from 70-100 photos unseen photos exceed) and for GPTQ's input second moments, at no cost
in photos. Per seed, the split of `studies.activation_grid_study` (fit on 70 photos, logit RMS against FP32 on
the other 30 and their mirror images); GPTQ and the ranges each from the 70 photos or the 70 plus mirrors.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding
from studies.activation_grid_study import _logits, calibrated_points
from studies.splits import split_study_parser, validation_views


def main() -> None:
    parser = split_study_parser(__doc__)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.weights)
    cells = []
    for seed in args.seeds:
        fit, views = validation_views(loaded, args.calib, seed)
        inputs = torch.from_numpy(views)
        reference = _logits(loaded.model.eval(), inputs)
        photos = fit.array
        both = np.concatenate([photos, photos[..., ::-1]]).copy()
        for gptq_on, ranges_on in (("photos", "photos"), ("photos", "mirrored"), ("mirrored", "photos"),
                                   ("mirrored", "mirrored")):  # fmt: skip
            model = copy.deepcopy(loaded.model).eval()
            fitted = both if gptq_on == "mirrored" else photos
            learned_rounding(model, fitted, RoundingSettings(method="gptq"), ("conv1.conv",))
            weights_only = float((_logits(model, inputs) - reference).pow(2).mean().sqrt())
            points = calibrated_points(model, torch.from_numpy(both if ranges_on == "mirrored" else photos))
            for grid in ("tensor", "reduce5-1.5"):
                for point in points:
                    point.set_grid(grid)
                out = _logits(model, inputs)
                cells.append(
                    {
                        "seed": seed,
                        "gptq": gptq_on,
                        "ranges": ranges_on,
                        "grid": grid,
                        "weights_only": weights_only,
                        "logit_rms": float((out - reference).pow(2).mean().sqrt()),
                    }
                )
                print(json.dumps(cells[-1]), flush=True)
    args.out.write_text(json.dumps({"cells": cells}, indent=1) + "\n")


if __name__ == "__main__":
    main()
