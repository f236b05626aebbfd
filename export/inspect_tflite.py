"""Parameters and multiply-adds of a `.tflite` file, in the same report (and layer names) as the torch and
ONNX counters (`export.counting`, `export.inspect_onnx`); `TfliteGraph` is also what `export.memory` reads."""

from __future__ import annotations

import math
from pathlib import Path

from edge_runtime.kernel_coverage import is_lowered_lrn
from edge_runtime.sessions import tflite_names
from export.counting import CountReport, LayerCount, block_of
from export.errors import ToolkitError, one_line

# builtin op -> (activation input, weight input, bias input or None); TRANSPOSE_CONV's input 0 is its output shape
_TFLITE_LAYERS: dict[str, tuple[int, int, int | None]] = {
    "CONV_2D": (0, 1, 2),
    "DEPTHWISE_CONV_2D": (0, 1, 2),
    "CONV_3D": (0, 1, 2),
    "TRANSPOSE_CONV": (2, 1, 3),
    "FULLY_CONNECTED": (0, 1, 2),
    "BATCH_MATMUL": (0, 1, None),
}
# Ops a constant weight may pass through before the layer: fp16 weights are DEQUANTIZEd once at load.
_TFLITE_WEIGHT_PATH_OPS = frozenset({"DEQUANTIZE", "DENSIFY", "CAST", "RESHAPE", "TRANSPOSE"})
# Ops between a layer and the concat it feeds that do not change which layer it is (int8 (de)quantize, activations).
_TFLITE_PASS_THROUGH = frozenset({"QUANTIZE", "DEQUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1"})
_TFLITE_LINEAR = frozenset({"FULLY_CONNECTED", "BATCH_MATMUL"})
INCEPTION_BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")


