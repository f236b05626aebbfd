"""Would activation ranges taken per photo at run time (dynamic-range int8) beat calibrated ones? Validation splits.

    python -m studies.dynamic_range_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out dynamic.json

Calibrated (static) ranges clip unseen photos brighter than the calibration ones and waste steps on darker
ones; a dynamic-range model quantizes each conv's input per photo from its own min and max (LiteRT's hybrid
kernels, ONNX Runtime's DynamicQuantizeLinear), at the cost of float tensors between the convs. Per seed, the
split of `studies.activation_grid_study` (GPTQ fitted on 70 photos, logit RMS on the other 30 and mirrors):

- PyTorch fake-quant, GPTQ weights (conv1 float), at the `learned` recipe's activation points: static
  (`reduce5-1.5`, today's recipe), dynamic [min, max] / 255, dynamic symmetric max / 127; then dynamic with
  the image (conv1's input) and the classifier's input quantized too, as a hybrid model must;
- the real thing: TFLite's dynamic-range converter (`--quantize dynamic`) on the GPTQ-rounded network,
  run in LiteRT with its default XNNPACK delegate and with its built-in kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.weights import load_model
from quantize.rounding import RoundingSettings, learned_rounding, rounded_copy
from studies.activation_grid_study import calibrated_points
from studies.splits import Cells, Split, logit_rms, logits, split_study_parser, study_splits


def per_photo(levels: int):
    """Fake-quant of each photo of a batch on its own [min(0, x), max(0, x)] range in `levels` steps."""

    def quantize(x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        low = x.amin(dim=dims, keepdim=True).clamp(max=0) if levels == 255 else torch.zeros_like(x[:1])
        high = x.amax(dim=dims, keepdim=True).clamp(min=0)
        step = ((high - low) / levels).clamp(min=1e-12)
        return torch.round((x - low) / step) * step + low

    return quantize


class Switch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quantize = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.quantize is None else self.quantize(x)


def fake_quant_cells(loaded, split: Split, cells: Cells) -> None:
    model = copy.deepcopy(loaded.model).eval()
    learned_rounding(model, split.fit.array, RoundingSettings(method="gptq"), ("conv1.conv",))
    points = calibrated_points(model, torch.from_numpy(split.fit.array))
    image, features = Switch(), Switch()
    model.conv1, model.fc = nn.Sequential(image, model.conv1), nn.Sequential(features, model.fc)

    def measure(name: str) -> None:
        rms = logit_rms(logits(model, split.inputs), split.reference)
        cells.add(seed=split.seed, model=name, runtime="pytorch fake-quant", logit_rms=rms)

    for point in points:
        point.set_grid("reduce5-1.5")
    measure("static (learned)")
    for levels, name in ((255, "dynamic [min, max] / 255"), (127, "dynamic symmetric max / 127")):
        for point in points:
            point.forward = per_photo(levels)
        measure(name)
    for point in points:
        point.forward = per_photo(255)
    image.quantize = features.quantize = per_photo(255)
    measure("dynamic / 255, image and classifier input too")


def litert_cells(loaded, split: Split, cells: Cells) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from quantize.tflite_quant import convert

    model, _ = rounded_copy(loaded.model, split.fit.array, RoundingSettings(method="gptq"), ())
    views, reference = split.views, split.reference.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dynamic.tflite"
        path.write_bytes(convert(dataclasses.replace(loaded, model=model), "dynamic", "float32", None))
        for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
            interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver, num_threads=2)
            source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
            interpreter.resize_tensor_input(source["index"], [1, *views.shape[2:], views.shape[1]])
            interpreter.allocate_tensors()
            outputs = []
            for photo in views.transpose(0, 2, 3, 1):
                interpreter.set_tensor(source["index"], photo[None].astype(np.float32))
                interpreter.invoke()
                outputs.append(interpreter.get_tensor(sink["index"])[0])
            rms = float(np.sqrt(np.mean((np.asarray(outputs) - reference) ** 2)))
            kernels = "XNNPACK" if resolver == OpResolverType.AUTO else "built-in kernels"
            cells.add(seed=split.seed, model="TFLite dynamic-range, GPTQ", runtime=f"LiteRT {kernels}", logit_rms=rms)


def main() -> None:
    args = split_study_parser(__doc__).parse_args()
    loaded = load_model(args.weights)
    cells = Cells()
    for split in study_splits(loaded, args):
        fake_quant_cells(loaded, split, cells)
        litert_cells(loaded, split, cells)
    cells.write(args.out)


if __name__ == "__main__":
    main()
