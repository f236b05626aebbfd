"""Channel scaling between layers before weight rounding, for float-activation (W8A32) recipes only.

An int8 row's grid is set by its largest weight (scale = max|w| / 127), so a row whose few large weights read
a quiet input channel rounds every other weight coarsely. A ReLU network computes the same function when an
output channel of a producer is divided by t > 0 and the matching input column of every consumer multiplied
by t (ReLU, max and average pools commute with it): cross-layer equalization (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"), here with t chosen per channel for the
consumers' output error, as AWQ (Lin et al. 2023) chooses its scales for weights-only quantization.

The producer's own rounding does not change (its grid is per output channel and scales with the row). The
activations' ranges do, which is why this is only for recipes whose activations stay float: on an int8
activation grid the scaled channels would be clipped or rounded coarsely (docs/int8-fidelity.md, session 14).

The groups are GoogLeNet's: conv2_reduce -> conv2, each inception block's reduce -> 3x3/5x5, and each block's
four outputs -> the next block's four 1x1 convs (through its max pools) or the classifier. conv1 -> conv2_reduce
and conv2 -> inception 3a are left alone: LRN between them does not commute with a per-channel scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.errors import ToolkitError

INCEPTION_BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
FIT_STEPS = 300  # Adam steps on the log scales of one group (the prototype's setting, not tuned)
FIT_RATE = 0.05


@dataclass(frozen=True)
class ChannelGroup:
    """Channels written by `producers` (concatenated in order, ReLU after each) and read by `consumers`."""

    name: str
    producers: tuple[nn.Conv2d, ...]
    consumers: tuple[nn.Module, ...]


def scaling_groups(model: nn.Module) -> list[ChannelGroup]:
    """The groups of the reference GoogLeNet whose channels can be rescaled without changing its function."""
    from export.model import GoogLeNet

    if not isinstance(model, GoogLeNet):
        raise ToolkitError(f"channel equalization needs the reference network, not {type(model).__name__}")
    groups = [ChannelGroup("conv2_reduce", (model.conv2_reduce.conv,), (model.conv2.conv,))]
    for name in INCEPTION_BLOCKS:
        block = getattr(model, f"inception{name}")
        groups += [
            ChannelGroup(f"inception{name}.branch2", (block.branch2[0].conv,), (block.branch2[1].conv,)),
            ChannelGroup(f"inception{name}.branch3", (block.branch3[0].conv,), (block.branch3[1].conv,)),
        ]
    for name, after in zip(INCEPTION_BLOCKS, (*INCEPTION_BLOCKS[1:], None), strict=True):
        block = getattr(model, f"inception{name}")
        outputs = (block.branch1.conv, block.branch2[1].conv, block.branch3[1].conv, block.branch4[1].conv)
        if after is None:
            readers: tuple[nn.Module, ...] = (model.fc,)
        else:
            nxt = getattr(model, f"inception{after}")
            readers = (nxt.branch1.conv, nxt.branch2[0].conv, nxt.branch3[0].conv, nxt.branch4[1].conv)
        groups.append(ChannelGroup(f"inception{name}", outputs, readers))
    return groups


@torch.no_grad()
def channel_energy(model: nn.Module, images: np.ndarray, layers: list[nn.Module], batch: int = 10) -> list:
    """Per layer of `layers`, the mean square of each of its input channels over `images` (NCHW)."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        dims = [0] if x.dim() == 2 else [0, 2, 3]
        key = id(module)
        sums[key] = sums.get(key, 0) + x.pow(2).sum(dims)
        counts[key] = counts.get(key, 0) + x.numel() // x.shape[1]

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        model.eval()
        for start in range(0, len(images), batch):
            model(torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).float())
    finally:
        for handle in handles:
            handle.remove()
    return [sums[id(layer)] / counts[id(layer)] for layer in layers]


