"""quantize.rounding: learned weight rounding lies on the backends' int8 grid, reproduced exactly by ONNX
Runtime's and TFLite's own round-to-nearest, and lowers a layer's output error on inputs it was not fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from quantize.onnx_float import grid_groups
from quantize.rounding import (
    INT8_MAX,
    REDUCED_INT8_MAX,
    RoundingSettings,
    _output_positions,
    _patches,
    _sampled_patches,
    grid_scale,
    layer_hessians,
    nearest_ints,
    output_error,
    round_layer,
    to_float,
)

RNG = np.random.default_rng(0)


def _correlated_inputs(count: int, width: int, seed: int) -> torch.Tensor:
    """ReLU'd inputs with correlated channels, like a layer's inputs in a CNN (rounding errors then interact)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(0, 1, (width, width)) / np.sqrt(width)
    return torch.from_numpy(np.maximum(rng.normal(0.3, 1, (count, width)) @ mix, 0)).float()


def _layer(out: int = 24, width: int = 48) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, (out, width))).float()


def _gram(x: torch.Tensor) -> torch.Tensor:
    return (x.T @ x).double()


@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_learned_rounding_is_on_grid_and_generalises(method: str) -> None:
    weight = _layer()
    fit, held_out = _correlated_inputs(2000, 48, seed=2), _correlated_inputs(2000, 48, seed=3)
    settings = RoundingSettings(method=method, iterations=200, damping=0.01)
    ints = round_layer(weight, _gram(fit), len(fit), settings)
    assert torch.equal(ints, torch.round(ints)) and ints.abs().max() <= INT8_MAX
    rounded = to_float(weight, ints)
    # the backends recompute max|w|/127 from the float weights: same scale, and their rounding gives back ints
    assert torch.equal(grid_scale(rounded), grid_scale(weight))
    assert torch.equal(torch.round(rounded / grid_scale(rounded)), ints)
    assert torch.equal(rounded.abs().amax(dim=1), weight.abs().amax(dim=1))
    if method == "adaround":  # AdaRound only chooses up or down; GPTQ may move further to absorb errors
        assert ((ints - weight / grid_scale(weight)).abs() < 1).all()
    nearest = output_error(weight, nearest_ints(weight), _gram(held_out), len(held_out))
    learned = output_error(weight, ints, _gram(held_out), len(held_out))
    assert learned < 0.8 * nearest, (learned, nearest)


def test_hessian_covers_every_output_position() -> None:
    """H = sum of x x^T over the conv's im2col patches: its output error equals the error measured directly."""
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    images = RNG.normal(0, 1, (4, 3, 9, 9)).astype(np.float32)
    (gram, count) = layer_hessians(conv, images, {"c": conv})["c"]
    assert count == 4 * 9 * 9
    weight = conv.weight.detach().reshape(8, -1)
    ints = nearest_ints(weight)
    rounded = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    plain = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        rounded.weight.copy_(to_float(weight, ints).reshape(conv.weight.shape))
        plain.weight.copy_(conv.weight)
        x = torch.from_numpy(images)
        direct = float(((rounded(x) - plain(x)) ** 2).sum() / count)
    assert output_error(weight, ints, gram, count) == pytest.approx(direct, rel=1e-4)


