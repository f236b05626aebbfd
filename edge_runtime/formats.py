"""The formats the runtime core runs, one row each: the one table every layer reads a format from.

A row gives a format's file suffix, the runtime that runs it, its input layout, how to open a session (a
callable batch -> float logits) and how to read which kernels ran. `format_of(path)` is the one place a file
suffix is looked at; everything above (the exporters, `benchmarks run`, the bundle, the report's `format`
enum) extends or reads these rows by name. Standalone like `device_runner.py` (numpy and a runtime only,
imported lazily): the device bundle ships it beside `run.py`.
"""

from __future__ import annotations

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

    def __init__(self, path: str | Path, threads: int = 0, optimize: bool = True) -> None:
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
class RuntimeFormat:
    """One format as the runtimes see it (the export side adds its exporter and inspectors by `name`)."""

    name: str  # the report's `format`, the CLI's `python -m export NAME`
    suffix: str
    runtime: str  # the report's `kernels.runtime`; the ceiling is measured per runtime
    package: str  # what `pip install` brings the runtime
    layout: str  # the model input's axes, NCHW or NHWC
    load_runtime: Callable[[], Any]  # raises RunnerError when this machine lacks the runtime
    open: Callable[[str | Path, int, bool], Any]  # (path, threads (0: default), emulate) -> batch -> logits
    kernel_nodes: Callable[[str | Path, np.ndarray], list]  # `kernel_coverage.summarize`'s input
    emulates_int8: bool = False  # int8 also run with graph optimisations off: int8 arithmetic emulated in float
    delegate: str | None = None  # the CPU delegate a device runs it with (the report's `runtime` flag of that name)


FORMATS = (
    RuntimeFormat(
        name="onnx",
        suffix=".onnx",
        runtime="onnxruntime",
        package="onnxruntime",
        layout="NCHW",
        load_runtime=onnxruntime_module,
        open=lambda path, threads, emulate: OnnxSession(path, threads, optimize=not emulate),
        kernel_nodes=_onnx_kernels,
        emulates_int8=True,
    ),
    RuntimeFormat(
        name="tflite",
        suffix=".tflite",
        runtime="litert",
        package="ai-edge-litert",
        layout="NHWC",
        load_runtime=litert_interpreter_class,
        open=lambda path, threads, emulate: TfliteSession(path, threads or None),
        kernel_nodes=_litert_kernels,
        delegate="xnnpack",
    ),
)
BY_NAME = {f.name: f for f in FORMATS}
MODEL_SUFFIXES = tuple(f.suffix for f in FORMATS)
RUNTIMES = tuple(dict.fromkeys(f.runtime for f in FORMATS))
EXPECTED = " or ".join(MODEL_SUFFIXES)  # for messages: ".onnx or .tflite"


def format_of(path: str | Path) -> RuntimeFormat:
    """The row of a model file, by its suffix (case-insensitive); an unknown suffix is a one-line error."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if fmt.suffix == suffix:
            return fmt
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
