"""What an ONNX int8 recipe changes in the float graph before ONNX Runtime quantizes it: the stem it names,
found in this model, and the weights pre-rounded by `quantize.rounding`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from export.errors import ToolkitError
from quantize.onnx_float import stem_nodes
from quantize.presets import FLOAT_STEM, QuantizationConfig


def with_model_stem(model: onnx.ModelProto, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` with the recipes' float stem (`FLOAT_STEM`, the reference network's node names) replaced by this
    model's own stem, found by structure, when the model names it differently (the torchvision variant)."""
    present = {node.name for node in model.graph.node}
    if not set(FLOAT_STEM) & set(names) or set(FLOAT_STEM) <= present:
        return names
    stem = tuple(stem_nodes(model))
    out = [name for name in names if name not in FLOAT_STEM]
    return tuple(dict.fromkeys((*stem, *out)))


def on_graph_grid(graph_weight: np.ndarray, reference: np.ndarray, ints: np.ndarray, qmax: int) -> np.ndarray | None:
    """The graph's weight [out, in] moved onto its own int8 grid at the learned `ints`, when it is the reference
    weight up to a scale per output channel (batch norm folded into it: the torchvision variant); else None.

    A per-channel scale s moves the symmetric grid with the weights (scale = |s| max|w| / qmax), so the learned
    integers carry over, times sign(s)."""
    from quantize.rounding import to_float

    scale = _channel_factor(graph_weight, reference)
    if scale is None:
        return None
    import torch

    signed = torch.from_numpy(ints * np.sign(scale)[:, None])
    return to_float(torch.from_numpy(graph_weight), signed, qmax).numpy()


def _float_layers(model: onnx.ModelProto, reference, config: QuantizationConfig) -> tuple[str, ...]:
    """The reference's layers whose graph node `config` keeps float (the stem of `learned`): their weights stay."""
    from quantize.rounding import quantized_layers

    float_weights = {name for node in model.graph.node if node.name in config.exclude for name in node.input}
    return tuple(name for name in quantized_layers(reference) if f"{name}.weight" in float_weights)


def apply_rounding(pre: Path, reference, images: np.ndarray, config: QuantizationConfig) -> dict:
    """Write weights rounded by `config.rounding` (fitted on `images`, NCHW, with the reference PyTorch
    model) into the graph at `pre`, so ONNX Runtime's round-to-nearest reproduces them exactly."""
    from onnx import numpy_helper

    from quantize.rounding import (
        INT8_MAX,
        REDUCED_INT8_MAX,
        RoundingSettings,
        nearest_ints,
        quantized_layers,
        rounded_copy,
    )

    if reference is None:
        raise ToolkitError(f"rounding {config.rounding!r} needs the PyTorch reference model")
    model = onnx.load(str(pre))
    # layers whose graph node stays float (the stem of `learned`) keep their float weights
    skip = _float_layers(model, reference, config)
    qmax = REDUCED_INT8_MAX if config.reduce_range else INT8_MAX  # the grid ORT will quantize these weights on
    rounded, record = rounded_copy(reference, images, RoundingSettings(method=config.rounding, qmax=qmax), skip)
    originals = quantized_layers(reference, skip)
    by_name = {tensor.name: index for index, tensor in enumerate(model.graph.initializer)}
    for name, module in quantized_layers(rounded, skip).items():
        index = by_name.get(f"{name}.weight")
        if index is None:
            raise ToolkitError(f"rounded layer {name} has no weight {name}.weight in the graph", pre)
        tensor = model.graph.initializer[index]
        graph_weight = numpy_helper.to_array(tensor).astype(np.float32)
        original = originals[name].weight.detach().float().reshape(len(graph_weight), -1)
        learned = module.weight.detach().float().reshape(len(graph_weight), -1)
        moved = on_graph_grid(graph_weight.reshape(len(graph_weight), -1), original.numpy(),
                              nearest_ints(learned, qmax).numpy(), qmax)  # fmt: skip
        if moved is None:
            raise ToolkitError(f"the graph's {tensor.name} is not layer {name}'s weight (up to a channel scale)", pre)
        tensor.CopyFrom(numpy_helper.from_array(moved.reshape(graph_weight.shape).astype(np.float32), tensor.name))
    onnx.save(model, str(pre))
    return record


