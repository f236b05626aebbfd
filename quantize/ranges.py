"""Activation ranges beyond plain min-max: MSE ranges, and ranges set by the graph's structure (below).

MSE: activation ranges chosen to minimise each tensor's int8 error over the calibration images (MSE), not
its raw minimum and maximum.

With min-max, the one largest value among 100 photos sets the step for every value of that tensor; most
ReLU outputs sit far below it, so they are rounded coarsely. Clipping the rare tail instead trades a few
clipped values for a finer step everywhere (AIMET's `tf_enhanced` and TensorRT's MSE calibration make the
same trade). The error model is per value: clipped values cost their distance to the bound, values
inside the range cost the uniform rounding noise step^2/12, and exact zeros (ReLU's) cost nothing, since
the zero point represents them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.hostinfo import usable_cores
from export.errors import ToolkitError
from export.ui import progress

BINS = 2048
LEVELS = 255  # int8 steps between the range's two ends
# candidate ranges: the min-max range scaled by these factors (1.0 = min-max itself, always a candidate)
SCALES = np.linspace(0.02, 1.0, 197)


def mse_range(counts: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The range [s*low, s*high] (s in SCALES) of least expected int8 error for the values counted in
    `counts` (BINS equal bins over [low, high]; exact zeros left out: no error at any scale)."""
    if high <= low or not counts.any():
        return low, high
    centres = low + (np.arange(len(counts)) + 0.5) * (high - low) / len(counts)
    lows, highs = SCALES[:, None] * low, SCALES[:, None] * high
    step = (highs - lows) / LEVELS
    clipped = np.maximum(centres - highs, 0.0) + np.maximum(lows - centres, 0.0)
    inside = (clipped == 0) * (step**2 / 12)
    error = ((clipped**2 + inside) * counts).sum(axis=1)
    best = int(np.argmin(error))
    return float(SCALES[best] * low), float(SCALES[best] * high)


def _session_with_outputs(model_path: Path, names: list[str]):
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    present = {output.name for output in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # no graph optimisation: a fused node would hide the tensors whose values are counted
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def histograms(
    model_path: Path, bounds: Mapping[str, tuple[float, float]], feeds: Iterable[dict[str, np.ndarray]], total: int
) -> dict[str, np.ndarray]:
    """Per tensor: counts of its nonzero values in BINS bins over its min-max `bounds`, over every
    calibration image (one single-threaded session per core)."""
    names = sorted(name for name, (low, high) in bounds.items() if high > low)
    session = _session_with_outputs(model_path, names)
    counts = {name: np.zeros(BINS, np.int64) for name in names}
    with ThreadPoolExecutor(usable_cores()) as pool:
        runs = pool.map(lambda feed: session.run(names, feed), feeds)
        for outputs in progress(runs, "Histograms", total=total):
            for name, values in zip(names, outputs, strict=True):
                low, high = bounds[name]
                flat = values.ravel()
                nonzero = flat[flat != 0]
                index = ((nonzero - low) * (BINS / (high - low))).astype(np.int64)
                counts[name] += np.bincount(np.clip(index, 0, BINS - 1), minlength=BINS)
    return counts


def mse_ranges(
    model_path: Path, bounds: Mapping[str, tuple[float, float]], feeds: Iterable[dict[str, np.ndarray]], total: int
) -> dict[str, tuple[float, float]]:
    """Each tensor's range of least int8 error, from the histograms of its values inside its min-max `bounds`."""
    counted = histograms(model_path, bounds, feeds, total)
    chosen = dict(bounds)
    for name, counts in counted.items():
        chosen[name] = mse_range(counts, *bounds[name])
    return chosen


def set_mse_ranges(pre: Path, ranges, reader, count: int) -> None:
    """Replace ORT's min-max `ranges` (in place) by those of least int8 error, from a second pass of `reader`."""
    from onnxruntime.quantization.calibrate import TensorData

    bounds = {
        name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
        for name, data in ranges.items()
        if np.size(data.range_value[0]) == 1
    }
    chosen = mse_ranges(pre, bounds, iter(reader.get_next, None), count)
    for name, (low, high) in chosen.items():
        old_low, old_high = (np.asarray(v) for v in ranges[name].range_value)
        ranges[name] = TensorData(lowest=np.array(low, old_low.dtype), highest=np.array(high, old_high.dtype))


# -- ranges set by the graph's structure (the `wide-5x5-inputs` and `shared-concat-grid` passes) --------------
def inputs_of_5x5_convs(model: onnx.ModelProto) -> list[str]:
    """The activation read by each Conv with a 5x5 kernel (in GoogLeNet, the 5x5-reduce outputs)."""
    kernels = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        node.input[0]
        for node in model.graph.node
        if node.op_type == "Conv" and len(node.input) > 1 and kernels.get(node.input[1], ())[2:] == (5, 5)
    ]


def widen_ranges(ranges, names: list[str], factor: float) -> None:
    """Each named tensor's calibrated range times `factor` (about zero: a ReLU output's stays [0, factor x max])."""
    from onnxruntime.quantization.calibrate import TensorData

    for name in names:
        if name not in ranges:
            raise ToolkitError(f"no calibrated range for {name!r} to widen")
        low, high = (np.asarray(v) for v in ranges[name].range_value)
        ranges[name] = TensorData(lowest=(low * factor).astype(low.dtype), highest=(high * factor).astype(high.dtype))


def share_concat_ranges(model: onnx.ModelProto, ranges) -> None:
    """Each Concat's inputs and output get the union of their calibrated ranges (see `shared_concat_ranges`)."""
    from onnxruntime.quantization.calibrate import TensorData

    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        names = [n for n in (*node.input, *node.output) if n in ranges]
        if len(names) < 2:
            continue
        low = min(float(np.min(ranges[n].range_value[0])) for n in names)
        high = max(float(np.max(ranges[n].range_value[1])) for n in names)
        for name in names:
            old_low, old_high = (np.asarray(v) for v in ranges[name].range_value)
            ranges[name] = TensorData(
                lowest=np.full(old_low.shape, low, old_low.dtype), highest=np.full(old_high.shape, high, old_high.dtype)
            )
