"""GoogLeNet edge-export toolkit: the reference model, its weights, and ONNX/TFLite exporters.

Python API (the CLI `python -m export` is a thin layer over it)::

    from export import load_model, export_onnx, OnnxExportOptions
    loaded = load_model("bvlc_googlenet.onnx")
    result = export_onnx(loaded, OnnxExportOptions(out_dir=Path("artifacts")))
"""

from __future__ import annotations

__version__ = "0.1.0"

from export.model import GoogLeNet, googlenet_loss
from export.onnx_export import OnnxExportOptions, export_onnx
from export.preprocess import Preprocess
from export.torchvision_variant import TorchvisionGoogLeNet
from export.weights import LoadedModel, load_model

__all__ = [
    "GoogLeNet",
    "LoadedModel",
    "OnnxExportOptions",
    "Preprocess",
    "TorchvisionGoogLeNet",
    "__version__",
    "export_onnx",
    "googlenet_loss",
    "load_model",
]
