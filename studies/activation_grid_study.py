"""Would finer activation grids per channel help W8A8? PyTorch fake-quant on validation splits.

    python -m studies.activation_grid_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out grids.json

Per seed: the calibration draw split as `benchmarks.int8_fidelity --validation 30` splits it (ranges from 70
photos, logit RMS against FP32 on the other 30 and their mirror images; the evaluation photos are never read).
Activations are fake-quantized where the ONNX `learned` recipe puts int8 grids (norm1, conv2_reduce, conv2, norm2,
each block's two reduce convs and its Concat; the stem before norm1 and the pooled features stay float), weights
float or GPTQ-rounded. Grids:

- `tensor`: one [0, max] grid per tensor, 256 steps (what ONNX Runtime and LiteRT do);
- `tensor-noclip`: the same steps, no clipping above the calibration max (how much of the error is clipping);
- `channel-noclip`: each channel's own step (its calibration max / 255), no clipping: the rounding-noise bound;
- `channel`: each channel its own [0, max] grid (clipped at the channel's calibration max);
- `headroom-h`: one grid per tensor on [0, h x max]: coarser steps, less clipping of photos brighter than
  the calibration ones;
- `reduce5-h`: as `headroom-h` for the 5x5-reduce outputs only (16-48 channels), the others `tensor`;
- `split-r`: outlier channel splitting (a channel stored as k copies on a tensor grid r times finer; a copy
  saturates at the grid's max, so a channel clips at k times it), k = ceil(1.5 x the channel's max / grid max):
  the int8-kernel way to per-channel steps, at the cost of the extra channels it reports.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits

BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
NOT_SPLITTABLE = ("norm1", "norm2", "conv2")  # LRN outputs, and LRN's input: LRN mixes channels
GRIDS = ("tensor", "tensor-noclip", "channel-noclip", "channel", "split-2", "split-4")
HEADROOM = ("headroom-1.1", "headroom-1.25", "headroom-1.5")
FIVE_BY_FIVE = ("reduce5-1.25", "reduce5-1.5", "reduce5-2")  # the `wide-5x5-inputs` pass: 5x5-reduce outputs only


class FakeQuant(nn.Module):
    """Records per-channel maxima, then rounds onto per-channel steps and clips at per-channel limits."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.observing, self.channel_max = name, True, None
        self.step: torch.Tensor | None = None
        self.limit: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            m = x.amax(dim=(0, 2, 3))
            self.channel_max = m if self.channel_max is None else torch.maximum(self.channel_max, m)
            return x
        step, limit = self.step.view(1, -1, 1, 1), self.limit.view(1, -1, 1, 1)
        return torch.minimum(torch.round(x / step) * step, limit)

    def set_grid(self, grid: str) -> int:
        """Steps and limits for `grid`; returns the extra channels it needs."""
        channel_max = self.channel_max.clamp(min=1e-8)
        top = float(channel_max.max())
        unbounded = torch.full_like(channel_max, float("inf"))
        if grid == "tensor" or (grid.startswith("split") and self.name in NOT_SPLITTABLE):
            self.step, self.limit = torch.full_like(channel_max, top / 255), torch.full_like(channel_max, top)
        elif grid.startswith(("headroom", "reduce5")):
            widen = grid.startswith("headroom") or self.name.endswith("reduce5")
            wider = top * (float(grid.split("-")[1]) if widen else 1.0)
            self.step, self.limit = torch.full_like(channel_max, wider / 255), torch.full_like(channel_max, wider)
        elif grid == "tensor-noclip":
            self.step, self.limit = torch.full_like(channel_max, top / 255), unbounded
        elif grid == "channel-noclip":
            self.step, self.limit = channel_max / 255, unbounded
        elif grid == "channel":
            self.step, self.limit = channel_max / 255, channel_max
        else:
            finer = top / int(grid.split("-")[1])
            copies = torch.ceil(1.5 * channel_max / finer).clamp(min=1)
            self.step, self.limit = torch.full_like(channel_max, finer / 255), copies * finer
            return int((copies - 1).sum())
        return 0


def instrument(model: nn.Module) -> list[FakeQuant]:
    points: list[FakeQuant] = []

    def after(module: nn.Module, name: str) -> nn.Module:
        points.append(FakeQuant(name))
        return nn.Sequential(module, points[-1])

    for name in ("norm1", "conv2_reduce", "conv2", "norm2"):
        setattr(model, name, after(getattr(model, name), name))
    for block_name in BLOCKS:
        block = getattr(model, f"inception{block_name}")
        block.branch2[0] = after(block.branch2[0], f"{block_name}.reduce3")
        block.branch3[0] = after(block.branch3[0], f"{block_name}.reduce5")
        setattr(model, f"inception{block_name}", after(block, f"{block_name}.concat"))
    return points


def calibrated_points(model: nn.Module, images: torch.Tensor) -> list[FakeQuant]:
    """`instrument(model)` with every point's ranges observed on `images`; set a grid before measuring."""
    points = instrument(model)
    logits(model, images)
    for point in points:
        point.observing = False
    return points


def main() -> None:
    args = split_study_parser(__doc__).parse_args()
    loaded = load_model(args.weights)
    cells = Cells()
    for split in study_splits(loaded, args):
        for weights in ("float", "gptq"):
            model = copy.deepcopy(loaded.model).eval()
            if weights == "gptq":
                learned_rounding(model, split.fit.array, RoundingSettings(method="gptq"), ("conv1.conv",))
            points = calibrated_points(model, torch.from_numpy(split.fit.array))
            grids = (*GRIDS, *HEADROOM) if weights == "float" else ("tensor", "tensor-noclip", *HEADROOM, *FIVE_BY_FIVE)
            for grid in grids:
                extra = sum(point.set_grid(grid) for point in points)
                rms = logit_rms(logits(model, split.inputs), split.reference)
                cells.add(seed=split.seed, weights=weights, grid=grid, logit_rms=rms, extra_channels=extra)
    cells.write(args.out)


if __name__ == "__main__":
    main()