def test_blocked_gram_is_the_full_product() -> None:
    from quantize.rounding import _gram as blocked_gram

    rows = torch.from_numpy(RNG.normal(0, 1, (500, 300))).float()
    assert torch.allclose(blocked_gram(rows), (rows.T @ rows).double(), rtol=1e-5, atol=1e-3)
    assert torch.equal(blocked_gram(rows), blocked_gram(rows).T)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 4, 3, padding=1),
        nn.Conv2d(6, 4, 5, padding=2),
        nn.Conv2d(6, 4, 7, stride=2, padding=3),  # conv1's geometry
        nn.Conv2d(6, 4, 3, stride=2, padding=1, dilation=2),
        nn.Conv2d(6, 4, 1),
        nn.Linear(6, 4),
    ],
    ids=["3x3", "5x5", "7x7-stride2", "dilated", "1x1", "linear"],
)
def test_sampled_patches_are_the_rows_of_the_full_im2col(conv: nn.Module) -> None:
    """Gathering only the sampled output positions gives exactly those rows of the full patch matrix, in the
    sample's order (so the estimated H, and every artifact, are unchanged by not building the rest)."""
    x = torch.randn(3, 15, 13, 6).permute(0, 3, 1, 2) if isinstance(conv, nn.Conv2d) else torch.randn(5, 6)
    full = _patches(conv, x)  # channels-last input, as in layer_hessians
    assert full.shape[0] == _output_positions(conv, x)
    rows = torch.randperm(full.shape[0], generator=torch.Generator().manual_seed(0))[:23]
    assert torch.equal(_sampled_patches(conv, x, rows), full[rows])


def test_sampled_positions_estimate_the_hessian() -> None:
    """H from a sample of positions: same count, a seeded (repeatable) estimate close to the full sum, and the
    rounding fitted on it nearly as good on held-out inputs."""
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    conv = torch.nn.Conv2d(4, 16, 3, padding=1)
    images = np.maximum(rng.normal(0.2, 1, (6, 4, 24, 24)), 0).astype(np.float32)
    full, count = layer_hessians(conv, images, {"c": conv}, batch_size=3)["c"]
    sampled, sampled_count = layer_hessians(conv, images, {"c": conv}, batch_size=3, positions_per_input=64)["c"]
    again, _ = layer_hessians(conv, images, {"c": conv}, batch_size=3, positions_per_input=64)["c"]
    assert sampled_count == count == 6 * 24 * 24
    assert torch.equal(sampled, again)
    assert not torch.equal(sampled, full)  # 64 x 36 inputs of 3456 positions: a sample was taken
    assert float((sampled - full).norm() / full.norm()) < 0.1
    weight = conv.weight.detach().reshape(16, -1)
    held_out = np.maximum(rng.normal(0.2, 1, (6, 4, 24, 24)), 0).astype(np.float32)
    test, test_count = layer_hessians(conv, held_out, {"c": conv})["c"]
    errors = {
        name: output_error(weight, round_layer(weight, h, count, RoundingSettings()), test, test_count)
        for name, h in (("full", full), ("sampled", sampled))
    }
    assert errors["sampled"] < 1.1 * errors["full"], errors
    assert errors["sampled"] < 0.8 * output_error(weight, nearest_ints(weight), test, test_count)


class _Blocks(torch.nn.Module):
    """Inception-like: in each block two 1x1 convs read the same input; every block's tensors have the same
    shape, so freed ones are reused by the allocator (an address seen twice in one batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs = torch.nn.ModuleList(
            torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 1)]) for _ in range(6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a, b in self.pairs:
            x = torch.relu(a(x)) + torch.relu(b(x))
        return x


def test_shared_inputs_share_one_gram_and_nothing_else() -> None:
    """The 1x1 convs of a block get the gram of their shared input once; no layer gets another's (the cache
    is keyed by the input's address, which a later tensor must not be able to reuse)."""
    torch.manual_seed(0)
    model = _Blocks().eval()
    images = np.random.default_rng(3).normal(0, 1, (8, 8, 12, 12)).astype(np.float32)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    together = layer_hessians(model, images, layers, batch_size=2)
    for name, module in layers.items():
        alone = layer_hessians(model, images, {name: module}, batch_size=2)[name]
        assert torch.equal(together[name][0], alone[0]) and together[name][1] == alone[1], name
    assert torch.equal(together["pairs.2.0"][0], together["pairs.2.1"][0])
    assert not torch.equal(together["pairs.2.0"][0], together["pairs.3.0"][0])


