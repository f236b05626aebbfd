"""8-bit palettized weights (`quantize.palette`, the ONNX `learned-palette` recipe), checked against their
definition on small layers and graphs: the levels, the GPTQ rounding onto them, and the graph that stores them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.errors import ToolkitError
from quantize.api import Int8Preset
from quantize.palette import PALETTE_LEVELS, lloyd_max_levels, nearest_level, palette_gptq
from quantize.rounding import gptq, grid_scale, to_float


def _heavy_tailed(rng: np.random.Generator, rows: int, columns: int) -> torch.Tensor:
    """Heavy-tailed weights (Student's t, 4 degrees of freedom) with a different spread per output channel, as
    trained conv weights. With ~100 weights per channel or fewer the palette gains nothing: each channel's
    max|w| is then a typical value, the even grid's tails are not wasted (measured: 32 x 96 Laplace weights)."""
    spread = rng.uniform(0.5, 2.0, size=(rows, 1))
    return torch.from_numpy((rng.standard_t(4, size=(rows, columns)) * spread).astype(np.float32))


def test_lloyd_max_levels_beat_the_even_grid_on_heavy_tailed_values() -> None:
    values = np.random.default_rng(0).laplace(size=50_000)
    levels = lloyd_max_levels(values, np.ones_like(values))
    assert levels.dtype == np.float32 and len(levels) <= PALETTE_LEVELS
    assert np.all(np.diff(levels) > 0) and values.min() <= levels[0] < levels[-1] <= values.max()
    palette_error = np.mean((values - levels[nearest_level(values, levels)]) ** 2)
    step = np.abs(values).max() / 127
    even_error = np.mean((values - np.round(values / step) * step) ** 2)
    assert palette_error < 0.5 * even_error, (palette_error, even_error)


def test_levels_follow_the_importance_they_are_given() -> None:
    """Weighted: the values that cost more at the layer's output get the finer levels."""
    values = np.linspace(-1, 1, 20_001)
    importance = np.where(values > 0, 100.0, 1.0)
    levels = lloyd_max_levels(values, importance, levels=16)
    assert (levels > 0).sum() > 2 * (levels < 0).sum(), levels


def test_palette_gptq_stores_what_it_computes_and_beats_the_int8_grid_on_unseen_inputs() -> None:
    rng = np.random.default_rng(1)
    weight = _heavy_tailed(rng, 64, 576)  # a 3x3 conv on 64 channels
    mixing = rng.normal(size=(576, 576)) / 10 + np.eye(576)  # correlated inputs, as a conv's patches
    fit = torch.from_numpy(rng.normal(size=(6000, 576)) @ mixing)
    unseen = torch.from_numpy(rng.normal(size=(6000, 576)) @ mixing)
    hessian = fit.T @ fit
    palette = palette_gptq(weight, hessian, damping=0.01)
    assert palette.indices.dtype == np.uint8 and palette.indices.shape == (64, 576)
    assert palette.codebook.dtype == palette.scale.dtype == np.float32 and len(palette.codebook) <= 256
    expected = palette.codebook[palette.indices.astype(np.int64)] * palette.scale[:, None]
    np.testing.assert_array_equal(palette.weights(), expected)  # float32 products, as the graph's Mul
    np.testing.assert_array_equal(palette.scale, grid_scale(weight).reshape(-1).numpy())

    def unseen_error(new: np.ndarray) -> float:
        return float(((unseen @ (torch.from_numpy(new).double() - weight.double()).T) ** 2).mean())

    int8_gptq = to_float(weight, gptq(weight, hessian, damping=0.01)).numpy()
    assert unseen_error(palette.weights()) < 0.7 * unseen_error(int8_gptq)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _tiny_onnx(path: Path, model: _Tiny) -> Path:
    """The ONNX graph of `_Tiny`, its initializers named as the module's parameters (as the exporter names them)."""
    from onnx import TensorProto, helper, numpy_helper

    params = {name: numpy_helper.from_array(p.detach().numpy(), name) for name, p in model.named_parameters()}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
            helper.make_node("Flatten", ["p"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        list(params.values()),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


def test_learned_palette_graph_computes_the_palettized_network(tmp_path: Path) -> None:
    """`--int8-recipe learned-palette` on a small graph: each weight is a uint8 index tensor behind
    Cast/Gather/Mul, no activation is quantized, ONNX Runtime computes the PyTorch network with the palette's
    weights (with graph optimisations off, and folded at load), and the sidecar says how it was made."""
    from onnx import TensorProto

    from edge_runtime.sessions import throughput_runner
    from quantize.calibration import ArraySource
    from quantize.onnx_int8 import quantize_onnx
    from quantize.palette import palettized_copy

    rng = np.random.default_rng(3)
    reference = _Tiny().eval()
    fp32 = _tiny_onnx(tmp_path / "tiny.onnx", reference)
    images = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    unseen = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    out = tmp_path / "tiny.int8.onnx"
    config = Int8Preset("onnx", "learned-palette").settings()
    result = quantize_onnx(fp32, ArraySource(images, origin="test"), config, out_path=out, reference=reference)
    model = onnx.load(str(out))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops, ops
    stored = {t.name: t for t in model.graph.initializer}
    assert (
        stored["conv.weight_palette_index"].data_type
        == stored["fc.weight_palette_index"].data_type
        == TensorProto.UINT8
    )
    assert "conv.weight" not in stored and "fc.weight" not in stored

    fitted, palettes, _ = palettized_copy(reference, images)
    with torch.no_grad():
        expected = fitted(torch.from_numpy(unseen)).numpy()
    np.testing.assert_array_equal(fitted.conv.weight.detach().numpy().reshape(8, -1), palettes["conv"].weights())
    emulated = throughput_runner(out, optimize=False)(unseen)
    np.testing.assert_allclose(emulated, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(throughput_runner(out)(unseen), emulated, rtol=1e-6, atol=1e-7)  # folded at load
    with torch.no_grad():
        assert np.abs(expected - reference(torch.from_numpy(unseen)).numpy()).max() > 0  # the weights changed

    from export.inspect_onnx import count_file

    counted, original = count_file(out), count_file(fp32)  # the indices are the weights: one parameter each
    assert [(x.name, x.params, x.macs) for x in counted.layers] == [(x.name, x.params, x.macs) for x in original.layers]

    quantization = json.loads(Path(result.sidecar).read_text())["quantization"]
    assert quantization["weight_grid"] == "palette" and quantization["format"] == "Gather LUT"
    assert quantization["passes"] == ["gptq-rounding", "float-stem", "palette-weights"]
    assert quantization["rounding"]["layers"] == ["conv", "fc"] and "codebook" in quantization["rounding"]["grid"]
    assert quantization["float_ops"]["activations"] == ["x", "f"]  # what the conv and the classifier read


def test_learned_palette_refuses_accuracy_control(tmp_path: Path) -> None:
    from quantize.accuracy_control import AccuracyBudget
    from quantize.calibration import ArraySource
    from quantize.onnx_int8 import quantize_onnx

    reference = _Tiny().eval()
    fp32 = _tiny_onnx(tmp_path / "tiny.onnx", reference)
    images = np.random.default_rng(4).normal(size=(4, 3, 8, 8)).astype(np.float32)
    config = Int8Preset("onnx", "learned-palette").settings()
    with pytest.raises(ToolkitError, match="learned-palette"):
        quantize_onnx(fp32, ArraySource(images), config, reference=reference, budget=AccuracyBudget(max_drop_pp=0.3),
                      validation=object())  # fmt: skip
    assert not (tmp_path / "tiny.int8.onnx").exists()
