"""Which kernels a runtime really runs a model with: int8 or float, delegated or not, on this very CPU.

"int8" in a file name says little about speed: after ONNX Runtime's graph optimisation a QDQ model on x86
runs about half its convolutions as float `Conv` between DequantizeLinear/QuantizeLinear pairs, while on
aarch64 every convolution becomes `QLinearConv`. This module reads what ran:

- ONNX Runtime: one profiled inference; every node event names the kernel (`op_name`) of the *optimized*
  graph, and its node name keeps the PyTorch module path (`conv1.conv_token_232` -> `conv1.conv`).
- LiteRT: the interpreter's op list after delegation; a `DELEGATE` node stands for the part of the graph
  XNNPACK took over, found by walking back from the delegate's outputs to its inputs.

Standalone like `device_runner.py` (numpy and a runtime only): the device bundle ships it beside `run.py`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

ORT_INT8_COMPUTE = frozenset(
    {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
     "DynamicQuantizeMatMul", "NhwcQLinearConv"}
)  # fmt: skip
ORT_FLOAT_COMPUTE = frozenset(
    {"Conv", "FusedConv", "NhwcFusedConv", "NhwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
)
TFLITE_COMPUTE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"})
_ORT_SUFFIX = re.compile(r"(_token_\d+)?(_kernel_time)?$")


# export/onnx_lrn.py and export/tflite_graph.py write each LRN as ops named `<lrn>/lrn_<part>` (a band convolution
# among them):
# LRN's own work, not a layer's, so neither a compute op here nor multiply-adds in the counts.
LOWERED_LRN_MARK = "/lrn_"


def is_lowered_lrn(name: str) -> bool:
    return LOWERED_LRN_MARK in name


MOSTLY_FLOAT_BELOW = 0.5  # an int8 model with less of its MACs in int8 kernels runs mostly in float here


def mostly_float(kernels: dict | None) -> bool:
    """An int8 model whose multiply-adds mostly run in float kernels on this host: its latency is not int8's."""
    share = (kernels or {}).get("int8_mac_share")
    return share is not None and share < MOSTLY_FLOAT_BELOW


def coverage_text(kernels: dict | None) -> str:
    """`82% (31/58)`: share of MACs in int8 kernels (int8 compute ops / all compute ops); `—` without a reading."""
    if not kernels:
        return "—"
    share = kernels.get("int8_mac_share")
    ops = f"{kernels['int8_compute_ops']}/{kernels['compute_ops']}"
    return f"{share:.0%} ({ops})" if share is not None else ops


def onnx_nodes(path: str | Path, sample: np.ndarray) -> list[dict]:
    """Every node ONNX Runtime ran for one inference of `sample`, in order: name, kernel op, int8 or not."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="googlenet-ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: sample[:1]})
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    nodes = []
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "")
        name = _ORT_SUFFIX.sub("", event["name"])
        compute = (op in ORT_INT8_COMPUTE or op in ORT_FLOAT_COMPUTE) and not is_lowered_lrn(name)
        nodes.append({"name": name, "op": op, "int8": op in ORT_INT8_COMPUTE, "compute": compute})
    return nodes


def tflite_nodes(interpreter) -> list[dict]:
    """Every op of the model, in order: op, int8 or float kernel, and whether a delegate (XNNPACK) runs it."""
    details = interpreter._get_ops_details()
    original = [d for d in details if d["op_name"] != "DELEGATE"]
    producer = {int(t): d["index"] for d in original for t in d["outputs"]}
    delegated: set[int] = set()
    for delegate in (d for d in details if d["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in delegate["inputs"]}
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            tensor = stack.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in delegated:
                continue
            delegated.add(node)
            stack.extend(int(t) for t in details[node]["inputs"] if int(t) >= 0)
    nodes = []
    for d in original:
        first_input = next((int(t) for t in d["inputs"] if int(t) >= 0), None)
        dtype = interpreter._get_tensor_details(first_input, 0)["dtype"] if first_input is not None else np.float32
        outputs = [interpreter._get_tensor_details(int(t), 0)["name"] for t in d["outputs"] if int(t) >= 0]
        compute = d["op_name"] in TFLITE_COMPUTE and not any(is_lowered_lrn(name) for name in outputs)
        nodes.append({"name": str(d["index"]), "op": d["op_name"], "compute": compute,
                      "int8": np.dtype(dtype) in (np.dtype(np.int8), np.dtype(np.uint8)),
                      "delegated": d["index"] in delegated})  # fmt: skip
    return nodes


def summarize(nodes: list[dict], layer_macs: list[list] | None = None) -> dict:
    """Counts and shares: compute ops (convolutions, fully connected) in int8 vs float kernels, their share of
    the multiply-adds when `layer_macs` ([name, MACs] per compute layer, in graph order) is known, every op
    that ran, and for LiteRT how many ops XNNPACK took."""
    compute = [n for n in nodes if n["compute"]]
    int8 = [n for n in compute if n["int8"]]
    summary: dict = {
        "compute_ops": len(compute),
        "int8_compute_ops": len(int8),
        "float_compute_ops": len(compute) - len(int8),
        "ops": dict(sorted(_histogram(n["op"] for n in nodes).items())),
    }
    macs = _macs_per_node(compute, layer_macs)
    if macs is not None and sum(macs) > 0:
        summary["int8_mac_share"] = sum(m for m, n in zip(macs, compute) if n["int8"]) / sum(macs)
    if any("delegated" in n for n in nodes):
        summary["delegated_ops"] = sum(bool(n.get("delegated")) for n in nodes)
        summary["total_ops"] = len(nodes)
    return summary


def _macs_per_node(compute: list[dict], layer_macs: list[list] | None) -> list[int] | None:
    """MACs of each compute node: by name (ONNX Runtime keeps module paths), else by order (TFLite)."""
    if not layer_macs:
        return None
    by_name = {str(name): int(macs) for name, macs in layer_macs}
    if all(n["name"] in by_name for n in compute):
        return [by_name[n["name"]] for n in compute]
    if len(layer_macs) == len(compute):
        return [int(macs) for _, macs in layer_macs]
    return None


def _histogram(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def coverage(path: str | Path, sample: np.ndarray, layer_macs: list[list] | None = None) -> dict:
    """The kernel coverage of one model file on this CPU (see `summarize`), read the way its format's row says."""
    from edge_runtime.formats import format_of

    fmt = format_of(path)
    return {"runtime": fmt.runtime, **summarize(fmt.kernel_nodes(path, sample), layer_macs)}