def _consumer_terms(consumer: nn.Module, energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's largest |w| per input channel, [out, channels] (a channel's scale moves all its kernel
    positions alike), and the input energy per channel summed over the kernel positions (float64)."""
    weight = consumer.weight.detach().double()
    magnitude = weight.abs().reshape(weight.shape[0], weight.shape[1], -1)
    return magnitude.amax(dim=2), energy * magnitude.shape[2]


def rounding_noise(terms: list[tuple[torch.Tensor, torch.Tensor]], scales: torch.Tensor) -> torch.Tensor:
    """Each consumer's output noise from round-to-nearest on its per-row grid (uniform noise: step^2/12 per
    weight, times the energy of the input it multiplies) after the scaling, relative to before; their mean."""
    return _noise_and_slope(terms, scales)[0]


def _noise_and_slope(terms: list[tuple[torch.Tensor, torch.Tensor]], scales: torch.Tensor):
    """`rounding_noise` and its derivative in log(scales), by hand: each row's step is set by one channel
    (its argmax), so d(sum of squared row maxima)/d log t_j = 2 x the squared maxima of the rows j sets. (Autograd
    through amax took ~16 ms a step on 2 cores, 2 minutes for the network; this, a few seconds.)"""
    total = torch.zeros((), dtype=torch.float64)
    slope = torch.zeros_like(scales)
    for magnitude, energy in terms:
        before = magnitude.amax(dim=1).pow(2).sum() * energy.sum()
        row_max, setter = (magnitude * scales[None, :]).max(dim=1)
        steps = row_max.pow(2)
        spread, quiet = steps.sum(), (energy / scales.pow(2)).sum()
        d_spread = 2 * torch.zeros_like(scales).index_add_(0, setter, steps)
        d_quiet = -2 * energy / scales.pow(2)
        total += spread * quiet / before
        slope += (d_spread * quiet + spread * d_quiet) / before
    return total / len(terms), slope / len(terms)


@torch.no_grad()
def fit_scales(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per channel t > 0 (geometric mean 1) of least `rounding_noise`, by Adam on log t; t = 1 if the fit finds
    nothing better."""
    channels = terms[0][0].shape[1]
    log_scale = torch.zeros(channels, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_scale], lr=FIT_RATE)
    for _ in range(FIT_STEPS):
        _, slope = _noise_and_slope(terms, (log_scale - log_scale.mean()).exp())
        log_scale.grad = slope - slope.mean()  # through the centring
        optimizer.step()
    scales = (log_scale - log_scale.mean()).exp()
    ones = torch.ones(channels, dtype=torch.float64)
    return scales if rounding_noise(terms, scales) < rounding_noise(terms, ones) else ones


@torch.no_grad()
def equalize_channels(model: nn.Module, images: np.ndarray) -> dict:
    """Rescale `model`'s channel groups in place (the function unchanged) so that its consumers' int8 grids fit
    their weights; `images` (NCHW) give each channel's input energy. Returns the sidecar's record."""
    groups = scaling_groups(model)
    consumers = [layer for group in groups for layer in group.consumers]
    energies = dict(zip(map(id, consumers), channel_energy(model, images, consumers), strict=True))
    ratios = []
    for group in groups:
        terms = [_consumer_terms(layer, energies[id(layer)]) for layer in group.consumers]
        scales = fit_scales(terms)
        ratios.append(float(rounding_noise(terms, scales)))
        _apply(group, scales.float())
    return {
        "method": "per-channel scales between producer and consumers, fitted to the consumers' rounding noise",
        "groups": len(groups),
        "noise_vs_unscaled": round(float(np.mean(ratios)), 4),
    }


def _apply(group: ChannelGroup, scales: torch.Tensor) -> None:
    start = 0
    for producer in group.producers:
        part = scales[start : start + producer.out_channels]
        producer.weight.div_(part.view(-1, 1, 1, 1))
        producer.bias.div_(part)
        start += producer.out_channels
    if start != len(scales):
        raise ToolkitError(f"channel group {group.name}: {start} channels written, {len(scales)} read")
    for consumer in group.consumers:
        shape = (1, -1) if isinstance(consumer, nn.Linear) else (1, -1, 1, 1)
        consumer.weight.mul_(scales.view(shape))
