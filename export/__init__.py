"""GoogLeNet edge-export toolkit: the reference model, its weights, and ONNX/TFLite exporters.

Python API (the CLI `python -m export` is a thin layer over it)::

    from export import load_model, export_onnx, OnnxExportOptions
    loaded = load_model("bvlc_googlenet.onnx")
    result = export_onnx(loaded, OnnxExportOptions(out_dir=Path("artifacts")))

The whole command, quantization and publishing included, is `export.pipeline.export_model`.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Lazy (PEP 562): `import export` stays light, so a command that only reads JSON (`python -m benchmarks gate`)
# does not pay for PyTorch; `from export import load_model` imports what it names on first use.
_LAZY = {
    "GoogLeNet": "export.model",
    "googlenet_loss": "export.model",
    "OnnxExportOptions": "export.onnx_export",
    "export_onnx": "export.onnx_export",
    "Preprocess": "export.preprocess",
    "TorchvisionGoogLeNet": "export.torchvision_variant",
    "LoadedModel": "export.weights",
    "load_model": "export.weights",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")


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
