"""Would an empirical bias correction of the whole int8 error help W8A8? PyTorch fake-quant on validation splits.

    python -m studies.bias_correction_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out bias.json

The recipes' bias correction (TFLite's `bias-correction`, GPTQ's own) removes the mean error of the int8
*weights*. Int8 activations shift the means too: ReLU outputs below half a step round to zero, clipped photos
lose their peaks. Here every layer's bias absorbs the mean difference, per output channel, between its
pre-activation output in FP32 and in the fake-quantized network (GPTQ weights, the `learned` grids), measured
on the fit photos. Layer by layer in forward order (a group of layers that read the same input at once), so
each layer's correction sees its upstream already corrected; `--rounds` repeats that. Split as in
`studies.activation_grid_study`. (Correcting every layer at once from one pass over-corrects: a layer's shift
is partly its upstream's, corrected twice; measured 0.044 -> 0.048 -> 0.068 -> 0.114 on seed 0 over 3 rounds.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding, quantized_layers
from studies.activation_grid_study import calibrated_points
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits


@torch.no_grad()
def output_means(model: nn.Module, layers: dict[str, nn.Module], images: torch.Tensor) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            dims = (0, 2, 3) if output.dim() == 4 else (0,)
            total = output.double().sum(dim=dims)
            sums[name] = sums[name] + total if name in sums else total
            counts[name] = counts.get(name, 0) + output.numel() // output.shape[1]

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        logits(model, images)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / counts[name] for name, total in sums.items()}


def depth_groups(layers: dict[str, nn.Module]) -> list[list[str]]:
    """Layers in forward order, grouped so no layer reads another of its group: the stem's convs one by one,
    then per inception block its four input-side convs, then its 3x3 and 5x5; the classifier last."""
    groups: dict[str, list[str]] = {}
    for name in layers:
        second = name.endswith(("branch2.1.conv", "branch3.1.conv"))
        key = f"{name.split('.')[0]}/{int(second)}" if name.startswith("inception") else name
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def main() -> None:
    parser = split_study_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    loaded = load_model(args.weights)
    cells = Cells()
    skip = ("conv1.conv",)
    for split in study_splits(loaded, args):
        fit_inputs = torch.from_numpy(split.fit.array)
        reference_model = loaded.model.eval()
        target = output_means(reference_model, quantized_layers(reference_model, skip), fit_inputs)
        model = copy.deepcopy(loaded.model).eval()
        learned_rounding(model, split.fit.array, RoundingSettings(method="gptq"), skip)
        layers = quantized_layers(model, skip)
        for point in calibrated_points(model, fit_inputs):
            point.set_grid("reduce5-1.5")
        for round_ in range(args.rounds + 1):
            cells.add(seed=split.seed, rounds=round_, logit_rms=logit_rms(logits(model, split.inputs), split.reference))
            if round_ == args.rounds:
                break
            for group in depth_groups(layers):  # sequential: each group sees its upstream already corrected
                means = output_means(model, {name: layers[name] for name in group}, fit_inputs)
                with torch.no_grad():
                    for name in group:
                        layers[name].bias.add_((target[name] - means[name]).float())
    cells.write(args.out)


if __name__ == "__main__":
    main()
