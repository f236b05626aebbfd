"""8-bit palettized weights (a 256-entry codebook per layer) vs the uniform int8 grid: weights-only logit error.

    python -m studies.palette_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out palette.json

Why: GPTQ on the per-channel int8 grid sits at its floor (~0.027 logit RMS, session 15), and the file budget
(27% of FP32) allows one byte per weight. A uniform grid spends its 255 levels evenly from -max to +max, while
conv weights are heavy-tailed: most sit near zero. A codebook of 256 values per layer (Lloyd-Max / k-means on
the channel-normalised weights, as Core ML's 8-bit palettization stores them) spends the same byte where the
weights are. Each weight is then `scale[channel] * codebook[index]`; GPTQ's error feedback works with any
nearest-level rounding, so it rounds to the codebook instead of the integers.
Split as `benchmarks.int8_fidelity --validation 30`: fit on 70 photos, measure on the other 30 and their mirror
images; the evaluation photos are never read.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from quantize.palette import palette_gptq
from quantize.rounding import RoundingSettings, auto_damping, round_layer, to_float
from studies.splits import Cells, logit_rms, logits, replace_weights, split_study_parser, study_splits


def round_weights(model, images: np.ndarray, variant: str) -> None:
    """GPTQ in place onto the int8 grid (`uniform`) or onto a palette (`palette`; `palette-unweighted`: levels
    fitted to the weights alone, not to what their errors cost at the layer's output)."""
    settings = RoundingSettings(method="gptq")

    def rounded(weight: torch.Tensor, hessian: torch.Tensor, count: int) -> torch.Tensor:
        if variant == "uniform":
            return to_float(weight, round_layer(weight, hessian, count, settings))
        palette = palette_gptq(weight, hessian, auto_damping(weight.shape[1], count), variant == "palette")
        return torch.from_numpy(palette.weights())

    replace_weights(model, images, rounded)


def held_out_cells(loaded, args, cells: Cells) -> None:
    """The five-draw measurement for weights alone: fit on the whole 100-photo draw, judge on the 400 held out."""
    from benchmarks.int8_fidelity import figures
    from export.evaluation import load_eval_folder
    from quantize.calibration import FolderSource

    torch.set_num_threads(2)
    for seed in args.seeds:
        source = FolderSource(args.calib, loaded.preprocess, size=100, seed=seed)
        held = load_eval_folder(args.calib, loaded.preprocess, loaded.labels, exclude=set(source.chosen))
        inputs = torch.from_numpy(held.inputs)
        reference = logits(loaded.model.eval(), inputs).numpy()
        for variant in args.variants:
            model = copy.deepcopy(loaded.model).eval()
            round_weights(model, source.arrays(), variant)
            cell = figures(reference, logits(model, inputs).numpy(), held.labels)
            cells.add(seed=seed, variant=variant, photos=len(held.inputs), **cell)


def main() -> None:
    parser = split_study_parser(__doc__)
    parser.add_argument("--variants", nargs="+", default=["uniform", "palette-unweighted", "palette"])
    parser.add_argument("--held-out", action="store_true", help="the five-draw measurement on the 400 held out")
    args = parser.parse_args()
    from export.weights import load_model

    loaded = load_model(args.weights)
    cells = Cells()
    if args.held_out:
        held_out_cells(loaded, args, cells)
        cells.write(args.out)
        return
    for split in study_splits(loaded, args):
        for variant in args.variants:
            model = copy.deepcopy(loaded.model).eval()
            started = time.perf_counter()
            round_weights(model, split.fit.array, variant)
            seconds = time.perf_counter() - started
            rms = logit_rms(logits(model, split.inputs), split.reference)
            cells.add(seed=split.seed, variant=variant, logit_rms=round(rms, 5), fit_seconds=round(seconds, 1))
    cells.write(args.out)


if __name__ == "__main__":
    main()
