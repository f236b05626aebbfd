"""Activation memory of an exported model, estimated from its graph (.onnx or .tflite).

Weights are a file-size question; what a device must also find at run time is room for the tensors that
flow between ops. This module replays the runtime's op order (ONNX: node order, which the format requires
to be topological; TFLite: the flatbuffer's operator order, which the interpreter executes as stored) and
reports the largest total size of intermediate tensors alive at the same time. A tensor lives from the op
that produces it (graph inputs: from the start) through the last op that reads it (graph outputs: to the
end); sizes come from the stored dtype, so int8/uint8 tensors count one byte per element.

Constants are not activations: initializers, Constant nodes, flatbuffer buffers, and anything computed
from constants alone (a QDQ model's DequantizeLinear of a weight, a fp16 model's DEQUANTIZE of one, which
LiteRT evaluates once at load). The figure is what an allocator that never shares memory between live
tensors needs at least; TFLite's arena planner and ONNX Runtime's memory patterns get close to it, and
in-place ops (reshape aliasing, fused activations) can bring the real footprint somewhat lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_runtime.formats import format_of
from export.errors import ToolkitError, one_line
from export.inspect_onnx import _fix_inputs, load_onnx
from export.inspect_tflite import TfliteGraph

# Bits per element where numpy's itemsize is not the storage size.
_ONNX_SUBBYTE_BITS = {
    onnx.TensorProto.INT4: 4,
    onnx.TensorProto.UINT4: 4,
    **({onnx.TensorProto.FLOAT4E2M1: 4} if hasattr(onnx.TensorProto, "FLOAT4E2M1") else {}),
}
_TFLITE_BITS = {
    "FLOAT32": 32, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT64": 64,
    "INT2": 2, "INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8, "BOOL": 8, "FLOAT8_E4M3FN": 8, "FLOAT8_E5M2": 8,
    "INT16": 16, "UINT16": 16, "INT32": 32, "UINT32": 32, "INT64": 64, "UINT64": 64,
    "COMPLEX64": 64, "COMPLEX128": 128,
}  # fmt: skip


@dataclass(frozen=True)
class _Op:
    """One executed op: its index in the stored order, a display name, the activations it reads and writes."""

    index: int
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _nbytes(shape: tuple[int, ...], bits: int) -> int:
    return math.ceil(math.prod(shape) * bits / 8)


def _peak(ops: list[_Op], sizes: dict[str, int], graph_inputs: list[str], graph_outputs: list[str]) -> dict[str, Any]:
    """Replay `ops` (not empty) in order and find the first step where the live activations (those in `sizes`)
    add up most."""
    last = len(ops) - 1
    start = {name: 0 for name in graph_inputs if name in sizes}
    end = dict(start)
    for index, op in enumerate(ops):
        for name in op.inputs:
            if name in sizes:
                end[name] = index
        for name in op.outputs:
            if name in sizes and name not in start:
                start[name] = index
                end.setdefault(name, index)  # written but never read: alive while its op runs
    for name in graph_outputs:
        if name in start:
            end[name] = last
    delta = [0] * (len(ops) + 1)
    for name, first in start.items():
        delta[first] += sizes[name]
        delta[max(end[name], first) + 1] -= sizes[name]
    live, best, best_index = 0, -1, 0
    for index in range(len(ops)):
        live += delta[index]
        if live > best:
            best, best_index = live, index
    largest = max(start, key=lambda name: sizes[name], default=None)
    return {
        "activation_bytes": max(best, 0),
        "peak_op": ops[best_index].name,
        "peak_op_index": ops[best_index].index,
        "largest_tensor_bytes": sizes[largest] if largest is not None else 0,
        "largest_tensor": largest,
        "tensors": len(start),
        "ops": len(ops),
        "order": "graph",
    }


# ------------------------------------------------------------------------------------------ ONNX


def onnx_activation_bytes(path: Path) -> dict[str, Any]:
    model = load_onnx(path)
    try:
        _fix_inputs(model.graph, 1)  # a symbolic batch counts as one image
    except ToolkitError as exc:
        raise ToolkitError(str(exc), path) from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ToolkitError(f"ONNX shape inference failed ({one_line(exc)})", path) from None
    graph = inferred.graph
    constants = {t.name for t in graph.initializer} | {""}
    ops: list[_Op] = []
    for index, node in enumerate(graph.node):
        reads = [name for name in node.input if name]
        if node.op_type == "Constant" or (reads and all(name in constants for name in reads)):
            constants.update(node.output)  # folded at load time, e.g. DequantizeLinear of a weight
            continue
        ops.append(
            _Op(
                index,
                f"{node.name or node.output[0]} ({node.op_type}, node {index})",
                tuple(node.input),
                tuple(node.output),
            )
        )
    if not ops:
        raise ToolkitError("no ops on activations (the graph only computes constants)", path)
    values = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    names = {name for op in ops for name in (*op.inputs, *op.outputs)} | {v.name for v in graph.input}
    sizes: dict[str, int] = {}
    for name in sorted(names - constants):
        value = values.get(name)
        tensor = value.type.tensor_type if value is not None else None
        dims = tensor.shape.dim if tensor is not None and tensor.HasField("shape") else None
        if (
            dims is None
            or tensor.elem_type == onnx.TensorProto.UNDEFINED
            or any(not d.HasField("dim_value") for d in dims)
        ):
            raise ToolkitError(f"shape or dtype of tensor {name!r} is unknown after ONNX shape inference", path)
        bits = _ONNX_SUBBYTE_BITS.get(tensor.elem_type)
        if bits is None:
            bits = 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        sizes[name] = _nbytes(tuple(d.dim_value for d in dims), bits)
    inputs = [v.name for v in graph.input if v.name not in constants]
    return {"format": "onnx", **_peak(ops, sizes, inputs, [v.name for v in graph.output])}


# ---------------------------------------------------------------------------------------- TFLite


def tflite_activation_bytes(path: Path) -> dict[str, Any]:
    g = TfliteGraph(path)
    constants = {t for t in range(len(g.tensors)) if g.is_constant(t) or g.tensors[t].isVariable}
    ops: list[_Op] = []
    for index, op in enumerate(g.operators):
        outputs = tuple(str(int(t)) for t in op.outputs if t >= 0)
        inputs = g.op_inputs(index)
        if inputs and all(t in constants for t in inputs):
            constants.update(int(t) for t in outputs)  # e.g. a fp16 weight's DEQUANTIZE, run once at load
            continue
        label = g.name(int(op.outputs[0])) if len(op.outputs) else ""
        ops.append(_Op(index, f"{g.ops[index]} #{index} ({label})", tuple(str(t) for t in inputs), outputs))
    if not ops:
        raise ToolkitError("no ops on activations (the graph only computes constants)", path)
    used = {int(name) for op in ops for name in (*op.inputs, *op.outputs)} | set(g.inputs)
    sizes: dict[str, int] = {}
    for tensor in sorted(used - constants):
        dtype = g.dtype(tensor)
        if dtype not in _TFLITE_BITS:
            raise ToolkitError(f"tensor {g.name(tensor)!r} has dtype {dtype}, whose size is unknown", path)
        sizes[str(tensor)] = _nbytes(g.shape(tensor), _TFLITE_BITS[dtype])
    inputs = [str(t) for t in g.inputs if t not in constants]
    result = _peak(ops, sizes, inputs, [str(t) for t in g.outputs])
    if result["largest_tensor"] is not None:
        result["largest_tensor"] = g.name(int(result["largest_tensor"]))
    return {"format": "tflite", **result}


def activation_bytes(path: str | Path) -> dict[str, Any]:
    """Peak activation memory of one model in bytes, read by its format's row (an unknown suffix as ONNX).

    Returns `activation_bytes` (the peak), `peak_op` / `peak_op_index` (the op running at the peak, index
    among the ops that touch activations), `largest_tensor_bytes` / `largest_tensor`, `tensors`, `ops`,
    `order` ("graph": the stored op order) and `format`. Unknown or dynamic sizes (beyond a batch dim,
    taken as 1) are a one-line ToolkitError naming the file.
    """
    return format_of(path, strict=False).activation_memory(Path(path))
