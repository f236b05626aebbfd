"""int8 quantization with real calibration sets, and the drift report that says what it cost.

from quantize import QuantizationConfig, FolderSource, quantize_onnx
source = FolderSource(Path("calib"), preprocess, size=200)
quantize_onnx(Path("artifacts/googlenet.onnx"), source, QuantizationConfig.arm64())
"""

from quantize.calibration import (
    ArraySource,
    BuiltinPhotosSource,
    CalibrationSource,
    FolderSource,
    IterableSource,
    OrtCalibrationReader,
    calibration_source,
)
from quantize.onnx_int8 import Int8Result, quantize_onnx
from quantize.presets import PRESETS, QuantizationConfig, preset

__all__ = [
    "PRESETS",
    "ArraySource",
    "BuiltinPhotosSource",
    "CalibrationSource",
    "FolderSource",
    "Int8Result",
    "IterableSource",
    "OrtCalibrationReader",
    "QuantizationConfig",
    "calibration_source",
    "preset",
    "quantize_onnx",
]
