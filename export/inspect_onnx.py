"""Parameters and multiply-adds of an ONNX file (float, QDQ int8 or ORT's contrib ops), in the report of
`export.counting`; `count_file` reads a file of any format through its row in `edge_runtime.formats`."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import onnx

from edge_runtime.formats import format_of
from edge_runtime.kernel_coverage import is_lowered_lrn
from export.counting import LINEAR_OPS, CountReport, LayerCount, block_of
from export.errors import ToolkitError, one_line

# ------------------------------------------------------------------------------------------ ONNX

# op -> (activation input, weight input, bias input or None)
_ONNX_LAYERS: dict[str, tuple[int, int, int | None]] = {
    "Conv": (0, 1, 2),
    "ConvTranspose": (0, 1, 2),
    "ConvInteger": (0, 1, None),
    "QLinearConv": (0, 3, 8),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1, None),
    "MatMulInteger": (0, 1, None),
    "QLinearMatMul": (0, 3, None),
    "BatchNormalization": (0, 1, 2),  # scale and bias are parameters (as in torch); running stats are not
}
_MS_LAYERS: dict[str, tuple[int, int, int | None]] = {"QGemm": (0, 3, 6)}  # onnxruntime's contrib ops
# Ops a weight may pass through between its initializer and the layer (QDQ, casts, layout changes).
_WEIGHT_PATH_OPS = frozenset(
    {"DequantizeLinear", "QuantizeLinear", "Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze"}
)
_NAME_SUFFIXES = ("_quantized", "_quant", "_palette_index", ":0", ".weight", "_weight", "/W", "/weights", "/kernel")


def _palette_step(node: onnx.NodeProto, constants: dict) -> bool:
    """A step of a palettized weight (`quantize.palette`): Gather(codebook, indices) or Mul(levels, scales),
    the codebook and the scales stored: the weight's parameters are the indices, one per weight."""
    if len(node.input) != 2 or node.op_type not in ("Gather", "Mul"):
        return False
    return (node.input[0] if node.op_type == "Gather" else node.input[1]) in constants


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The graph only (external weight data is not needed to count), or a one-line ToolkitError."""
    path = Path(path)
    if not path.exists():
        raise ToolkitError("no such file", path)
    if path.is_dir():
        raise ToolkitError("is a folder, expected an .onnx file", path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ToolkitError(f"not an ONNX model ({one_line(exc)})", path) from None
    if not model.graph.node:
        raise ToolkitError("not an ONNX model (no graph nodes)", path)
    return model


def _layer_name(weight: str) -> str:
    """`inception_3a/1x1/W` -> `inception_3a/1x1`, `fc.weight_quantized` -> `fc`."""
    name, previous = weight, None
    while name != previous:
        previous = name
        for suffix in _NAME_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
    return name


def _dims(type_proto: onnx.TypeProto) -> tuple[int | None, ...] | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _fix_inputs(graph: onnx.GraphProto, batch: int) -> int:
    """Give a symbolic batch dim a value (any other dynamic dim makes layer sizes unknowable) and
    return the number of images one run processes: the first input's leading dim.

    Stored intermediate shapes are dropped when a dim is set, as they would pin the old batch."""
    initializers = {t.name for t in graph.initializer}
    images, changed = 0, False
    for value in graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].dim_value, changed = batch, True
        if any(not d.HasField("dim_value") for d in dims):
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
            raise ToolkitError(f"input {value.name!r} has a dynamic size {shape}; counting needs fixed sizes")
        images = images or (dims[0].dim_value if len(dims) >= 2 else 1)
    if changed:
        del graph.value_info[:]
    return images or 1


def _constant_sizes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Name -> dims of every initializer and Constant-node output."""
    sizes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or not node.attribute:
            continue
        attr = node.attribute[0]
        if attr.HasField("t"):
            sizes[node.output[0]] = tuple(attr.t.dims)
        else:
            sizes[node.output[0]] = (len(attr.floats) or len(attr.ints) or len(attr.strings) or 1,)
    return sizes


class _OnnxGraph:
    """Shapes, producers and constants of one inferred graph, and the per-node counting rules."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.constants = _constant_sizes(graph)
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.shapes: dict[str, tuple[int | None, ...]] = dict(self.constants)
        for value in (*graph.value_info, *graph.input, *graph.output):
            dims = _dims(value.type)
            if dims is not None and value.name not in self.constants:
                self.shapes[value.name] = dims

    def constant_source(self, name: str) -> str | None:
        """The initializer a layer input comes from, followed through DequantizeLinear and friends."""
        seen: set[str] = set()
        while name and name not in seen:
            if name in self.constants:
                return name
            seen.add(name)
            node = self.producers.get(name)
            if node is not None and _palette_step(node, self.constants):
                name = node.input[1 if node.op_type == "Gather" else 0]  # the stored indices; past the scales
                continue
            if node is None or node.op_type not in _WEIGHT_PATH_OPS or not node.input:
                return None
            name = node.input[0]
        return None

    def known(self, name: str) -> bool:
        dims = self.shapes.get(name)
        return dims is not None and all(d is not None for d in dims)

    def shape(self, name: str, node: onnx.NodeProto) -> tuple[int, ...]:
        if not self.known(name):
            raise ToolkitError(f"shape of {name!r} (at {node.name or node.op_type}) is unknown")
        return tuple(int(d) for d in self.shapes[name] if d is not None)

    def matmul_bias(self, node: onnx.NodeProto) -> str | None:
        """A MatMul's bias lives in the single Add that consumes it."""
        users = self.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        others = [name for name in users[0].input if name != node.output[0]]
        return self.constant_source(others[0]) if len(others) == 1 else None

    def macs(self, node: onnx.NodeProto, a_index: int, w_index: int) -> tuple[int, tuple[int, ...]]:
        """MACs for the whole batch the graph runs, and the output shape."""
        out = self.shape(node.output[0], node)
        if node.op_type == "BatchNormalization":
            return 0, out  # folds into the convolution before it
        weight = self.shape(node.input[w_index], node)
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            return math.prod(out) * math.prod(weight[1:]), out
        if node.op_type == "ConvTranspose":
            return math.prod(self.shape(node.input[a_index], node)) * math.prod(weight[1:]), out
        # The reduced (inner) dim of A @ B, read from whichever side holds the weight.
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight_is_b = w_index > a_index
        if node.op_type in ("Gemm", "QGemm"):
            transposed = attrs.get("transB" if weight_is_b else "transA", 0)
            inner = weight[int(transposed) if weight_is_b else 1 - int(transposed)]
        elif weight_is_b:
            inner = weight[-2] if len(weight) >= 2 else weight[0]
        else:
            inner = weight[-1]
        return math.prod(out) * inner, out


