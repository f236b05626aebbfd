"""8-bit palettized weights: per layer, 256 values (a codebook) times a scale per output channel (W8A32, a LUT).

The int8 grid spends its 255 levels evenly from -max|w| to +max|w|, but convolution weights are heavy-tailed:
most sit near zero, where the even grid is as coarse as in the tails. A codebook stores the same byte per weight
and puts its levels where the weights are: each layer's weights, divided by their channel's max|w|/127, share
one set of 256 levels chosen by Lloyd-Max (k-means in 1-D), each weight weighted by what its error costs at the
layer's output (its input's energy, diag H, times its channel's scale squared). GPTQ's error feedback works with
any nearest-level rounding, so the weights are rounded to the codebook column by column, as `quantize.rounding`
rounds them to the integers. The file keeps one uint8 index per weight (the size of int8); ONNX Runtime computes
`codebook[index] * scale` once, at load (constant folding), then runs FP32 kernels: FP32's speed, float
arithmetic (as Core ML's 8-bit palettization). Measured (docs/int8-fidelity.md, session 17): weights-only logit
error on validation splits 0.0285 / 0.0271 / 0.0273 -> 0.0225 / 0.0209 / 0.0228 (seeds 0-2); ten draws on
held-out photos (ONNX, against the int8 grid's weights): 99.25 / 98.50% -> 99.30 / 99.00% mean / worst
agreement. LiteRT folds no gather at load: the same graph there runs 3.6-6.8x slower than FP32, so TFLite keeps
the int8 grid (`quantize.tflite_weights`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantize.rounding import (
    INT8_MAX,
    auto_damping,
    gptq_columns,
    gptq_order,
    grid_scale,
    layer_hessians,
    quantized_layers,
)

PALETTE_LEVELS = 256  # one uint8 index per weight
LLOYD_ITERATIONS = 30
POSITIONS_PER_INPUT = 64  # as `quantize.rounding.RoundingSettings`


@dataclass(frozen=True)
class Palette:
    """One layer's weights [out, in] as `codebook[indices] * scale[:, None]`, every product in float32."""

    indices: np.ndarray  # uint8 [out, in]
    codebook: np.ndarray  # float32 [<= 256], ascending
    scale: np.ndarray  # float32 [out]

    def weights(self) -> np.ndarray:
        """The float32 weights a runtime computes from the three arrays (one IEEE product each, as a Mul)."""
        return self.codebook[self.indices] * self.scale[:, None]

    def scaled(self, factor: np.ndarray) -> Palette:
        """The same codebook and indices under per-channel scales times `factor` (batch norm folded in)."""
        return Palette(self.indices, self.codebook, (self.scale * factor).astype(np.float32))


def lloyd_max_levels(values: np.ndarray, importance: np.ndarray, levels: int = PALETTE_LEVELS) -> np.ndarray:
    """At most `levels` values minimising the importance-weighted squared error of rounding `values` to the
    nearest: Lloyd's iterations from the high-resolution optimum (level density proportional to the cube root
    of the values' density, Panter-Dite; the values' quantiles would leave the tails a few coarse levels), the
    smallest and largest value kept as levels at the start."""
    values = values.astype(np.float64).ravel()
    importance = importance.astype(np.float64).ravel()
    if values.min() == values.max():
        return np.array([values[0]], np.float32)
    bins = np.linspace(values.min(), values.max(), 16 * levels + 1)
    density, _ = np.histogram(values, bins, weights=importance)
    cumulative = np.concatenate([[0.0], np.cumsum(np.cbrt(density))])
    cumulative /= cumulative[-1]
    centres = np.interp((np.arange(levels) + 0.5) / levels, cumulative, bins)
    centres[0], centres[-1] = values.min(), values.max()
    centres = np.unique(centres)
    for _ in range(LLOYD_ITERATIONS):
        cell = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
        mass = np.bincount(cell, importance, len(centres))
        sums = np.bincount(cell, importance * values, len(centres))
        centres = np.unique(sums[mass > 0] / mass[mass > 0])
    return centres.astype(np.float32)


def nearest_level(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of the ascending `levels` for every element of `values`."""
    return np.searchsorted((levels[1:].astype(np.float64) + levels[:-1]) / 2, values)


def palette_gptq(weight: torch.Tensor, hessian: torch.Tensor, damping: float, weighted: bool = True) -> Palette:
    """The palette of `weight` [out, in]: levels fitted to the weights in units of their channel's int8 step
    (`weighted`: by what each weight's error costs at the output; without, half the gain or more is lost on
    validation splits), then GPTQ (act-order, blocks of 128 columns) rounding each column to the nearest
    level with error feedback."""
    scale = grid_scale(weight.float(), INT8_MAX)
    w = weight.double() / scale.double()
    energy = torch.diagonal(hessian).double().clone()
    energy[energy == 0] = 1.0  # as `gptq_order` treats dead inputs
    importance = energy[None, :] * scale.double() ** 2 if weighted else torch.ones_like(w)
    levels = lloyd_max_levels(w.numpy(), importance.expand_as(w).numpy())
    levels64 = levels.astype(np.float64)
    order, hinv = gptq_order(hessian, damping)
    values = gptq_columns(w[:, order], hinv, lambda _, column: levels64[nearest_level(column, levels)])
    indices = nearest_level(values[:, torch.argsort(order)].numpy(), levels)  # each value is a level exactly
    return Palette(indices.astype(np.uint8), levels, scale.reshape(-1).numpy().astype(np.float32))


@torch.no_grad()
def palettized_copy(
    model: nn.Module, images: np.ndarray, skip: Iterable[str] = (), seed: int = 0
) -> tuple[nn.Module, dict[str, Palette], dict]:
    """A copy of `model` whose conv/linear weights (not `skip`) are their palettes' values, the palettes by layer
    name, and the sidecar's record of how they were fitted (on `images`, NCHW)."""
    import copy

    from quantize.rounding import nearest_ints, to_float, weights_output_error

    torch.manual_seed(seed)
    fitted = copy.deepcopy(model).eval()
    layers = quantized_layers(fitted, skip)
    stats = layer_hessians(fitted, images, layers, positions_per_input=POSITIONS_PER_INPUT, seed=seed)
    palettes, ratios = {}, []
    for name, module in layers.items():
        weight = module.weight.detach().float().reshape(module.weight.shape[0], -1)
        hessian, count = stats[name]
        palette = palette_gptq(weight, hessian, auto_damping(weight.shape[1], count))
        palettes[name] = palette
        new = torch.from_numpy(palette.weights())
        nearest = weights_output_error(weight, to_float(weight, nearest_ints(weight)), hessian, count)
        if nearest > 0:
            ratios.append(weights_output_error(weight, new, hessian, count) / nearest)
        module.weight.copy_(new.reshape(module.weight.shape))
    record = {
        "method": "gptq",
        "grid": "per-layer codebook of 256 levels (weighted Lloyd-Max) x per-channel scale max|w|/127",
        "damping": "auto",
        "act_order": True,
        "positions_per_input": POSITIONS_PER_INPUT,
        "fitted_images": len(images),
        "layers": sorted(palettes),
        "kept_float": sorted(skip),
        "output_error_vs_nearest": round(float(np.mean(ratios)), 4) if ratios else 1.0,
    }
    return fitted, palettes, record
