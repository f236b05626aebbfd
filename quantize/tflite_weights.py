"""Int8 weights on a float TFLite graph: the `weights-only` pass (W8A32).

The kernels are stored the way a full-int8 model stores them (per output channel, symmetric, scale =
max|w| / 127), each behind a DEQUANTIZE that LiteRT evaluates once, at load; every activation stays float. So the
file is as small as the int8 one and its error is the weights' alone: after GPTQ rounding, ten calibration draws
agree with FP32 on 99.2% of held-out photos (worst draw 98.75%), where per-tensor int8 activations on top give
99.1% (worst 98.25%; docs/int8-fidelity.md). What it does not give is int8 arithmetic: CPUs compute in float. It is
the format for GPU delegates, which compute in float anyway, and for devices where flash, not time, is short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np

from export.errors import ToolkitError

INT8_WEIGHT_MAX = 127  # TFLite int8 weights: symmetric, per output channel, in [-127, 127]


def per_channel_int8(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The integers and scales of `values` on TFLite's per-channel symmetric int8 grid along `axis`
    (scale = max|w| / 127, round to nearest): what the converter stores for an int8 kernel."""
    moved = np.moveaxis(values.astype(np.float64), axis, 0)
    scale = np.abs(moved).reshape(len(moved), -1).max(axis=1) / INT8_WEIGHT_MAX
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shape = (-1,) + (1,) * (moved.ndim - 1)
    ints = np.clip(np.round(moved / scale.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    return np.moveaxis(ints, 0, axis), scale


def constant_kernels(model, kinds: Collection[str]) -> Iterator[tuple[Any, Any, np.ndarray]]:
    """The ops of `kinds` (builtin names) in the first subgraph of `model` (a flatbuffer ModelT) whose kernel,
    input 1, is a constant float32 tensor: each op, its kernel tensor and the kernel's values."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = model.subgraphs[0]
    codes = {getattr(schema.BuiltinOperator, kind) for kind in kinds}
    for op in list(graph.operators):
        if flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]) not in codes:
            continue
        kernel = graph.tensors[op.inputs[1]]
        data = model.buffers[kernel.buffer].data
        if kernel.type == schema.TensorType.FLOAT32 and data is not None:
            yield op, kernel, np.frombuffer(bytes(data), np.float32).reshape(kernel.shape)


def packed_kernels(flatbuffer: bytes, kinds: Collection[str], pack, dequantize_version: int) -> bytes | None:
    """The constant float32 kernels of the ops of `kinds` (builtin names) stored packed behind a DEQUANTIZE;
    None if `pack` packed none. `pack(written, kernel, values)` gets the name of the tensor the op writes, the
    kernel tensor and its float32 values, and returns None (leave it float) or (bytes, TensorType, suffix,
    QuantizationParametersT or None)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    dequantize = schema.OperatorCodeT()
    dequantize.builtinCode = dequantize.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    dequantize.version = dequantize_version
    unpacks = []
    for op, kernel, values in constant_kernels(model, kinds):
        packing = pack(graph.tensors[op.outputs[0]].name.decode(), kernel, values)
        if packing is None:
            continue
        raw, tensor_type, suffix, quantization = packing
        packed = schema.BufferT()
        packed.data = np.frombuffer(raw, np.uint8)
        model.buffers.append(packed)
        model.buffers[kernel.buffer].data = None
        stored = schema.TensorT()
        stored.name, stored.shape, stored.type = kernel.name + suffix, kernel.shape, tensor_type
        stored.buffer = len(model.buffers) - 1
        stored.quantization = quantization
        graph.tensors.append(stored)
        unpack = schema.OperatorT()
        unpack.opcodeIndex = len(model.operatorCodes)
        unpack.inputs, unpack.outputs = [len(graph.tensors) - 1], [op.inputs[1]]
        unpacks.append(unpack)
    if not unpacks:
        return None
    model.operatorCodes.append(dequantize)
    graph.operators[:0] = unpacks
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def kernel_digest(values: np.ndarray) -> bytes:
    """A kernel's identity by value: the sha256 of its float32 bytes in TFLite's layout (OHWI, or [out, in])."""
    return hashlib.sha256(np.ascontiguousarray(values, np.float32).tobytes()).digest()


def int8_kernels(
    flatbuffer: bytes, keep_float: Collection[str] = (), keep_kernels: Collection[bytes] = frozenset()
) -> bytes:
    """Every constant float32 CONV_2D and FULLY_CONNECTED kernel stored as per-channel int8 behind a DEQUANTIZE,
    except those of the ops writing a tensor named in `keep_float` and those whose `kernel_digest` is in
    `keep_kernels` (each must be found). The lowered LRNs' band kernels are included: each row holds one value
    and zeros, which the int8 grid stores exactly (float16 would round 2e-5)."""
    from ai_edge_litert import schema_py_generated as schema

    kept = set(keep_float)
    found = set()

    def as_int8(written: str, kernel, values: np.ndarray):
        if written in kept:
            return None
        if keep_kernels and kernel_digest(values) in keep_kernels:
            found.add(kernel_digest(values))
            return None
        ints, scale = per_channel_int8(values)
        quantization = schema.QuantizationParametersT()
        quantization.scale = [float(v) for v in scale]
        quantization.zeroPoint = [0] * len(scale)
        quantization.quantizedDimension = 0
        return ints.tobytes(), schema.TensorType.INT8, b"/int8", quantization

    # version 4: the first DEQUANTIZE that takes per-channel int8 input
    packed = packed_kernels(flatbuffer, ("CONV_2D", "FULLY_CONNECTED"), as_int8, dequantize_version=4)
    if packed is None:
        raise ToolkitError("found no float convolution or classifier kernel to store as int8")
    if len(found) != len(set(keep_kernels)):
        raise ToolkitError(f"found {len(found)} of the {len(set(keep_kernels))} kernels to keep float in the graph")
    return packed
