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

import numpy as np
import torch

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding
from studies.activation_grid_study import calibrated_points
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits


def main() -> None:
    args = split_study_parser(__doc__).parse_args()
    loaded = load_model(args.weights)
    cells = Cells()
    for split in study_splits(loaded, args):
        photos = split.fit.array
        both = np.concatenate([photos, photos[..., ::-1]]).copy()
        for gptq_on, ranges_on in (("photos", "photos"), ("photos", "mirrored"), ("mirrored", "photos"),
                                   ("mirrored", "mirrored")):  # fmt: skip
            model = copy.deepcopy(loaded.model).eval()
            fitted = both if gptq_on == "mirrored" else photos
            learned_rounding(model, fitted, RoundingSettings(method="gptq"), ("conv1.conv",))
            weights_only = logit_rms(logits(model, split.inputs), split.reference)
            points = calibrated_points(model, torch.from_numpy(both if ranges_on == "mirrored" else photos))
            for grid in ("tensor", "reduce5-1.5"):
                for point in points:
                    point.set_grid(grid)
                rms = logit_rms(logits(model, split.inputs), split.reference)
                cells.add(seed=split.seed, gptq=gptq_on, ranges=ranges_on, grid=grid, weights_only=weights_only,
                          logit_rms=rms)  # fmt: skip
    cells.write(args.out)


if __name__ == "__main__":
    main()