def test_learned_ints_carry_over_a_folded_channel_scale() -> None:
    """Batch norm folded into a conv scales each output channel; the symmetric grid scales with it, so the
    learned integers survive (times the sign) and the backend's own rounding finds them."""
    from quantize.onnx_weights import on_graph_grid

    weight = _layer()
    x = _correlated_inputs(800, 48, seed=4)
    ints = round_layer(weight, _gram(x), len(x), RoundingSettings())
    channel = np.random.default_rng(6).uniform(0.2, 3, 24) * np.where(np.arange(24) % 3 == 0, -1, 1)
    folded = (weight.numpy() * channel[:, None]).astype(np.float32)
    moved = on_graph_grid(folded, weight.numpy(), ints.numpy(), INT8_MAX)
    assert moved is not None
    backend = np.round(moved / (np.abs(moved).max(axis=1, keepdims=True) / INT8_MAX))
    assert np.array_equal(backend, ints.numpy() * np.sign(channel)[:, None])
    assert np.allclose(moved, to_float(weight, ints).numpy() * channel[:, None], rtol=1e-5, atol=1e-7)
    other = folded.copy()
    other[3, 5] += 0.05  # not the reference weight up to a channel scale: refused
    assert on_graph_grid(other, weight.numpy(), ints.numpy(), INT8_MAX) is None


def _rounded_pair(qmax: int = INT8_MAX) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A conv [8, 3, 3, 3] and a dense [10, 32] weight, GPTQ-rounded on the grid of `qmax`; float and int forms."""
    out = []
    for shape in ((8, 3, 3, 3), (10, 32)):
        weight = torch.from_numpy(RNG.normal(0, 0.2, shape)).float().reshape(shape[0], -1)
        x = _correlated_inputs(500, weight.shape[1], seed=5)
        ints = round_layer(weight, _gram(x), len(x), RoundingSettings(method="gptq", qmax=qmax))
        assert not torch.equal(ints, nearest_ints(weight, qmax)), "GPTQ must move some weights off nearest"
        out += [to_float(weight, ints, qmax).reshape(shape).numpy(), ints.reshape(shape).numpy().astype(np.int8)]
    return out[0], out[1], out[2], out[3]


@pytest.mark.parametrize("reduce_range", [False, True], ids=["full-range", "reduce-range"])
def test_onnx_runtime_reproduces_the_rounding(tmp_path: Path, reduce_range: bool) -> None:
    """ORT's quantize_static (per-channel symmetric int8, as the toolkit calls it) stores exactly the learned ints,
    on the full grid and on the x86-avx2 preset's reduce_range grid (-64..64)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    conv_w, conv_q, fc_w, fc_q = _rounded_pair(REDUCED_INT8_MAX if reduce_range else INT8_MAX)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f4", "fw"], ["y"], name="fc", transB=1),
            helper.make_node("Concat", ["f", "f", "f", "f"], ["f4"], name="cat", axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(fc_w, "fw")],
    )
    graph.node.insert(4, graph.node.pop(5))  # topological order: Concat before Gemm
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(fp32))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.data = iter([{"x": RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(
        str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True},
        reduce_range=reduce_range,
    )  # fmt: skip
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer}
    ints = {k: v for k, v in stored.items() if v.dtype == np.int8 and v.ndim >= 2}
    assert len(ints) == 2
    by_shape = {v.shape: v for v in ints.values()}
    np.testing.assert_array_equal(by_shape[conv_q.shape], conv_q)
    np.testing.assert_array_equal(by_shape[fc_q.shape], fc_q)


@pytest.mark.slow
def test_tflite_converter_reproduces_the_rounding(tmp_path: Path) -> None:
    """TFLite's int8 conversion stores exactly the learned ints for conv (OHWI) and fully-connected kernels."""
    tf = pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra")
    from ai_edge_litert.tools import flatbuffer_utils

    conv_w, conv_q, fc_w, fc_q = _rounded_pair()
    kernel = conv_w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    dense = np.ascontiguousarray(fc_w.T)  # [in, out]

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)], autograph=False)
    def net(x):
        y = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")), axis=[1, 2])
        return tf.matmul(tf.concat([y, y, y, y], axis=1), dense)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([RNG.normal(0, 1, (1, 8, 8, 3)).astype(np.float32)] for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path = tmp_path / "int8.tflite"
    path.write_bytes(converter.convert())
    model = flatbuffer_utils.read_model(str(path))
    ints = {}
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if data is not None and tensor.type == 9 and len(tensor.shape) >= 2:  # int8 constants
            ints[tuple(tensor.shape)] = np.frombuffer(bytes(data), np.int8).reshape(tensor.shape)
    np.testing.assert_array_equal(ints[(8, 3, 3, 3)], conv_q.transpose(0, 2, 3, 1))  # OIHW -> OHWI
    np.testing.assert_array_equal(ints[(10, 32)], fc_q)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "qmax"), [("arm64", INT8_MAX), ("x86-avx2", REDUCED_INT8_MAX)])
