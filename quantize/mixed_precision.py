"""Float16 for the few convolutions whose int8 weights cost the logits most per byte (W8A32 recipes).

The weights' logit error is not spread evenly: on validation splits (docs/int8-fidelity.md, session 18) the 1x1
convolutions that read a block's concatenated output (and conv2_reduce, after LRN) carry a quarter of it with
4% of the weights, while the 3x3 and 5x5 convolutions, half the weights, carry 6%. Each layer's share
is measured directly: the logits of a few calibration photos with that layer alone rounded, the rest float
(the shares add up: 98% of the whole error). Layers are then kept float16 (one more byte per weight than int8),
most error per byte first, within a budget of the FP32 weights' bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FLOAT16_BUDGET = 0.01  # extra bytes, as a share of the FP32 weights' (~280 KB: the file stays under 27% of FP32)
SENSITIVITY_PHOTOS = 16  # calibration photos each layer's share is measured on (evenly spaced over the draw)


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i : i + 8]) for i in range(0, len(images), 8)])


@torch.no_grad()
def layer_shares(float_model: nn.Module, rounded: dict[str, torch.Tensor], images: np.ndarray) -> dict[str, float]:
    """Per layer of `rounded` (name -> rounded weight), the mean squared logit error over `images` (NCHW) when
    that layer alone holds its rounded weight in `float_model` (restored after)."""
    from quantize.rounding import quantized_layers

    layers = quantized_layers(float_model)
    inputs = torch.from_numpy(np.ascontiguousarray(images)).float()
    reference = _logits(float_model.eval(), inputs)
    shares = {}
    for name, weight in rounded.items():
        module = layers[name]
        original = module.weight.detach().clone()
        module.weight.copy_(weight)
        try:
            shares[name] = float((_logits(float_model, inputs) - reference).pow(2).mean())
        finally:  # `float_model` may be the caller's own network
            module.weight.copy_(original)
    return shares


def choose_float16(shares: dict[str, float], sizes: dict[str, int], budget: int) -> list[str]:
    """The layers to keep float16: most error per weight first, while their weights fit in `budget` bytes
    (one extra byte each over int8); a layer too large for what is left is passed over."""
    chosen, used = [], 0
    for name in sorted(shares, key=lambda n: (-shares[n] / sizes[n], n)):
        if shares[name] > 0 and used + sizes[name] <= budget:
            chosen.append(name)
            used += sizes[name]
    return chosen


def keep_float16(float_model: nn.Module, rounded_model: nn.Module, images: np.ndarray, skip=()) -> dict:
    """Put float16 weights (`float_model`'s, rounded to float16) into `rounded_model` for the convolutions whose
    int8 weights cost the most logit error per byte, measured on `SENSITIVITY_PHOTOS` of `images` (NCHW).
    Returns the sidecar's record."""
    from quantize.rounding import quantized_layers

    floats = quantized_layers(float_model, skip)
    rounded_layers = quantized_layers(rounded_model, skip)
    total = sum(module.weight.numel() for module in floats.values())
    budget = int(FLOAT16_BUDGET * 4 * total)
    sizes = {name: module.weight.numel() for name, module in rounded_layers.items()}
    candidates = {
        name: module.weight.detach()
        for name, module in rounded_layers.items()
        if isinstance(module, nn.Conv2d) and sizes[name] <= budget
    }
    pick = np.linspace(0, len(images) - 1, min(SENSITIVITY_PHOTOS, len(images))).round().astype(int)
    shares = layer_shares(float_model, candidates, images[pick])
    chosen = choose_float16(shares, sizes, budget)
    with torch.no_grad():
        for name in chosen:
            rounded_layers[name].weight.copy_(floats[name].weight.detach().half().float())
    whole = sum(shares.values())
    return {
        "layers": chosen,
        "weights": sum(sizes[name] for name in chosen),
        "budget_bytes": budget,
        "measured_on_photos": len(pick),
        "share_of_measured_error": round(sum(shares[name] for name in chosen) / whole, 4) if whole else 0.0,
    }