def _layer_spec(node: onnx.NodeProto) -> tuple[int, int, int | None] | None:
    if node.domain in ("", "ai.onnx"):
        return _ONNX_LAYERS.get(node.op_type)
    return _MS_LAYERS.get(node.op_type) if node.domain == "com.microsoft" else None


def _runtime_shapes(model: onnx.ModelProto, names: list[str], source: str) -> dict[str, tuple[int, ...]]:
    """Shapes ONNX inference cannot see through (contrib ops such as QLinearConcat): one ORT run on zeros."""
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ToolkitError("layer shapes are unknown after ONNX shape inference (external weights)", source)
    import numpy as np
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {value.name for value in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in outputs)
    initializers = {t.name for t in probe.graph.initializer}
    feeds = {
        value.name: np.zeros(
            [d.dim_value for d in value.type.tensor_type.shape.dim],
            onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type),
        )
        for value in probe.graph.input
        if value.name not in initializers
    }
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(names, feeds)
    except Exception as exc:
        message = f"layer shapes are unknown and onnxruntime cannot run the model ({one_line(exc)})"
        raise ToolkitError(message, source) from None
    return {name: tuple(value.shape) for name, value in zip(names, values, strict=True)}


def count_onnx(model_or_path: onnx.ModelProto | str | Path, batch: int = 1) -> CountReport:
    """Count Conv, ConvTranspose, Gemm, MatMul, their integer/QDQ forms and BatchNormalization (0 MACs).

    A layer is named after its weight initializer (suffixes like `.weight`, `/W`, `_quantized` dropped)
    so Table 1 rows come out of both torch and Caffe names; a weight reached through
    DequantizeLinear counts its stored elements once, scales and zero points are not parameters.
    Shapes come from ONNX shape inference with a symbolic batch set to `batch`, or, where contrib ops
    block it, from one onnxruntime run; MACs are divided by the first input's leading dim to give
    per-image numbers. Subgraphs (If/Loop bodies) are not counted.
    """
    if isinstance(model_or_path, onnx.ModelProto):
        model, source = onnx.ModelProto(), model_or_path.graph.name
        model.CopyFrom(model_or_path)
    else:
        model, source = load_onnx(model_or_path), str(model_or_path)
    images = _fix_inputs(model.graph, batch)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ToolkitError(f"ONNX shape inference failed ({one_line(exc)})", source) from None
    graph = _OnnxGraph(inferred.graph)
    found: list[tuple[onnx.NodeProto, int, int, int | None]] = []
    for node in inferred.graph.node:
        spec = _layer_spec(node)
        if spec is None or is_lowered_lrn(node.name):  # LRN's window sum: free, like LRN
            continue
        a_index, w_index, b_index = spec
        weight_first = graph.constant_source(node.input[a_index]) is not None  # weight @ activation
        if node.op_type in LINEAR_OPS and weight_first and graph.constant_source(node.input[w_index]) is None:
            a_index, w_index = w_index, a_index
        found.append((node, a_index, w_index, b_index))
    needed = {name for node, a, w, _ in found for name in (node.output[0], node.input[w], node.input[a])}
    missing = sorted(name for name in needed if not graph.known(name))
    if missing:
        graph.shapes.update(_runtime_shapes(inferred, missing, source))

    counted: set[str] = set()
    layers: list[LayerCount] = []
    for node, a_index, w_index, b_index in found:
        weight = graph.constant_source(node.input[w_index])
        bias = None
        if b_index is not None and len(node.input) > b_index and node.input[b_index]:
            bias = graph.constant_source(node.input[b_index])
        elif node.op_type == "MatMul":
            bias = graph.matmul_bias(node)
        params = 0
        for name in (weight, bias):
            if name is not None and name not in counted:
                counted.add(name)
                params += math.prod(graph.constants[name])
        macs, out = graph.macs(node, a_index, w_index)
        macs //= images
        name = _layer_name(weight) if weight else (node.name or node.output[0])
        block = block_of(name, node.op_type)
        layers.append(LayerCount(name, node.op_type, params, macs, (1, *out[1:]), block))
    return CountReport(layers, source)


def count_file(path: str | Path) -> CountReport:
    """Parameters and MACs of a model file of any format, by its row (an unknown suffix is read as ONNX)."""
    return format_of(path, strict=False).counter(path)


def onnx_op_histogram(path: str | Path) -> dict[str, int]:
    """Node op types of an ONNX file -> count, sorted (without loading external weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))
