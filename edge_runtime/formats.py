"""Every format the toolkit knows, one row each: the only list of formats, and the only place a suffix is read.

A row holds all of a format's facts: suffix, runtime, layout, session and kernel reader (which the runtime core
calls), and the export and benchmark side's (description, options, quantize modes, tolerance, inspectors,
exporter, command). Those upper-layer functions are `Ref("module:function")` strings, like entry points: this
module only holds them; a caller in the layer that owns the function resolves one, so the table imports nothing
above it (tests/test_layers.py counts each Ref as an import of every module that reads that field).
Standalone like `device_runner.py` (numpy, a runtime, importlib): the device bundle ships it beside `run.py`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import RunnerError


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        raise RunnerError("no ONNX runtime: pip install onnxruntime") from None
    return onnxruntime


def litert_interpreter_class():
    """ai-edge-litert (maintained); the abandoned tflite-runtime only as a fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise RunnerError("no TFLite runtime: pip install ai-edge-litert") from None
    return Interpreter


class OnnxSession:
    """An ONNX Runtime CPU session; `optimize=False` runs a QDQ model's int8 arithmetic emulated in float."""

    def __init__(self, path: str | Path | bytes, threads: int = 0, optimize: bool = True) -> None:
        """`path`: a model file, or a serialized model (an in-memory candidate, as accuracy control makes)."""
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        model = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.fixed_batch = self.session.get_inputs()[0].shape[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if isinstance(self.fixed_batch, int) and batch.shape[0] != self.fixed_batch:
            step = self.fixed_batch
            return np.concatenate([self(batch[i : i + step]) for i in range(0, len(batch), step)])
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def delegate_nodes(interpreter) -> int:
    """How many delegate kernels the interpreter runs: > 0 means XNNPACK (LiteRT's default CPU delegate) took
    over those parts of the graph; 0 means the interpreter's built-in kernels run everything, which compute int8
    differently (LiteRT skips XNNPACK, for instance, where it cannot read the CPU's topology)."""
    try:
        return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    except Exception:  # a runtime without the op inspection API
        return -1


class TfliteSession:
    """A LiteRT interpreter taking float batches in the artifact's preprocessing (NHWC); integer I/O is
    quantized on the way in and dequantized on the way out, so every model returns float logits."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.interpreter = litert_interpreter_class()(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.delegated_nodes = delegate_nodes(self.interpreter)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _quantize(self, image: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return image.astype(np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(image / scale + zero_point), info.min, info.max).astype(dtype)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        outputs = []
        for image in batch:
            self.interpreter.set_tensor(self.input["index"], self._quantize(image)[None])
            self.interpreter.invoke()
            logits = self.interpreter.get_tensor(self.output["index"])[0]
            if self.output["dtype"] != np.float32:
                scale, zero_point = self.output["quantization"]
                logits = (logits.astype(np.float32) - zero_point) * scale
            outputs.append(np.asarray(logits, dtype=np.float32))
        return np.stack(outputs)


def _onnx_kernels(path: str | Path, sample: np.ndarray) -> list:
    from edge_runtime.kernel_coverage import onnx_nodes

    return onnx_nodes(path, sample)


def _litert_kernels(path: str | Path, sample: np.ndarray) -> list:
    from edge_runtime.kernel_coverage import tflite_nodes

    interpreter = litert_interpreter_class()(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return tflite_nodes(interpreter)


@dataclass(frozen=True)
class Ref:
    """A function named `module:function`, imported on its first call: data here, resolved by its caller."""

    target: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


# Keys of `export.formats.OPTIONS`: what every format's command takes, and what only means something when quantizing.
COMMON_OPTIONS = ("weights", "num_classes", "labels", "seed", "out", "eval", "no_eval")
QUANTIZE_OPTIONS = (
    "calib",
    "calib_size",
    "calibration",
    "target",
    "exclude",
    "int8_recipe",
    "max_drop",
    "min_agreement",
)


@dataclass(frozen=True)
class Format:
    """Everything about one format. The first fields are the runtime core's (plain callables); the rest are
    the toolkit's, as data and `Ref`s into the layer that owns them, which only that layer's callers resolve."""

    name: str  # the report's `format`, the CLI's `python -m export NAME`
    suffix: str
    runtime: str  # the report's `kernels.runtime`; the ceiling is measured per runtime
    package: str  # what `pip install` brings the runtime
    layout: str  # the model input's axes, NCHW or NHWC
    load_runtime: Callable[[], Any]  # raises RunnerError when this machine lacks the runtime
    open: Callable[[str | Path, int, bool], Any]  # (path, threads (0: default), emulate) -> batch -> logits
    kernel_nodes: Callable[[str | Path, np.ndarray], list]  # `kernel_coverage.summarize`'s input
    # The export and benchmark side (`python -m export NAME`, `benchmarks run`):
    description: str  # the CLI's help line
    quantize: tuple[str, ...]  # allowed values of --quantize (empty: option absent)
    options: tuple[str, ...]  # keys of export.formats.OPTIONS
    tolerance: float  # max |logit error| of the FP32 model vs its reference, relative to the logit range
    run_command: Ref  # argparse.Namespace -> exit code (export.commands)
    exporter: Ref  # export.pipeline.ExportRequest -> ExportOutcome (export.pipeline)
    read_metadata: Ref  # path -> the toolkit's metadata inside the file ({} or missing keys when absent)
    counter: Ref  # path -> export.counting.CountReport (parameters, MACs per layer)
    op_histogram: Ref  # path -> {op: count}
    activation_memory: Ref  # path -> export.memory's peak activation report
    eval_runner: Ref  # (path, emulate=False) -> edge_runtime.sessions.Runner, for evaluating many images
    extra: str | None = None  # pip extra the format needs beyond the core install
    reference: bool = False  # its FP32 model is what every other artifact is compared against
    emulates_int8: bool = False  # int8 also run with graph optimisations off: int8 arithmetic emulated in float
    delegate: str | None = None  # the CPU delegate a device runs it with (the report's `runtime` flag of that name)
    # int8 (`quantize.api.quantize`): an `Int8Preset` -> the backend's settings, and the quantizer itself
    int8_settings: Ref | None = None
    quantizer: Ref | None = None
    own_int8_recipes: tuple[str, ...] = ()  # `--int8-recipe` names only this format defines (quantize.recipes)


FORMATS: tuple[Format, ...] = (
    Format(
        name="onnx",
        suffix=".onnx",
        runtime="onnxruntime",
        package="onnxruntime",
        layout="NCHW",
        load_runtime=onnxruntime_module,
        open=lambda path, threads, emulate: OnnxSession(path, threads, optimize=not emulate),
        kernel_nodes=_onnx_kernels,
        description="validated, simplified ONNX (ONNX Runtime and most edge runtimes)",
        quantize=("int8",),
        options=(*COMMON_OPTIONS, "opset", "dynamic_batch", "no_simplify", *QUANTIZE_OPTIONS),
        tolerance=1e-4,  # vs PyTorch
        run_command=Ref("export.commands:run_onnx"),
        exporter=Ref("export.pipeline:export_onnx_request"),
        read_metadata=Ref("export.artifacts:read_onnx_info"),
        counter=Ref("export.inspect_onnx:count_onnx"),
        op_histogram=Ref("export.inspect_onnx:onnx_op_histogram"),
        activation_memory=Ref("export.memory:onnx_activation_bytes"),
        eval_runner=Ref("edge_runtime.sessions:onnx_eval_runner"),
        reference=True,
        emulates_int8=True,
        int8_settings=Ref("quantize.api:onnx_settings"),
        quantizer=Ref("quantize.api:quantize_onnx_model"),
        own_int8_recipes=("learned-a16", "learned-palette"),
    ),
    Format(
        name="tflite",
        suffix=".tflite",
        runtime="litert",
        package="ai-edge-litert",
        layout="NHWC",
        load_runtime=litert_interpreter_class,
        open=lambda path, threads, emulate: TfliteSession(path, threads or None),
        kernel_nodes=_litert_kernels,
        description="TFLite/LiteRT fp32 (+ int8, fp16 or dynamic-range), verified in LiteRT",
        quantize=("int8", "fp16", "dynamic"),
        options=(*COMMON_OPTIONS, "calib", "calib_size", "io", "int8_recipe"),
        tolerance=1e-3,  # vs the FP32 ONNX model
        run_command=Ref("export.commands:run_tflite"),
        exporter=Ref("export.pipeline:export_tflite_request"),
        read_metadata=Ref("export.artifacts:read_tflite_metadata"),
        counter=Ref("export.inspect_tflite:count_tflite"),
        op_histogram=Ref("edge_runtime.sessions:tflite_op_histogram"),
        activation_memory=Ref("export.memory:tflite_activation_bytes"),
        eval_runner=Ref("edge_runtime.sessions:tflite_eval_runner"),
        extra="tflite",
        delegate="xnnpack",
        int8_settings=Ref("quantize.api:tflite_settings"),
        quantizer=Ref("quantize.api:quantize_tflite_model"),
        own_int8_recipes=("learned-mixed",),
    ),
)
BY_NAME = {f.name: f for f in FORMATS}
MODEL_SUFFIXES = tuple(f.suffix for f in FORMATS)
RUNTIMES = tuple(dict.fromkeys(f.runtime for f in FORMATS))
EXPECTED = " or ".join(MODEL_SUFFIXES)  # for messages: ".onnx or .tflite"
REFERENCE = next(f for f in FORMATS if f.reference)


def format_of(path: str | Path, strict: bool = True) -> Format:
    """The row of a model file, by its suffix (case-insensitive); an unknown suffix is a one-line error, or
    with `strict=False` read as the reference format (whose inspectors then name what is wrong with it)."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if fmt.suffix == suffix:
            return fmt
    if not strict:
        return REFERENCE
    raise RunnerError(f"unknown model format (expected {EXPECTED})", path)


def is_model(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MODEL_SUFFIXES


def open_session(path: str | Path, threads: int = 0, emulate: bool = False):
    """A callable batch -> float logits for a model file of any row, in that row's runtime."""
    fmt = format_of(path)
    try:
        return fmt.open(path, threads, emulate)
    except RunnerError:
        raise
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RunnerError(f"{path}: the runtime cannot load the model ({first.strip()[:200]})") from None


def missing_runtime(name: str) -> str | None:
    """Why this machine cannot run a `name` model (a device may have only one of the runtimes), or None."""
    fmt = BY_NAME[name]
    try:
        fmt.load_runtime()
    except (ImportError, RunnerError):
        return f"pip install {fmt.package} to run it"
    return None


def has_emulated_run(name: str, precision: str) -> bool:
    """An int8 ONNX is also run with graph optimisations off: int8 arithmetic emulated in float, the same on any
    CPU (ONNX Runtime's x86 u8s8 kernels can saturate where ARM and VNNI devices do not)."""
    return BY_NAME[name].emulates_int8 and precision == "int8"
