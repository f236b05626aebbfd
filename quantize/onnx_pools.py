"""Keep the max pools that follow a float op in float: ONNX Runtime's NCHW 8-bit MaxPool is its slowest kernel.

After LRN (float) the QDQ graph reads `norm2 -> pool2 -> Q -> DQ -> inception3a.branch4.0 (MaxPool) -> Q`.
ONNX Runtime then propagates the Q in front of pool2 and drops the DQ/Q pairs around both pools, so both run
as 8-bit MaxPool in NCHW layout (its NHWC layout pass only reaches pools fed by an int8 convolution): a
generic kernel measured at ~8 ms per pool here (AMD EPYC Zen 4, 1 thread), against 0.1-0.8 ms for the float
kernel and ~0.3 ms for the NHWC 8-bit one. Reading the float pool output directly gives the second pool a
float input and the first one two consumers, which keeps both in float.

Exact, not an approximation: max commutes with the monotone Q, so Q(max(x)) == max(Q(x)) whenever the pool's
output Q has the same scale and zero point as its input's, which this pass checks before each rewrite.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _same_quantization(model: onnx.ModelProto, first: onnx.NodeProto, second: onnx.NodeProto) -> bool:
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for a, b in zip(first.input[1:], second.input[1:], strict=False):
        same = a in constants and b in constants and np.array_equal(constants[a], constants[b])
        if not same or constants[a].dtype != constants[b].dtype:  # int8 and uint8 zero points 0: not the same grid
            return False
    return len(first.input) == len(second.input)


def _requantize_pool_outputs(model: onnx.ModelProto) -> None:
    """Give a MaxPool that reads `DQ(Q(x))` but feeds float ops (e.g. a convolution the user kept in float) a Q/DQ
    pair on its output with its input's grid. Exact (the max of grid values is a grid value), and it spares
    ONNX Runtime a DQ propagation through the pool that builds an invalid QuantizeLinear (int8 output, uint8 zero
    point: the session does not load)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    for index, pool in reversed(list(enumerate(model.graph.node))):
        dq = producer.get(pool.input[0]) if pool.op_type == "MaxPool" else None
        if dq is None or dq.op_type != "DequantizeLinear" or pool.output[0] in graph_outputs:
            continue
        readers = [n for n in model.graph.node if pool.output[0] in n.input]
        if not readers or any(n.op_type == "QuantizeLinear" for n in readers):
            continue
        grid = list(dq.input[1:])
        quantized, restored = f"{pool.output[0]}_requantized", f"{pool.output[0]}_on_grid"
        q = onnx.helper.make_node("QuantizeLinear", [pool.output[0], *grid], [quantized], name=f"{pool.name}_q_out")
        back = onnx.helper.make_node("DequantizeLinear", [quantized, *grid], [restored], name=f"{pool.name}_dq_out")
        for reader in readers:
            reader.input[:] = [restored if name == pool.output[0] else name for name in reader.input]
        model.graph.node.insert(index + 1, back)
        model.graph.node.insert(index + 1, q)


def keep_max_pools_float(model: onnx.ModelProto) -> list[str]:
    """Rewire in place every MaxPool fed by `DQ(Q(float max pool))` to read that float pool; returns their names."""
    _requantize_pool_outputs(model)
    rewired: list[str] = []
    while True:
        producer = {out: node for node in model.graph.node for out in node.output}
        candidate = None
        for pool in model.graph.node:
            dq = producer.get(pool.input[0]) if pool.op_type == "MaxPool" else None
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            source = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            feeds_float = source is not None and source.op_type == "MaxPool"
            if not feeds_float or pool.name in rewired:
                continue
            source_input = producer.get(source.input[0])
            if source_input is not None and source_input.op_type == "DequantizeLinear":
                continue  # the upstream pool is itself 8-bit (after a convolution): ORT's NHWC pass handles it
            readers = [n for n in model.graph.node if pool.output[0] in n.input]
            requantized = len(readers) == 1 and readers[0].op_type == "QuantizeLinear"
            if requantized and _same_quantization(model, q, readers[0]):
                candidate = (pool, q)
                break
        if candidate is None:
            break
        pool, q = candidate
        pool.input[0] = q.input[0]
        rewired.append(pool.name)
    _drop_unused_dequantize(model)
    return rewired


def _drop_unused_dequantize(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [n for n in model.graph.node if n.op_type != "DequantizeLinear" or any(o in used for o in n.output)]
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)
