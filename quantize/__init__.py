"""int8 quantization with real calibration sets, and the drift report that says what it cost.

from quantize import QuantizationConfig, FolderSource, quantize_onnx
source = FolderSource(Path("calib"), preprocess, size=200)
quantize_onnx(Path("artifacts/googlenet.onnx"), source, QuantizationConfig.arm64())
"""

from __future__ import annotations

# Lazy (PEP 562), like `export`: the CLI's option table reads `quantize.recipes` without importing ONNX Runtime.
_LAZY = {
    "ArraySource": "quantize.calibration",
    "BuiltinPhotosSource": "quantize.calibration",
    "CalibrationSource": "quantize.calibration",
    "FolderSource": "quantize.calibration",
    "IterableSource": "quantize.calibration",
    "OrtCalibrationReader": "quantize.calibration",
    "calibration_source": "quantize.calibration",
    "Int8Result": "quantize.onnx_int8",
    "quantize_onnx": "quantize.onnx_int8",
    "PRESETS": "quantize.presets",
    "QuantizationConfig": "quantize.presets",
    "preset": "quantize.presets",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantize' has no attribute {name!r}")
