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

from quantize.rounding import (
    RoundingSettings,
    auto_damping,
    grid_scale,
    layer_hessians,
    quantized_layers,
    round_layer,
    to_float,
)
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits

STEM = ("conv1.conv",)


def kmeans_1d(values: np.ndarray, weights: np.ndarray, levels: int, iterations: int = 30) -> np.ndarray:
    """Weighted Lloyd-Max levels of 1-D `values`, started at the high-resolution optimum: level density
    proportional to the cube root of the values' density (Panter-Dite), from a fine histogram."""
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    bins = np.linspace(values[0], values[-1], 4097)
    density, _ = np.histogram(values, bins, weights=weights)
    cumulative = np.concatenate([[0], np.cumsum(np.cbrt(density))])
    cumulative /= cumulative[-1]
    centres = np.interp((np.arange(levels) + 0.5) / levels, cumulative, bins)
    centres[0], centres[-1] = values[0], values[-1]  # the extremes exactly: the largest weights matter most
    for _ in range(iterations):
        edges = (centres[1:] + centres[:-1]) / 2
        cell = np.searchsorted(edges, values)
        mass = np.bincount(cell, weights, len(centres))
        sums = np.bincount(cell, weights * values, len(centres))
        keep = mass > 0
        centres = np.sort(sums[keep] / mass[keep])
    return centres


def nearest_level(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    edges = (levels[1:] + levels[:-1]) / 2
    return levels[np.searchsorted(edges, x)]


def palette_gptq(weight: torch.Tensor, hessian: torch.Tensor, damping: float, normalise: str, weighted: bool):
    """GPTQ onto a per-layer codebook of the channel-normalised weights; returns the float weights."""
    if normalise == "max":
        scale = grid_scale(weight)  # rows in [-127, 127]
    else:
        scale = weight.pow(2).mean(dim=1, keepdim=True).sqrt()
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    w = (weight.double() / scale.double()).clone()
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    importance = np.broadcast_to(torch.diagonal(h).numpy()[None, :] * (scale.double() ** 2).numpy(), w.shape)
    levels = kmeans_1d(w.numpy().ravel(), importance.ravel() if weighted else np.ones(w.numel()), 256)
    order = torch.argsort(torch.diagonal(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    h += damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.zeros_like(w)
    block = 128
    hinv_np = hinv.numpy()
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        chunk = w[:, start:end].T.numpy().copy()
        errors = np.zeros_like(chunk)
        for j in range(end - start):
            col = chunk[j]
            q = nearest_level(col, levels)
            out[:, start + j] = torch.from_numpy(q)
            err = (col - q) / hinv_np[start + j, start + j]
            chunk[j:] -= hinv_np[start + j, start + j : end][:, None] * err[None, :]
            errors[j] = err
        w[:, end:] -= torch.from_numpy(errors.T.copy()) @ hinv[start:end, end:]
    return (out[:, torch.argsort(order)] * scale.double()).float(), len(levels)


def round_weights(model, images: np.ndarray, variant: str) -> dict:
    settings = RoundingSettings(method="gptq")
    layers = quantized_layers(model, STEM)
    stats = layer_hessians(model, images, layers, positions_per_input=settings.positions_per_input, seed=0)
    info = {"levels_min": 256}
    with torch.no_grad():
        for name, module in layers.items():
            weight = module.weight.detach().float().reshape(module.weight.shape[0], -1)
            hessian, count = stats[name]
            if variant == "uniform":
                new = to_float(weight, round_layer(weight, hessian, count, settings))
            else:
                normalise, weighted = variant.split("-")[1], variant.endswith("weighted")
                new, used = palette_gptq(weight, hessian, auto_damping(weight.shape[1], count), normalise, weighted)
                info["levels_min"] = min(info["levels_min"], used)
            module.weight.copy_(new.reshape(module.weight.shape))
    return info


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
    parser.add_argument("--variants", nargs="+", default=["uniform", "palette-max", "palette-max-weighted"])
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
            info = round_weights(model, split.fit.array, variant)
            seconds = time.perf_counter() - started
            rms = logit_rms(logits(model, split.inputs), split.reference)
            cells.add(seed=split.seed, variant=variant, logit_rms=round(rms, 5), fit_seconds=round(seconds, 1), **info)
    cells.write(args.out)


if __name__ == "__main__":
    main()
