"""LRN rewritten for speed, because ONNX Runtime's `LRN` kernel is scalar.

Measured on 1 thread (AMD EPYC Zen 4, ONNX Runtime 1.31.1): the two `LRN` nodes took 38% of the FP32
model's time and 59% of the int8 model's. Written as Mul, a 1x1 "band" convolution (the window sum of
the squares, scaled, plus the bias), Sqrt and Div, they cost ~5% and the FP32 model runs ~1.5x faster.
The same formula (cross-channel LRN, zero padding across channels), y = x / (k + alpha/size * sum x^2)^beta;
outputs agree with the `LRN` node to ~1e-6 relative. An elementwise form (Pad, five shifted Slices, Adds)
was as fast but keeps five tensors alive: +21 MB peak RSS for the FP32 model against +10 MB for this one.

The band convolution's 128 M multiply-adds are LRN's window sum, which MAC counts leave out as they leave
out LRN: every node of a lowered LRN is named `<lrn>/lrn_<part>` and carries `LOWERED_LRN` in its doc
string, so counters skip it and the quantizer keeps it in float (LRN has no integer kernel anywhere).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_runtime.kernel_coverage import LOWERED_LRN_MARK, is_lowered_lrn

LOWERED_LRN = "googlenet-edge: lowered LRN"  # the doc string, for readers of the graph


class _LrnBuilder:
    """Emits the nodes of one lowered LRN; the last one writes the LRN's own output name."""

    def __init__(self, graph: onnx.GraphProto, base: str, output: str | None) -> None:
        self.graph, self.base, self.output = graph, base, output
        self.nodes: list[onnx.NodeProto] = []

    def const(self, part: str, value) -> str:
        name = f"{self.base}{LOWERED_LRN_MARK}const_{part}"
        for stale in [t for t in self.graph.initializer if t.name == name]:
            self.graph.initializer.remove(stale)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], part: str, **attributes) -> str:
        name = f"{self.base}{LOWERED_LRN_MARK}{part}"
        out = self.output if part == "out" else name
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, doc_string=LOWERED_LRN, **attributes))
        return out


