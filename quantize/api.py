"""One int8 entry point for every backend, in the spirit of `nncf.quantize(model, dataset, preset)`.

    from quantize.api import Int8Preset, quantize
    preset = Int8Preset("onnx", recipe="learned", target="arm64")
    result = quantize(Path("artifacts/googlenet.onnx"), FolderSource(calib, preprocess, size=100), preset,
                      reference=loaded.model)

The format's row (`edge_runtime.formats`) names the two functions here that carry out its int8:
`int8_settings` (the preset -> that backend's settings object, built from the recipe's passes) and
`quantizer` (the work). Both exporters call `quantize`; the CLI's choices come from the recipe tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.formats import BY_NAME
from export.errors import ToolkitError
from quantize.calibration import CalibrationSource
from quantize.presets import DEFAULT_CALIBRATION, DEFAULT_TARGET
from quantize.recipes import DEFAULT_RECIPE


@dataclass(frozen=True)
class Int8Preset:
    """What to make: the format, the recipe (its passes), and for ONNX the kernel target and options."""

    format: str
    recipe: str = DEFAULT_RECIPE
    target: str = DEFAULT_TARGET  # ONNX: the int8 kernels' preset (arm64, x86-avx2, x86-vnni, host)
    exclude: tuple[str, ...] = ()  # ONNX: node names kept float on top of the recipe's
    calibration: str = DEFAULT_CALIBRATION  # ONNX: the range estimator
    io: str = "float32"  # TFLite: the int8 model's input/output type

    def row(self):
        row = BY_NAME.get(self.format)
        if row is None or "int8" not in row.quantize:
            raise ToolkitError(f"no int8 for format {self.format!r}")
        return row

    def settings(self) -> Any:
        """The backend's own settings object for this preset (recorded in the artifact's sidecar)."""
        return self.row().int8_settings(self)


def quantize(model: Path, dataset: CalibrationSource, preset: Int8Preset, **context: Any) -> Any:
    """Quantize the FP32 `model` file with calibration `dataset`; `context` is what the backend also needs
    (see `quantize_onnx_model`, `quantize_tflite_model`)."""
    return preset.row().quantizer(Path(model), dataset, preset, **context)


def onnx_settings(preset: Int8Preset):
    from quantize.presets import recipe

    return recipe(preset.recipe, preset.target, preset.exclude, calibration=preset.calibration)


def tflite_settings(preset: Int8Preset):
    from quantize.tflite_int8 import recipe

    return recipe(preset.recipe)


def quantize_onnx_model(model: Path, dataset: CalibrationSource, preset: Int8Preset, **context: Any):
    """`googlenet.int8.onnx` beside `model` (or at `out_path`); context: `eval_set`, `fp32_logits`,
    `out_path`, `reference` (the PyTorch model, for learned rounding), `budget` and `validation` (accuracy
    control). Returns `quantize.onnx_int8.Int8Result`."""
    from quantize.onnx_int8 import quantize_onnx

    return quantize_onnx(model, dataset, preset.settings(), **context)


def quantize_tflite_model(model: Path, dataset: CalibrationSource, preset: Int8Preset, **context: Any):
    """`googlenet.tflite` and `googlenet.int8.tflite` in `out_dir`, from the PyTorch weights in `loaded`
    (`model` is the FP32 ONNX reference they are verified against); context: `loaded`, `out_dir`,
    `eval_set`, `fp32_logits`. Returns `quantize.tflite_quant.TfliteExportResult`."""
    from quantize.tflite_quant import export_tflite

    loaded, out_dir = context.pop("loaded"), context.pop("out_dir")
    return export_tflite(
        loaded, model, out_dir, quantize="int8", io=preset.io, calibration=dataset, int8=preset.settings(), **context
    )
