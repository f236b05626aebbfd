"""Would fitting the int8 weights across layers help W8A8? Distillation through the fake-quantized network.

    python -m studies.distillation_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out distill.json

Every earlier fit was layer by layer (GPTQ; session 7's activation-aware refit, session 10's cross-layer one).
Here the whole network is fitted at once, as quantization-aware fine-tuning does: the GPTQ-rounded weights of
`learned` are the start, the activations are fake-quantized at the `learned` grids (`reduce5-1.5`), and Adam moves
each weight's latent value in units of its int8 step so that the logits of the fit photos and their mirror images
approach FP32's (straight-through rounding; each row's largest element stays at +-127, so the scale both backends
recompute is unchanged and the result stays one int8 grid). Split as `studies.activation_grid_study` splits it:
fit on 70 photos, logit RMS against FP32 on the other 30 and their mirror images, measured after every epoch,
with the grids the fit used (`fixed`) and re-calibrated on the fitted weights (`recalibrated`: what a backend
computes from the same photos).
"""

from __future__ import annotations

import copy
import time
import types

import torch
from torch import nn
from torch.nn.utils import parametrize

from export.weights import load_model
from quantize.rounding import INT8_MAX, RoundingSettings, grid_scale, learned_rounding, pinned, quantized_layers
from studies.activation_grid_study import calibrated_points
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits

SKIP = ("conv1.conv",)
GRID = "reduce5-1.5"


def straight_through(self, x: torch.Tensor) -> torch.Tensor:
    """The fake-quant point's rounding with gradients: identity inside the grid, zero above its limit."""
    if self.observing:
        return type(self).forward(self, x)
    clipped = torch.minimum(x, self.limit.view(1, -1, 1, 1))
    step = self.step.view(1, -1, 1, 1)
    return clipped + (torch.round(clipped / step) * step - clipped).detach()


class OnGrid(nn.Module):
    """weight = round(latent) * scale per output row, straight-through; pinned elements do not move."""

    def __init__(self, scale: torch.Tensor, mask: torch.Tensor, shape: torch.Size) -> None:
        super().__init__()
        self.scale, self.mask, self.shape = scale, mask, shape

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        latent = torch.where(self.mask, latent.detach(), latent)
        ints = torch.clamp(torch.round(latent), -INT8_MAX, INT8_MAX)
        return ((latent + (ints - latent).detach()) * self.scale).reshape(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(weight.shape[0], -1) / self.scale


def on_grid(layers: dict[str, nn.Module]) -> list[nn.Parameter]:
    """Reparametrize each layer's weight as latent int8 values; returns the latents."""
    latents = []
    for module in layers.values():
        rows = module.weight.detach().reshape(module.weight.shape[0], -1)
        parametrize.register_parametrization(
            module, "weight", OnGrid(grid_scale(rows), pinned(rows), module.weight.shape), unsafe=True
        )
        latents.append(module.parametrizations.weight.original)
    return latents


def main() -> None:
    parser = split_study_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.01])
    parser.add_argument("--bias-lr", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=14)
    args = parser.parse_args()
    loaded = load_model(args.weights)
    cells = Cells()
    for split in study_splits(loaded, args):
        fit = torch.from_numpy(split.fit.array)
        views = torch.cat([fit, fit.flip(-1)])
        teacher = logits(loaded.model.eval(), views)
        start = copy.deepcopy(loaded.model).eval()
        learned_rounding(start, split.fit.array, RoundingSettings(method="gptq"), SKIP)
        for lr in args.lr:
            model = copy.deepcopy(start)
            points = calibrated_points(model, fit)
            for point in points:
                point.set_grid(GRID)
                point.forward = types.MethodType(straight_through, point)
            layers = quantized_layers(model, SKIP)
            latents = on_grid(layers)
            groups = [{"params": latents, "lr": lr}]
            if args.bias_lr:
                groups.append({"params": [m.bias for m in layers.values()], "lr": args.bias_lr})
            optimizer = torch.optim.Adam(groups)
            generator = torch.Generator().manual_seed(split.seed)
            base = logit_rms(logits(model, split.inputs), split.reference)
            cells.add(seed=split.seed, lr=lr, bias_lr=args.bias_lr, epoch=0, fixed=base, recalibrated=base)
            began = time.perf_counter()
            for epoch in range(1, args.epochs + 1):
                order = torch.randperm(len(views), generator=generator)
                for i in range(0, len(views), args.batch):
                    batch = order[i : i + args.batch]
                    loss = (model(views[batch]) - teacher[batch]).pow(2).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                fixed = logit_rms(logits(model, split.inputs), split.reference)
                trial = baked(start, model)
                for point in calibrated_points(trial, fit):
                    point.set_grid(GRID)
                recal = logit_rms(logits(trial, split.inputs), split.reference)
                pairs = zip(latents, initial(start), strict=True)
                moved = sum(int((torch.round(latent.detach()) != ints).sum()) for latent, ints in pairs)
                cells.add(seed=split.seed, lr=lr, bias_lr=args.bias_lr, epoch=epoch, fixed=fixed, recalibrated=recal,
                          moved=moved, seconds=round(time.perf_counter() - began, 1))  # fmt: skip
    cells.write(args.out)


def initial(model: nn.Module) -> list[torch.Tensor]:
    """The GPTQ integers of `model`'s quantized layers, in `quantized_layers` order."""
    rows = [m.weight.detach().reshape(m.weight.shape[0], -1) for m in quantized_layers(model, SKIP).values()]
    return [torch.round(r / grid_scale(r)) for r in rows]


def baked(start: nn.Module, model: nn.Module) -> nn.Module:
    """A plain copy of `start` holding `model`'s fitted weights and biases, to calibrate afresh (as a backend would
    calibrate the fitted network)."""
    trial = copy.deepcopy(start)
    with torch.no_grad():  # instrumenting renamed `model`'s layers, not their order
        for module, fitted in zip(
            quantized_layers(trial, SKIP).values(), quantized_layers(model, SKIP).values(), strict=True
        ):
            module.weight.copy_(fitted.weight)
            module.bias.copy_(fitted.bias)
    return trial


if __name__ == "__main__":
    main()