class TfliteGraph:
    """The main subgraph of a .tflite flatbuffer: op names, tensor shapes, dtypes, producers and constants.

    Read with ai-edge-litert's flatbuffer tools, not an interpreter, so nothing is allocated or delegated.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise ToolkitError("no such file", path)
        if path.is_dir():
            raise ToolkitError("is a folder, expected a .tflite file", path)
        with path.open("rb") as handle:
            head = handle.read(8)
        if head[4:8] != b"TFL3":  # the flatbuffer file identifier; garbage would make the reader chase offsets
            raise ToolkitError("not a TFLite model (no TFL3 file identifier)", path)
        from ai_edge_litert.tools import flatbuffer_utils

        try:
            model = flatbuffer_utils.read_model(str(path))
        except Exception as exc:
            raise ToolkitError(f"not a readable TFLite model ({one_line(exc)})", path) from None
        if not model.subgraphs or not model.subgraphs[0].operators:
            raise ToolkitError("not a TFLite model (no operators)", path)
        self.source = str(path)
        self.model, self.graph = model, model.subgraphs[0]
        builtin, self.type_names = tflite_names()
        self.operators = list(self.graph.operators)
        self.ops = []
        for op in self.operators:
            code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            self.ops.append(builtin.get(code, str(code)))
        self.tensors = list(self.graph.tensors)
        self.inputs = [int(t) for t in self.graph.inputs]
        self.outputs = [int(t) for t in self.graph.outputs]
        self.producers: dict[int, int] = {}
        self.consumers: dict[int, list[int]] = {}
        for index, op in enumerate(self.operators):
            for tensor in self.op_inputs(index):
                self.consumers.setdefault(tensor, []).append(index)
            for tensor in op.outputs:
                self.producers[int(tensor)] = index

    def op_inputs(self, index: int) -> list[int]:
        """Inputs of one operator without the -1 placeholders of omitted optional inputs."""
        return [int(t) for t in self.operators[index].inputs if t >= 0]

    def input_at(self, index: int, position: int) -> int | None:
        inputs = self.operators[index].inputs
        return int(inputs[position]) if len(inputs) > position and inputs[position] >= 0 else None

    def is_constant(self, tensor: int) -> bool:
        buffer = self.tensors[tensor].buffer
        data = self.model.buffers[buffer].data if 0 < buffer < len(self.model.buffers) else None
        return data is not None and len(data) > 0

    def name(self, tensor: int) -> str:
        name = self.tensors[tensor].name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or tensor)

    def dtype(self, tensor: int) -> str:
        return self.type_names.get(self.tensors[tensor].type, str(self.tensors[tensor].type))

    def shape(self, tensor: int) -> tuple[int, ...]:
        """Stored dims. A dynamic batch (-1 leading the signature) is stored as 1, which is what counts;
        any other dynamic dim is a ToolkitError, as sizes would be guesses."""
        t = self.tensors[tensor]
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        signature = [int(d) for d in (t.shapeSignature if t.shapeSignature is not None else ())]
        if any(d < 0 for d in (*shape, *signature[1:])):
            shown = list(signature or shape)
            raise ToolkitError(
                f"tensor {self.name(tensor)!r} has a dynamic size {shown}; needs fixed sizes", self.source
            )
        return shape

    def constant_source(self, tensor: int | None) -> int | None:
        """The constant tensor a layer input comes from, followed through DEQUANTIZE and friends."""
        seen: set[int] = set()
        while tensor is not None and tensor not in seen:
            if self.is_constant(tensor):
                return tensor
            seen.add(tensor)
            op = self.producers.get(tensor)
            if op is None or self.ops[op] not in _TFLITE_WEIGHT_PATH_OPS:
                return None
            tensor = self.input_at(op, 0)
        return None


def _tflite_macs(g: TfliteGraph, index: int, spec: tuple[int, int, int | None]) -> tuple[int, tuple[int, ...]]:
    """MACs of one layer for the whole batch, and its output shape (TFLite weights are OHWI / [units, in])."""
    a_index, w_index, _ = spec
    op = g.ops[index]
    out = g.shape(int(g.operators[index].outputs[0]))
    weight = g.shape(g.input_at(index, w_index))
    if op == "CONV_2D":  # [out ch, kh, kw, in ch per group]
        return math.prod(out) * math.prod(weight[1:]), out
    if op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, out ch]: one input channel per output
        return math.prod(out) * math.prod(weight[1:3]), out
    if op == "CONV_3D":  # [kd, kh, kw, in ch, out ch]
        return math.prod(out) * math.prod(weight[:-1]), out
    if op == "TRANSPOSE_CONV":  # [out ch, kh, kw, in ch]: every input element scatters kh*kw*out products
        return math.prod(g.shape(g.input_at(index, a_index))) * math.prod(weight[:-1]), out
    if op == "FULLY_CONNECTED":  # [units, in features]
        return math.prod(out) * weight[-1], out
    # BATCH_MATMUL: the reduced dim of x, whichever side is the weight
    x = g.shape(g.input_at(index, a_index))
    adj_x = bool(getattr(g.operators[index].builtinOptions, "adjX", False))
    return math.prod(out) * (x[-2] if adj_x else x[-1]), out


def _tflite_bias(g: TfliteGraph, index: int, b_index: int | None) -> int | None:
    """The bias input, or for an unbiased FULLY_CONNECTED / BATCH_MATMUL the constant of the one ADD after it."""
    if b_index is not None and (bias := g.input_at(index, b_index)) is not None:
        return g.constant_source(bias)
    if g.ops[index] not in _TFLITE_LINEAR:
        return None
    output = int(g.operators[index].outputs[0])
    users = g.consumers.get(output, [])
    if len(users) != 1 or g.ops[users[0]] != "ADD":
        return None
    others = [t for t in g.op_inputs(users[0]) if t != output]
    return g.constant_source(others[0]) if len(others) == 1 else None


def _layer_feeding(g: TfliteGraph, tensor: int | None, layers: set[int]) -> int | None:
    """The counted layer that produces `tensor`, looking back through (de)quantize and activations."""
    while tensor is not None:
        op = g.producers.get(tensor)
        if op is None:
            return None
        if op in layers:
            return op
        if g.ops[op] not in _TFLITE_PASS_THROUGH:
            return None
        tensor = g.input_at(op, 0)
    return None


def _googlenet_names(g: TfliteGraph, layers: list[int]) -> dict[int, str] | None:
    """Torch module paths (`inception3a.branch2.0.conv`) for the layers of a GoogLeNet graph, else None.

    Found from the graph, not the op order, which the converter shuffles within a block (3b runs branch 1
    after branches 2 and 3): the k-th four-input CONCATENATION closes inception block k and its j-th input
    comes from branch j+1 (a reduce conv before the 3x3 / 5x5, a max pool before the pool projection).
    What precedes the first block is the stem (3 convs), what follows the last is `fc`.
    """
    concats = [i for i, op in enumerate(g.ops) if op == "CONCATENATION" and len(g.op_inputs(i)) == 4]
    if len(concats) != len(INCEPTION_BLOCKS):
        return None
    members = set(layers)
    names: dict[int, str] = {}
    for block, concat in zip(INCEPTION_BLOCKS, concats, strict=True):
        for branch, tensor in enumerate(g.op_inputs(concat), start=1):
            last = _layer_feeding(g, tensor, members)
            if last is None or g.ops[last] != "CONV_2D":
                return None
            source = g.input_at(last, 0)
            if branch == 1:
                names[last] = f"inception{block}.branch1.conv"
            elif branch == 4:
                pool = g.producers.get(source) if source is not None else None
                if pool is None or g.ops[pool] != "MAX_POOL_2D":
                    return None
                names[last] = f"inception{block}.branch4.1.conv"
            else:
                reduce = _layer_feeding(g, source, members)
                if reduce is None or g.ops[reduce] != "CONV_2D":
                    return None
                names[reduce] = f"inception{block}.branch{branch}.0.conv"
                names[last] = f"inception{block}.branch{branch}.1.conv"
    rest = [i for i in layers if i not in names]
    if (
        len(names) != 6 * len(INCEPTION_BLOCKS)
        or len(rest) != 4
        or [g.ops[i] for i in rest] != ["CONV_2D"] * 3 + ["FULLY_CONNECTED"]
        or max(rest[:3]) > concats[0]
        or rest[3] < concats[-1]
    ):
        return None
    # The reference model keeps the paper's LRNs; the torchvision variant (no LRN) calls its reduce conv2.
    lrn = "LOCAL_RESPONSE_NORMALIZATION" in g.ops or any(is_lowered_lrn(g.name(t)) for t in range(len(g.tensors)))
    stem = ("conv1.conv", "conv2_reduce.conv", "conv2.conv") if lrn else ("conv1.conv", "conv2.conv", "conv3.conv")
    names.update(zip(rest, (*stem, "fc"), strict=True))
    return names


def _tflite_layer_name(g: TfliteGraph, index: int, weight: int | None) -> str:
    """TF's fused tensor name (`Relu_6;BiasAdd_6;Conv2D_6;Const_131`): the weight's, else the output's first part."""
    tensor = weight if weight is not None else int(g.operators[index].outputs[0])
    return g.name(tensor).split(";")[0] or f"{g.ops[index]}_{index}"


