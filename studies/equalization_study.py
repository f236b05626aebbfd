"""Would equalizing activation channels help W8A8? PyTorch fake-quant on validation splits.

    python -m studies.equalization_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --alphas 0 0.25 0.5 0.75 --out eq.json
    (also: --alphas 0 0.5 --concat no --grids tensor tensor-noclip channel-noclip; --alphas 2 --concat no)

A channel c of a ReLU output that only linear ops read (a reduce conv's output, an inception block's Concat)
can be multiplied by s_c > 0 in its producers and divided out of its consumers' input columns: the float
network is unchanged, but the activation's per-tensor int8 grid then spends its steps on every channel, not
only the largest ones (cross-layer scaling, as in Nagel et al. 2019 and SmoothQuant). s_c = (max / max_c) ** alpha
from the calibration maxima, capped; alpha < 1 leaves room for unseen photos above a channel's calibrated max.
An `--alphas` value h > 1 asks for the other way to leave room: every channel scaled up until its calibrated max
is 1/h of the tensor's (none scaled down), so each keeps h x headroom.
The cost: the consumers' amplified columns get coarser weight steps (GPTQ is refitted on the scaled network).

Per seed, the split of `studies.activation_grid_study` (ranges and fit from 70 photos, logit RMS on the other
30 and their mirror images), activations fake-quantized where the ONNX `learned` recipe puts its grids.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding
from studies.activation_grid_study import BLOCKS, calibrated_points, instrument
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits


def scaling_pairs(model: nn.Module, concat: bool = True) -> dict[str, tuple[list, list]]:
    """Per scalable activation: (producer convs with their output-channel offsets, consumer layers)."""
    pairs: dict[str, tuple[list, list]] = {"conv2_reduce": ([(model.conv2_reduce.conv, 0)], [model.conv2.conv])}
    blocks = [getattr(model, f"inception{name}") for name in BLOCKS]
    for name, block in zip(BLOCKS, blocks, strict=True):
        pairs[f"{name}.reduce3"] = ([(block.branch2[0].conv, 0)], [block.branch2[1].conv])
        pairs[f"{name}.reduce5"] = ([(block.branch3[0].conv, 0)], [block.branch3[1].conv])
    if concat:
        for index, (name, block) in enumerate(zip(BLOCKS, blocks, strict=True)):
            convs = [block.branch1.conv, block.branch2[1].conv, block.branch3[1].conv, block.branch4[1].conv]
            offsets = [0]
            for conv in convs[:-1]:
                offsets.append(offsets[-1] + conv.out_channels)
            if index + 1 < len(blocks):
                after = blocks[index + 1]
                consumers = [after.branch1.conv, after.branch2[0].conv, after.branch3[0].conv, after.branch4[1].conv]
            else:
                consumers = [model.fc]
            pairs[f"{name}.concat"] = (list(zip(convs, offsets, strict=True)), consumers)
    return pairs


@torch.no_grad()
def channel_maxima(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    probe = copy.deepcopy(model).eval()
    points = instrument(probe)
    logits(probe, images)
    return {point.name: point.channel_max for point in points}


@torch.no_grad()
def equalize(model: nn.Module, maxima: dict[str, torch.Tensor], alpha: float, cap: float, concat: bool) -> None:
    for name, (producers, consumers) in scaling_pairs(model, concat).items():
        m = maxima[name].clamp(min=1e-6)
        if alpha > 1:  # headroom mode: every channel scaled up to 1/alpha of the tensor's max, none down
            scale = (m.max() / (alpha * m)).clamp(min=1.0, max=cap)
        else:
            scale = (m.max() / m).pow(alpha).clamp(max=cap)
        for conv, offset in producers:
            part = scale[offset : offset + conv.out_channels]
            conv.weight.mul_(part.view(-1, *[1] * (conv.weight.dim() - 1)))
            conv.bias.mul_(part)
        for layer in consumers:
            shape = [1, -1] + [1] * (layer.weight.dim() - 2)
            layer.weight.div_(scale.view(shape))


def main() -> None:
    parser = split_study_parser(__doc__)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--cap", type=float, default=8.0)
    parser.add_argument("--grids", nargs="+", default=["tensor", "reduce5-1.5"])
    parser.add_argument("--concat", choices=("both", "yes", "no"), default="both")
    args = parser.parse_args()
    loaded = load_model(args.weights)
    cells = Cells()
    for split in study_splits(loaded, args):
        fit_inputs = torch.from_numpy(split.fit.array)
        maxima = channel_maxima(loaded.model, fit_inputs)
        for alpha in args.alphas:
            choices = {"both": (False, True), "yes": (True,), "no": (False,)}[args.concat]
            for concat in choices if alpha else (False,):
                model = copy.deepcopy(loaded.model).eval()
                equalize(model, maxima, alpha, args.cap, concat)
                floats = logit_rms(logits(model, split.inputs), split.reference)
                learned_rounding(model, split.fit.array, RoundingSettings(method="gptq"), ("conv1.conv",))
                weights_only = logit_rms(logits(model, split.inputs), split.reference)
                points = calibrated_points(model, fit_inputs)
                for grid in args.grids:
                    for point in points:
                        point.set_grid(grid)
                    rms = logit_rms(logits(model, split.inputs), split.reference)
                    cells.add(seed=split.seed, alpha=alpha, concat=concat, grid=grid, float_change=floats,
                              weights_only=weights_only, logit_rms=rms)  # fmt: skip
    cells.write(args.out)


if __name__ == "__main__":
    main()