def test_real_model_onnx_int8_holds_the_learned_ints(
    bvlc_onnx_export, bvlc_loaded, imagenet_sample_dir: Path, tmp_path: Path, target: str, qmax: int
) -> None:
    """The real network through `--int8-recipe learned`: every int8 weight ORT writes is the learned integer
    (conv1's too: the float stem keeps its activations float, not its weights), and the sidecar records the
    rounding. x86-avx2's 7-bit weights (reduce_range) are learned on their own grid, not re-rounded onto it."""
    from quantize import FolderSource, quantize_onnx
    from quantize.presets import recipe
    from quantize.rounding import RoundingSettings, quantized_layers, rounded_copy

    source = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=12, seed=3)
    config = recipe("learned", target)
    out = tmp_path / "googlenet.int8.onnx"  # not beside the shared FP32 export, which other tests list
    result = quantize_onnx(bvlc_onnx_export.path, source, config, out_path=out, reference=bvlc_loaded.model)
    rounded, record = rounded_copy(  # the cached fit of the run above
        bvlc_loaded.model, np.concatenate(list(source.batches())), RoundingSettings("gptq", qmax=qmax), ()
    )
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    layers = quantized_layers(rounded)
    assert len(layers) == 57 + 1  # 57 convs + fc
    for name, module in layers.items():
        weight = module.weight.detach().reshape(module.weight.shape[0], -1)
        ints = torch.round(weight / grid_scale(weight, qmax)).reshape(module.weight.shape).numpy().astype(np.int8)
        assert np.abs(ints).max() == qmax, name
        quantized = [
            v for k, v in stored.items() if k.startswith(f"{name}.weight") and v.dtype == np.int8 and v.ndim > 1
        ]
        assert len(quantized) == 1, name
        np.testing.assert_array_equal(quantized[0], ints, err_msg=name)
    sidecar = result.info["quantization"]
    assert sidecar["rounding"]["method"] == "gptq" and sidecar["rounding"]["kept_float"] == []
    assert sidecar["rounding"]["grid"].endswith(f"max|w|/{qmax}")
    assert sidecar["rounding"] == record and sidecar["float_ops"]["activations"][:3] == ["input", "conv1.relu", "pool1"]


