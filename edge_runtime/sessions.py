"""Running artifacts in their real runtimes (ONNX Runtime now; LiteRT for .tflite) behind one call."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import RunnerError, ToolkitError, one_line
from edge_runtime.formats import OnnxSession, TfliteSession
from edge_runtime.hostinfo import usable_cores


class Runner(Protocol):
    """Anything that maps a preprocessed batch to logits [N, classes]."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxRunner(OnnxSession):
    """An ONNX Runtime CPU session; `optimize=False` disables graph optimisations, which for a QDQ
    model means int8 arithmetic emulated in float (target-independent numbers)."""

    def __init__(self, path: str | Path, threads: int = 0, optimize: bool = True, workers: int = 1) -> None:
        self.workers = workers  # how many batches `predict` may run at once (sessions are thread-safe)
        try:
            super().__init__(path, threads, optimize)
        except RunnerError as exc:
            raise ToolkitError(str(exc)) from None
        except Exception as exc:
            raise ToolkitError(f"ONNX Runtime cannot load the model ({one_line(exc)})", path) from None


def throughput_runner(path: str | Path, optimize: bool = True) -> OnnxRunner:
    """A session tuned for evaluating many images: one thread per run, one run per core at once.

    At batch 1 GoogLeNet's small convolutions scale poorly across threads; two single-threaded runs
    side by side evaluate 5-20% faster on two cores (measured here, most for emulated int8).
    """
    return OnnxRunner(path, threads=1, optimize=optimize, workers=usable_cores())


def onnx_eval_runner(path: str | Path, emulate: bool = False) -> OnnxRunner:
    """For evaluating many images (`throughput_runner`); `emulate`: graph optimisations off.

    Each run is single-threaded either way, so a batch's float summation order, and the logits, do not depend
    on how many cores evaluate batches side by side (emulated int8 on 400 photos: 2x faster on two cores).
    """
    return throughput_runner(path, optimize=not emulate)


def tflite_eval_runner(path: str | Path, emulate: bool = False) -> TfliteRunner:
    """One single-threaded interpreter (not thread-safe); LiteRT has no emulated int8 run."""
    return TfliteRunner(path, threads=1)


def run_batches(runner: Runner, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Logits for every row of `inputs`, computed batch by batch."""
    return np.concatenate([runner(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


class TfliteRunner(TfliteSession):
    """A LiteRT interpreter; takes float batches in the artifact's own preprocessing (NHWC) and returns
    float logits, quantizing the input and dequantizing the output where the model's I/O is integer."""

    workers = 1  # an interpreter is not thread-safe

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            super().__init__(path, threads)
        except RunnerError as exc:
            raise ToolkitError(str(exc)) from None
        except Exception as exc:
            raise ToolkitError(f"LiteRT cannot load the model ({one_line(exc)})", path) from None


@functools.lru_cache(maxsize=1)
def tflite_names() -> tuple[dict[int, str], dict[int, str]]:
    """LiteRT's schema codes -> names: builtin operators (`CONV_2D`) and tensor types (`INT8`)."""
    from ai_edge_litert import schema_py_generated as schema

    def names(enum) -> dict[int, str]:
        return {v: k for k, v in vars(enum).items() if not k.startswith("_")}

    return names(schema.BuiltinOperator), names(schema.TensorType)


def tflite_op_histogram(path: str | Path) -> dict[str, int]:
    """Ops of a .tflite file read from its flatbuffer, as `NAME[input dtype->output dtype]` -> count.

    Read from the file, not the interpreter: with XNNPACK every delegated node shows as DELEGATE.
    """
    from collections import Counter

    from ai_edge_litert.tools import flatbuffer_utils

    names, types = tflite_names()
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    counts: Counter[str] = Counter()
    for op in graph.operators:
        code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        inputs = [i for i in op.inputs if i >= 0]
        t_in = types[graph.tensors[inputs[0]].type] if inputs else "-"
        t_out = types[graph.tensors[op.outputs[0]].type]
        counts[
            f"{names.get(code, code)}[{t_in}->{t_out}]" if t_in != t_out else f"{names.get(code, code)}[{t_in}]"
        ] += 1
    return dict(sorted(counts.items()))
