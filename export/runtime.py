"""Running artifacts in their real runtimes (ONNX Runtime now; LiteRT for .tflite) behind one call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from export.errors import ToolkitError, one_line


class Runner(Protocol):
    """Anything that maps a preprocessed batch to logits [N, classes]."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxRunner:
    """An ONNX Runtime CPU session; `optimize=False` disables graph optimisations, which for a QDQ
    model means int8 arithmetic emulated in float (target-independent numbers)."""

    def __init__(self, path: str | Path, threads: int = 0, optimize: bool = True, workers: int = 1) -> None:
        import onnxruntime as ort

        self.workers = workers  # how many batches `predict` may run at once (sessions are thread-safe)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ToolkitError(f"ONNX Runtime cannot load the model ({one_line(exc)})", path) from None
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.fixed_batch = self.session.get_inputs()[0].shape[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if isinstance(self.fixed_batch, int) and batch.shape[0] != self.fixed_batch:
            return np.concatenate(
                [self(batch[i : i + self.fixed_batch]) for i in range(0, len(batch), self.fixed_batch)]
            )
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def throughput_runner(path: str | Path, optimize: bool = True) -> OnnxRunner:
    """A session tuned for evaluating many images: one thread per run, one run per core at once.

    At batch 1 GoogLeNet's small convolutions scale poorly across threads; two single-threaded runs
    side by side evaluate 5-20% faster on two cores (measured here, most for emulated int8).
    """
    return OnnxRunner(path, threads=1, optimize=optimize, workers=os.cpu_count() or 1)


def run_batches(runner: Runner, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Logits for every row of `inputs`, computed batch by batch."""
    return np.concatenate([runner(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
