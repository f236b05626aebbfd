"""Activations kept in float inside a QDQ model, weights still int8: the file does not grow, and the tensor
loses its int8 rounding (its producer and readers then compute in float).

ONNX Runtime's quantizer drops a Relu whose output it quantizes with the zero point at the bottom of the
type (the QuantizeLinear clamps the negatives instead); removing that QuantizeLinear puts a Relu back, so
the float graph computes exactly what the int8 one approximated.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper


def activation_quantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Float tensor name -> the QuantizeLinear that rounds it, for every activation (not initializer)."""
    constants = {tensor.name for tensor in model.graph.initializer}
    return {
        node.input[0]: node
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants
    }


def _activations_read(
    node: onnx.NodeProto, by_output: dict[str, onnx.NodeProto], quantizers: dict[str, onnx.NodeProto]
) -> list[str]:
    """The quantized activations `node` reads, through DequantizeLinear back to their QuantizeLinear."""
    found = []
    for name in node.input:
        dequantize = by_output.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = by_output.get(dequantize.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.input[0] in quantizers:
            found.append(quantize.input[0])
    return found


def tensors_read_by(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """The quantized activations that ops of `op_types` read (through their DequantizeLinear)."""
    quantizers = activation_quantizers(model)
    by_output = {node.output[0]: node for node in model.graph.node}
    wanted = set(op_types)
    found = [name for node in model.graph.node if node.op_type in wanted
             for name in _activations_read(node, by_output, quantizers)]  # fmt: skip
    return list(dict.fromkeys(found))


def tensors_around(model: onnx.ModelProto, node_names: Iterable[str]) -> list[str]:
    """The quantized activations that the nodes `node_names` read (through their DequantizeLinear) or write."""
    quantizers = activation_quantizers(model)
    by_output = {node.output[0]: node for node in model.graph.node}
    wanted = set(node_names)
    found = []
    for node in model.graph.node:
        if node.name in wanted:
            found += _activations_read(node, by_output, quantizers)
            found += [name for name in node.output if name in quantizers]
    return list(dict.fromkeys(found))


def grid_groups(model: onnx.ModelProto) -> list[list[str]]:
    """The quantized activations grouped by the int8 grid they share through a node (MaxPool, Flatten, a Concat
    with shared ranges: the same scale and zero point on both sides). Keeping one member float alone changes
    little, since the others still round the same values on that grid; a group is kept float whole."""
    quantizers = activation_quantizers(model)
    constants = {tensor.name: tensor for tensor in model.graph.initializer}

    def grid_of(quantize: onnx.NodeProto) -> tuple[bytes, ...] | None:
        params = quantize.input[1:3]
        if not all(param in constants for param in params):
            return None
        return tuple(numpy_helper.to_array(constants[param]).tobytes() for param in params)

    grids = {name: grid_of(quantize) for name, quantize in quantizers.items()}

    parent = {name: name for name in quantizers}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    by_output = {node.output[0]: node for node in model.graph.node}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for written in (name for name in node.output if name in quantizers):
            for read in _activations_read(node, by_output, quantizers):
                if grids[read] is not None and grids[read] == grids[written]:
                    parent[root(written)] = root(read)
    groups: dict[str, list[str]] = {}
    for name in sorted(quantizers):
        groups.setdefault(root(name), []).append(name)
    return sorted(groups.values())


def stem_nodes(model: onnx.ModelProto) -> list[str]:
    """The network's stem, found by structure: its first Conv and the chain of single readers after it, up to
    and including the first MaxPool (BVLC: conv1.conv, conv1.relu, pool1; torchvision: conv1.bn, conv1,
    maxpool1). Empty when the model has no such chain."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    node = next((n for n in model.graph.node if n.op_type == "Conv"), None)
    chain = []
    while node is not None:
        chain.append(node.name)
        if node.op_type == "MaxPool":
            return chain
        following = readers.get(node.output[0], [])
        node = following[0] if len(following) == 1 and len(chain) < 8 else None
    return []


def floatable_activations(model: onnx.ModelProto) -> list[str]:
    """The quantized activations `float_activations` can keep float: not those whose dequantized form is a
    graph output (int8 logits: keep the producer float with `float_outputs` instead)."""
    outputs = {output.name for output in model.graph.output}
    quantizers = activation_quantizers(model)
    dequantized = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return sorted(name for name, q in quantizers.items() if dequantized.get(q.output[0]) not in outputs)


def _clamps_negatives(constants: dict[str, onnx.TensorProto], quantize: onnx.NodeProto) -> bool:
    if len(quantize.input) < 3 or quantize.input[2] not in constants:
        return False
    zero_point = numpy_helper.to_array(constants[quantize.input[2]])
    return bool(np.all(zero_point == np.iinfo(zero_point.dtype).min))


def float_activations(model: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pairs of `tensors` (in place); returns the names kept float."""
    quantizers = activation_quantizers(model)
    chosen = [name for name in dict.fromkeys(tensors) if name in quantizers]
    if not chosen:
        return []
    if set(chosen) - set(floatable_activations(model)):  # refused before anything is changed
        raise ValueError("a graph output is a dequantized activation; keep its producer float instead")
    replaced: dict[str, str] = {}  # DequantizeLinear output -> the float tensor its readers take instead
    dropped: set[str] = set()
    added: list[onnx.NodeProto] = []
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    for name in chosen:
        quantize = quantizers[name]
        source = name
        if _clamps_negatives(constants, quantize):
            source = f"{name}_float_relu"
            added.append(helper.make_node("Relu", [name], [source], name=f"{quantize.name}_float_relu"))
        dropped.add(quantize.name)
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] == quantize.output[0]:
                replaced[node.output[0]] = source
                dropped.add(node.name)
    produced = {output for node in model.graph.node for output in node.output}
    kept = [relu for relu in added if relu.input[0] not in produced]  # a graph input's Relu comes first
    for node in model.graph.node:
        if node.name in dropped:
            continue
        for index, name in enumerate(node.input):
            if name in replaced:
                node.input[index] = replaced[name]
        kept.append(node)
        # each Relu right after its producer keeps the nodes topologically sorted
        kept.extend(relu for relu in added if relu.input[0] in node.output)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return chosen