def count_tflite(path: str | Path) -> CountReport:
    """Count CONV_2D, DEPTHWISE_CONV_2D, CONV_3D, TRANSPOSE_CONV, FULLY_CONNECTED and BATCH_MATMUL of a .tflite.

    Same rules as `count_onnx`: MACs per image (the first input's leading dim is the batch), pooling, LRN
    (its lowered band convolution included) and activations free; parameters are the elements of the constant
    weight and bias tensors whatever their dtype (fp32, fp16 behind a DEQUANTIZE, int8 with int32 biases), each
    counted once. A GoogLeNet graph gets the torch module paths as layer names, so it compares row by row with
    `count_torch` and the ONNX export; any other graph keeps TF's tensor names. Only the main subgraph is counted.
    """
    g = TfliteGraph(path)
    images = g.shape(g.inputs[0])[0] if g.inputs and len(g.shape(g.inputs[0])) >= 2 else 1
    found = [
        (i, _TFLITE_LAYERS[op])
        for i, op in enumerate(g.ops)
        if op in _TFLITE_LAYERS and not any(is_lowered_lrn(g.name(int(t))) for t in g.operators[i].outputs)
    ]
    names = _googlenet_names(g, [i for i, _ in found]) or {}
    counted: set[int] = set()
    layers: list[LayerCount] = []
    for index, spec in found:
        weight = g.constant_source(g.input_at(index, spec[1]))
        bias = _tflite_bias(g, index, spec[2])
        params = 0
        for tensor in (weight, bias):
            if tensor is not None and tensor not in counted:
                counted.add(tensor)
                params += math.prod(g.shape(tensor))
        macs, out = _tflite_macs(g, index, spec)
        op = g.ops[index]
        name = names.get(index) or _tflite_layer_name(g, index, weight)
        block = block_of(name, op) if index in names else ("linear" if op in _TFLITE_LINEAR else "other")
        layers.append(LayerCount(name, op, params, macs // max(images, 1), (1, *out[1:]), block))
    return CountReport(layers, g.source)
