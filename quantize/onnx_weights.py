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

    pivot = np.abs(reference).argmax(axis=1)
    rows = np.arange(len(reference))
    scale = graph_weight[rows, pivot] / np.where(reference[rows, pivot] == 0, 1, reference[rows, pivot])
    tolerance = 1e-4 * np.abs(graph_weight).max(axis=1, keepdims=True) + 1e-12
    if not np.all(np.abs(graph_weight - scale[:, None] * reference) <= tolerance):
        return None
    import torch

    signed = torch.from_numpy(ints * np.sign(scale)[:, None])
    return to_float(torch.from_numpy(graph_weight), signed, qmax).numpy()


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
    float_weights = {name for node in model.graph.node if node.name in config.exclude for name in node.input}
    skip = tuple(name for name in quantized_layers(reference) if f"{name}.weight" in float_weights)
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