def _band_nodes(b: _LrnBuilder, channels: int, size: int, scale: float) -> str:
    """The band weights computed from a few scalars (ONNX Runtime folds them once, at load): stored as a
    C x C tensor they would add 164 KB and push the int8 file past 26% of the FP32 one. band[o, i] = scale
    where -(size-1)//2 <= i - o <= size//2 (the ONNX LRN window), else 0; exact."""
    index = b.add(
        "Range",
        [
            b.const("zero", np.array(0, np.int64)),
            b.const("channels", np.array(channels, np.int64)),
            b.const("one", np.array(1, np.int64)),
        ],
        "index",
    )
    rows = b.add("Unsqueeze", [index, b.const("axis1", np.array([1], np.int64))], "rows")
    cols = b.add("Unsqueeze", [index, b.const("axis0", np.array([0], np.int64))], "cols")
    offset = b.add("Sub", [cols, rows], "offset")  # i - o
    low = b.add("GreaterOrEqual", [offset, b.const("below", np.array(-((size - 1) // 2), np.int64))], "low")
    high = b.add("LessOrEqual", [offset, b.const("above", np.array(size // 2, np.int64))], "high")
    inside = b.add("Cast", [b.add("And", [low, high], "inside")], "mask", to=onnx.TensorProto.FLOAT)
    scaled = b.add("Mul", [inside, b.const("scale", np.array(scale, np.float32))], "scaled")
    return b.add("Reshape", [scaled, b.const("shape", np.array([channels, channels, 1, 1], np.int64))], "band")


def _lower_one(graph: onnx.GraphProto, node: onnx.NodeProto, channels: int) -> list[onnx.NodeProto]:
    """x / (bias + alpha/size * window_sum(x^2))^beta with at most three tensors alive at once (x, its
    square and the window sum; then x, the root and the quotient), like the LRN node's two plus one."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    b = _LrnBuilder(graph, node.name or node.output[0], node.output[0])
    x = node.input[0]
    band = _band_nodes(b, channels, size, alpha / size)
    offset = b.const("bias", np.full(channels, bias, np.float32))
    base = b.add("Conv", [b.add("Mul", [x, x], "square"), band, offset], "base")
    if beta == 0.75:  # x / base^0.75 = (x / sqrt(base)) / sqrt(sqrt(base)): vectorised kernels, unlike Pow
        root = b.add("Sqrt", [base], "sqrt")
        partial = b.add("Div", [x, root], "partial")
        b.add("Div", [partial, b.add("Sqrt", [root], "sqrt4")], "out")
    else:
        b.add("Div", [x, b.add("Pow", [base, b.const("beta", np.array(beta, np.float32))], "pow")], "out")
    return b.nodes


def lower_lrn(model: onnx.ModelProto) -> list[str]:
    """Replace every `LRN` node of `model` in place; returns the names of the nodes replaced."""
    replaced: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    channels = _channel_counts(model)
    for node in model.graph.node:
        if node.op_type == "LRN" and node.domain in ("", "ai.onnx"):
            if node.input[0] not in channels:
                raise ValueError(f"LRN {node.name!r}: the channel count of {node.input[0]!r} is unknown")
            new_nodes.extend(_lower_one(model.graph, node, channels[node.input[0]]))
            replaced.append(node.name)
        else:
            new_nodes.append(node)
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return replaced


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    counts = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            counts[value.name] = dims[1].dim_value
    return counts


def compact_lrn_bands(model: onnx.ModelProto) -> list[str]:
    """Write each band that ONNX Runtime's pre-processing folded back into a C x C initializer (the quantizer's
    `quant_pre_process`) as its few generator nodes again; returns the LRNs whose band was restored."""
    restored = []
    for tensor in list(model.graph.initializer):
        suffix = f"{LOWERED_LRN_MARK}band"
        if not tensor.name.endswith(suffix) or len(tensor.dims) != 4:
            continue
        weights = numpy_helper.to_array(tensor)[:, :, 0, 0]
        middle = weights.shape[0] // 2
        inside = np.nonzero(weights[middle])[0]
        before, after = middle - int(inside.min()), int(inside.max()) - middle
        scale = weights[middle, inside[0]]
        offsets = np.arange(weights.shape[0])[None, :] - np.arange(weights.shape[0])[:, None]
        expected = np.where((offsets >= -before) & (offsets <= after), scale, np.float32(0))
        if before != (before + after) // 2 or not np.array_equal(weights, expected):
            continue  # not a band this module wrote
        builder = _LrnBuilder(model.graph, tensor.name[: -len(suffix)], None)
        _band_nodes(builder, weights.shape[0], before + after + 1, float(scale))
        model.graph.initializer.remove(tensor)
        for node in reversed(builder.nodes):  # inputs are constants only: first in topological order
            model.graph.node.insert(0, node)
        restored.append(builder.base)
    return restored


def share_lrn_inputs(model: onnx.ModelProto) -> int:
    """One DequantizeLinear for each lowered LRN's input instead of one per reader (the quantizer gives every
    reader its own): the same float tensor, computed once and alive once (2.4 MB less at the second LRN).
    Returns how many duplicates were dropped."""
    readers: dict[tuple, list[onnx.NodeProto]] = {}
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if not is_lowered_lrn(node.name):
            continue
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                key = (*dq.input, *(str(a) for a in dq.attribute))
                readers.setdefault(key, [])
                if dq not in readers[key]:
                    readers[key].append(dq)
    dropped = 0
    for duplicates in readers.values():
        kept, *others = duplicates
        for other in others:
            users = [n for n in model.graph.node if other.output[0] in n.input]
            if not all(is_lowered_lrn(n.name) for n in users):
                continue
            for user in users:
                user.input[:] = [kept.output[0] if name == other.output[0] else name for name in user.input]
            model.graph.node.remove(other)
            dropped += 1
    _read_lrn_inputs_once(model)
    _order_lrn_tails(model)
    return dropped


def _read_lrn_inputs_once(model: onnx.ModelProto) -> None:
    """A Relu between an LRN's input DequantizeLinear and its readers, where the DequantizeLinear's zero point is
    the bottom of its type (every value >= 0, so the Relu is exact): ONNX Runtime gives a DequantizeLinear one
    copy per reading edge at load (three for x*x and x/root), 0.15 ms each on the second LRN's 2.4 MB at 2
    threads; behind a float op it computes the tensor once (measured: 0.68 -> 0.19 ms of DequantizeLinear)."""

    constants = {init.name: init for init in model.graph.initializer}
    nodes = list(model.graph.node)
    for dq in [n for n in nodes if n.op_type == "DequantizeLinear"]:
        readers = [n for n in nodes if dq.output[0] in n.input]
        zero = constants.get(dq.input[2]) if len(dq.input) > 2 else None
        if not readers or not all(is_lowered_lrn(n.name) for n in readers) or zero is None:
            continue
        values = numpy_helper.to_array(zero)
        if values.dtype not in (np.uint8, np.int8) or np.any(values != np.iinfo(values.dtype).min):
            continue
        name = readers[0].name[: readers[0].name.index(LOWERED_LRN_MARK) + len(LOWERED_LRN_MARK)] + "input"
        relu = helper.make_node("Relu", [dq.output[0]], [name], name=name, doc_string=LOWERED_LRN)
        for reader in readers:
            reader.input[:] = [name if tensor == dq.output[0] else tensor for tensor in reader.input]
        model.graph.node.insert(list(model.graph.node).index(dq) + 1, relu)


def _order_lrn_tails(model: onnx.ModelProto) -> None:
    """x / sqrt(base) before sqrt(sqrt(base)), as written: graph rewriters (quant_pre_process) re-sort the nodes,
    and the other order keeps four tensors alive instead of three (runtimes execute in graph order)."""
    nodes = list(model.graph.node)
    for fourth in [n for n in nodes if n.name.endswith(f"{LOWERED_LRN_MARK}sqrt4")]:
        partial_name = fourth.name[: -len("sqrt4")] + "partial"
        partial = next((n for n in nodes if n.name == partial_name), None)
        if partial is None or nodes.index(fourth) > nodes.index(partial):
            continue
        nodes.remove(fourth)
        nodes.insert(nodes.index(partial) + 1, fourth)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def lowered_lrn_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that implement a lowered LRN (to be kept in float by the quantizer)."""
    return [n.name for n in model.graph.node if is_lowered_lrn(n.name)]
