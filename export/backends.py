"""The export half of the format table: one row per format, extending the runtime row of the same name.

`edge_runtime.formats` says how a format runs (suffix, runtime, layout, session, kernels); a `Backend` adds what
the toolkit does with it: the CLI's description and options, the pip extra, the `--quantize` modes, the
validation tolerance of its FP32 model, its metadata reader and its inspectors (parameters and MACs, op
histogram, activation memory). Functions are named `module:function` and imported when called, so the table
stays light (`--help`, `gate`) and imports nothing above this layer. `python -m export` builds its parser from
these rows (`export.formats`), `benchmarks run` and the bundle inspect through them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import RunnerError
from edge_runtime.formats import BY_NAME, RuntimeFormat, format_of


@dataclass(frozen=True)
class Ref:
    """A function named `module:function`, imported on its first call."""

    target: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


# Keys of `export.formats.OPTIONS`: what every format's command takes, and what only means something when quantizing.
COMMON_OPTIONS = ("weights", "num_classes", "labels", "seed", "out", "eval", "no_eval")
QUANTIZE_OPTIONS = ("calib", "calib_size", "calibration", "target", "exclude", "int8_recipe")


@dataclass(frozen=True)
class Backend:
    runtime: RuntimeFormat
    description: str
    quantize: tuple[str, ...]  # allowed values of --quantize (empty: option absent)
    options: tuple[str, ...]  # keys of export.formats.OPTIONS
    tolerance: float  # max |logit error| of the FP32 model vs its reference, relative to the logit range
    read_metadata: Ref  # path -> the toolkit's metadata inside the file ({} or missing keys when absent)
    count: Ref  # path -> export.counting.CountReport (parameters, MACs per layer)
    op_histogram: Ref  # path -> {op: count}
    activation_memory: Ref  # path -> export.memory's peak activation report
    eval_runner: Ref  # (path, emulate=False) -> edge_runtime.sessions.Runner, for evaluating many images
    extra: str | None = None  # pip extra the format needs beyond the core install
    reference: bool = False  # its FP32 model is what every other artifact is compared against

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def suffix(self) -> str:
        return self.runtime.suffix


BACKENDS: tuple[Backend, ...] = (
    Backend(
        runtime=BY_NAME["onnx"],
        description="validated, simplified ONNX (ONNX Runtime and most edge runtimes)",
        quantize=("int8",),
        options=(*COMMON_OPTIONS, "opset", "dynamic_batch", "no_simplify", *QUANTIZE_OPTIONS),
        tolerance=1e-4,  # vs PyTorch
        read_metadata=Ref("export.artifacts:read_onnx_info"),
        count=Ref("export.inspect_onnx:count_onnx"),
        op_histogram=Ref("export.inspect_onnx:onnx_op_histogram"),
        activation_memory=Ref("export.memory:onnx_activation_bytes"),
        eval_runner=Ref("edge_runtime.sessions:onnx_eval_runner"),
        reference=True,
    ),
    Backend(
        runtime=BY_NAME["tflite"],
        description="TFLite/LiteRT fp32 (+ int8, fp16 or dynamic-range), verified in LiteRT",
        quantize=("int8", "fp16", "dynamic"),
        options=(*COMMON_OPTIONS, "calib", "calib_size", "io", "int8_recipe"),
        tolerance=1e-3,  # vs the FP32 ONNX model
        read_metadata=Ref("export.artifacts:read_tflite_metadata"),
        count=Ref("export.inspect_tflite:count_tflite"),
        op_histogram=Ref("edge_runtime.sessions:tflite_op_histogram"),
        activation_memory=Ref("export.memory:tflite_activation_bytes"),
        eval_runner=Ref("edge_runtime.sessions:tflite_eval_runner"),
        extra="tflite",
    ),
)
BY_FORMAT = {b.name: b for b in BACKENDS}
REFERENCE = next(b for b in BACKENDS if b.reference)
# An inspector given a file of no known suffix reads it as this format, whose reader names what is wrong with it.
READ_UNKNOWN_AS = REFERENCE.name


def backend(name: str) -> Backend:
    return BY_FORMAT[name]


def backend_of(path: str | Path, strict: bool = True) -> Backend:
    """The row of a model file by its suffix; `strict=False` reads an unknown suffix as `READ_UNKNOWN_AS`."""
    try:
        return BY_FORMAT[format_of(path).name]
    except RunnerError:
        if strict:
            raise
        return BY_FORMAT[READ_UNKNOWN_AS]