@pytest.mark.slow
def test_learned_ints_reach_torchvision_weights_through_folded_batch_norm(
    imagenet_sample_dir: Path, tmp_path: Path
) -> None:
    """torchvision-format weights: the export folds each batch norm into its conv (a scale per output channel,
    some negative); the default recipe's learned integers still land in the int8 model (times the sign), and its
    float stem is found by structure (conv1's Relu output and maxpool1 float)."""
    from export.onnx_export import OnnxExportOptions, export_onnx
    from export.torchvision_variant import TorchvisionGoogLeNet
    from export.weights import load_model
    from quantize.api import Int8Preset, quantize
    from quantize.calibration import FolderSource
    from quantize.rounding import RoundingSettings, rounded_copy

    torch.manual_seed(0)
    network = TorchvisionGoogLeNet()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(-2, 2)
                module.bias.normal_(0, 0.2)
    torch.save(network.state_dict(), tmp_path / "tv.pt")
    loaded = load_model(tmp_path / "tv.pt")
    fp32 = export_onnx(loaded, OnnxExportOptions(out_dir=tmp_path, evaluate=False)).path
    source = FolderSource(imagenet_sample_dir, loaded.preprocess, size=6, seed=0)
    out = tmp_path / "int8" / "googlenet.int8.onnx"
    out.parent.mkdir()
    result = quantize(fp32, source, Int8Preset("onnx"), out_path=out, reference=loaded.model)
    quantization = result.info["quantization"]
    assert quantization["rounding"]["method"] == "gptq"
    assert {"conv1", "maxpool1"} <= set(quantization["float_ops"]["activations"])
    rounded, _ = rounded_copy(loaded.model, np.concatenate(list(source.batches())), RoundingSettings("gptq"), ())
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for path in ("conv2", "inception4c.branch2.1"):
        layer, bn = rounded.get_submodule(path).conv, network.get_submodule(path).bn
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        sign = torch.sign(bn.weight.detach())[:, None]
        expected = (torch.round(weight / grid_scale(weight)) * sign).numpy().astype(np.int8)
        (ints,) = [
            v for k, v in stored.items() if k.startswith(f"{path}.conv.weight") and v.ndim > 1 and v.dtype == np.int8
        ]
        np.testing.assert_array_equal(ints.reshape(len(ints), -1), expected, err_msg=path)
        assert (sign < 0).any()


def _branchy_model(path: Path) -> None:
    """x -> two conv+relu branches -> Concat -> AveragePool -> Flatten -> Gemm, like GoogLeNet's tail."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 2.0, (4, 3, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 8)).astype(np.float32), "fw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="b1.conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="b1.relu"),
        helper.make_node("Conv", ["x", "w2"], ["c2"], name="b2.conv"),
        helper.make_node("Relu", ["c2"], ["r2"], name="b2.relu"),
        helper.make_node("Concat", ["r1", "r2"], ["cat"], name="cat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["pool"], name="avgpool", kernel_shape=[4, 4]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fw"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_onnx_passes_concat_ranges_float_pool_float_logits(tmp_path: Path) -> None:
    """shared_concat_ranges: both branches are quantized on the Concat's grid; excluding the pool gives the
    pooled features their own (finer) grid; float_outputs=Gemm leaves the logits unquantized."""
    from quantize import ArraySource, QuantizationConfig, quantize_onnx

    fp32 = tmp_path / "fp32.onnx"
    _branchy_model(fp32)
    data = ArraySource(RNG.normal(0, 1, (8, 3, 4, 4)).astype(np.float32))

    def scales(config: QuantizationConfig, name: str) -> dict[str, float]:
        out = tmp_path / name
        quantize_onnx(fp32, data, config, out_path=out)
        model = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        found = {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}
        # a quantized graph output is written as `y_QuantizeLinear_Input` (or similar) and dequantized into `y`
        return {("y" if k.startswith("y_") else k): v for k, v in found.items()}

    plain = scales(QuantizationConfig.arm64(), "plain.onnx")
    tuned = scales(
        QuantizationConfig.arm64(exclude=("avgpool",), float_outputs=("Gemm",), shared_concat_ranges=True),
        "tuned.onnx",
    )
    assert plain["r1"] < plain["cat"]  # two grids: the small branch is rounded twice
    assert tuned["r1"] == tuned["r2"] == tuned["cat"]
    # accuracy control keeps a shared grid float as one (`grid_groups`), separate grids one by one
    assert ["cat", "r1", "r2"] in grid_groups(onnx.load(str(tmp_path / "tuned.onnx")))
    assert not any({"cat", "r1"} <= set(group) for group in grid_groups(onnx.load(str(tmp_path / "plain.onnx"))))
    assert plain.get("pool", plain["cat"]) == plain["cat"]  # int8 AveragePool keeps the Concat's grid
    features = tuned.get("pool", tuned.get("flat"))  # the Gemm's input, on its own calibrated grid
    assert features is not None and features < tuned["cat"]
    assert "y" in plain and "y" not in tuned