def palettized_graph(
    fp32: Path, reference, images: np.ndarray, config: QuantizationConfig
) -> tuple[onnx.ModelProto, dict]:
    """The FP32 graph at `fp32` with every conv/classifier weight (not of a node in `config.exclude`) stored as
    an 8-bit palette fitted on `images` (NCHW) with the reference PyTorch model (`quantize.palette`): a uint8
    index per weight, read through Cast -> Gather(codebook) -> Mul(channel scales), which ONNX Runtime folds into
    float weights at load. Returns the graph and the sidecar's record of the fit."""
    from onnx import TensorProto, helper, numpy_helper

    from quantize.palette import palettized_copy
    from quantize.rounding import quantized_layers

    if reference is None:
        raise ToolkitError("8-bit palettes need the PyTorch reference model")
    model = onnx.load(str(fp32))
    skip = _float_layers(model, reference, config)
    _, palettes, record = palettized_copy(reference, images, skip)
    originals = quantized_layers(reference, skip)
    by_name = {tensor.name: tensor for tensor in model.graph.initializer}
    unpack = []
    for name, palette in palettes.items():
        tensor = by_name.get(f"{name}.weight")
        if tensor is None:
            raise ToolkitError(f"layer {name} has no weight {name}.weight in the graph", fp32)
        shape = tuple(tensor.dims)
        graph_weight = numpy_helper.to_array(tensor).astype(np.float32).reshape(shape[0], -1)
        original = originals[name].weight.detach().float().numpy().reshape(shape[0], -1)
        factor = _channel_factor(graph_weight, original)
        if factor is None:
            raise ToolkitError(f"the graph's {tensor.name} is not layer {name}'s weight (up to a channel scale)", fp32)
        palette = palette.scaled(factor)
        base = tensor.name
        model.graph.initializer.remove(tensor)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(palette.indices.reshape(shape), f"{base}_palette_index"),
                numpy_helper.from_array(palette.codebook, f"{base}_codebook"),
                numpy_helper.from_array(palette.scale.reshape((-1,) + (1,) * (len(shape) - 1)), f"{base}_scale"),
            ]
        )
        index = f"{base}_palette_index"
        unpack += [
            helper.make_node("Cast", [index], [f"{base}_index"], f"{base}/cast", to=TensorProto.INT32),
            helper.make_node("Gather", [f"{base}_codebook", f"{base}_index"], [f"{base}_levels"], f"{base}/gather"),
            helper.make_node("Mul", [f"{base}_levels", f"{base}_scale"], [base], f"{base}/scale"),
        ]
    for node in reversed(unpack):  # constants only: first in topological order
        model.graph.node.insert(0, node)
    return model, record


def _channel_factor(graph_weight: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """Per output channel s with graph_weight = s * reference (1 for the reference network; batch norm's scale in
    the torchvision variant), or None when the graph's weight is not the reference's up to such a scale."""
    pivot = np.abs(reference).argmax(axis=1)
    rows = np.arange(len(reference))
    factor = graph_weight[rows, pivot] / np.where(reference[rows, pivot] == 0, 1, reference[rows, pivot])
    tolerance = 1e-4 * np.abs(graph_weight).max(axis=1, keepdims=True) + 1e-12
    if not np.all(np.abs(graph_weight - factor[:, None] * reference) <= tolerance):
        return None
    return factor.astype(np.float32)


def weights_folded_at_load(model: onnx.ModelProto) -> int:
    """Each DequantizeLinear of a stored tensor (the weights and biases of a weights-only model) rewritten as
    Cast -> Mul, in place; returns how many. The same values: DequantizeLinear computes float(q) * scale with a
    zero point of 0, one rounding, as Mul(Cast(q), scale) does. But ONNX Runtime keeps DequantizeLinear unfolded
    (for its int8 kernels) and so dequantizes 7 M weights at every run (1.2-2.2x FP32's latency), while it folds
    Cast and Mul of constants into float weights at load: FP32's speed, as with `palettized_graph`."""
    from onnx import TensorProto, helper, numpy_helper

    stored = {tensor.name: tensor for tensor in model.graph.initializer}
    nodes, folded = [], 0
    for node in model.graph.node:
        zero = stored.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if (
            node.op_type != "DequantizeLinear"
            or node.input[0] not in stored
            or node.input[1] not in stored
            or (zero is not None and np.any(numpy_helper.to_array(zero) != 0))
        ):
            nodes.append(node)
            continue
        scale = numpy_helper.to_array(stored[node.input[1]])
        scale_name = node.input[1]
        rank = len(stored[node.input[0]].dims)
        if scale.size > 1 and rank > 1:  # per channel along `axis`: broadcast it as Mul does not
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % rank
            shape = [1] * rank
            shape[axis] = scale.size
            scale_name = f"{node.input[1]}_{'x'.join(map(str, shape))}"
            if scale_name not in stored:
                stored[scale_name] = numpy_helper.from_array(scale.reshape(shape), scale_name)
                model.graph.initializer.append(stored[scale_name])
        values = f"{node.input[0]}_values"
        nodes.append(helper.make_node("Cast", [node.input[0]], [values], f"{node.name}/cast", to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [values, scale_name], [node.output[0]], f"{node.name}/scale"))
        folded += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)  # the zero points, the per-channel scales' flat form
    return folded
