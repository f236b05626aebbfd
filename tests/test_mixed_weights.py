"""The weights-only refinements of the TFLite `learned-mixed` recipe, checked against their definitions:
channel equalization (`quantize.equalization`) keeps the network's function and lowers the int8 weights' error
on photos it was not fitted on; the float16 choice (`quantize.mixed_precision`) spends its budget where the
measured error per byte is largest."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from export.errors import ToolkitError
from export.model import GoogLeNet
from quantize.equalization import equalize_channels, fit_scales, rounding_noise, scaling_groups
from quantize.mixed_precision import FLOAT16_BUDGET, choose_float16, keep_float16
from quantize.rounding import RoundingSettings, nearest_ints, quantized_layers, rounded_copy, to_float
from quantize.tflite_int8 import recipe

STEM = ("conv1.conv",)  # the float stem: its weights are never rounded


def _rounded_to_nearest(model: nn.Module, skip=("conv1.conv",)) -> nn.Module:
    """A copy with every conv/linear weight but the stem's rounded to nearest on the per-channel int8 grid."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for module in quantized_layers(out, skip).values():
            w = module.weight.reshape(module.weight.shape[0], -1)
            module.weight.copy_(to_float(w, nearest_ints(w)).reshape(module.weight.shape))
    return out


def test_fitted_scales_lower_the_noise_of_a_row_whose_largest_weight_reads_a_quiet_channel() -> None:
    """One consumer row: its largest weight (10) multiplies a channel of energy 1e-4, the others (~0.1) busy
    ones. Scaling that channel's input down (its column up) frees the grid for the rest."""
    magnitude = torch.full((4, 8), 0.1, dtype=torch.float64)  # each row's largest |w| per input channel
    magnitude[:, 0] = 10.0
    energy = torch.ones(8, dtype=torch.float64)
    energy[0] = 1e-4
    terms = [(magnitude, energy)]
    scales = fit_scales(terms)
    assert float(rounding_noise(terms, torch.ones(8, dtype=torch.float64))) == pytest.approx(1.0)
    assert float(rounding_noise(terms, scales)) < 0.2
    assert scales[0] < scales[1:].min() and float(scales.log().mean()) == pytest.approx(0.0, abs=1e-9)


def test_any_positive_scaling_of_the_groups_keeps_the_function_and_leaves_lrn_alone() -> None:
    """The groups' definition: dividing a group's channels out of its producers and into its consumers, by any
    positive scales, leaves the logits as they were; conv1 and conv2, which write into LRN, never produce."""
    from quantize.equalization import _apply

    torch.manual_seed(0)
    model = GoogLeNet().eval()
    for module in model.modules():  # lively weights: with PyTorch's defaults the activations die out
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight)
    scaled = copy.deepcopy(model)
    groups = scaling_groups(scaled)
    assert len(groups) == 1 + 2 * 9 + 9
    producers = {id(p) for g in groups for p in g.producers}
    assert id(scaled.conv1.conv) not in producers and id(scaled.conv2.conv) not in producers
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for group in groups:
            _apply(group, torch.rand(group.consumers[0].weight.shape[1], generator=generator) * 8 + 0.1)
        images = torch.randn(2, 3, 224, 224)
        expected, got = model(images), scaled(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(scaled.conv1.conv.weight, model.conv1.conv.weight, rtol=0, atol=0)
    assert not torch.equal(scaled.fc.weight, model.fc.weight)


def test_equalization_refuses_another_architecture() -> None:
    with pytest.raises(ToolkitError, match="reference network"):
        scaling_groups(nn.Sequential(nn.Conv2d(3, 8, 1)))


@pytest.mark.slow
def test_equalization_lowers_the_int8_weights_error_of_the_real_network_on_unseen_photos(
    bvlc_loaded, imagenet_sample_dir
):
    """Fitted on 24 real photos, judged on 12 others: GPTQ-rounded int8 weights (stem float) of the equalized
    network follow FP32's logits more closely than those of the network as trained. (Round-to-nearest gains
    only ~2% here: GPTQ moves each row's error onto the inputs of least energy, which the scaling enlarges.)"""
    from quantize.calibration import FolderSource

    photos = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=36, seed=3).arrays()
    fit, unseen = photos[:24], torch.from_numpy(photos[24:])
    model = bvlc_loaded.model
    equalized = copy.deepcopy(model).eval()
    equalize_channels(equalized, fit)
    with torch.no_grad():
        reference = model(unseen)
        torch.testing.assert_close(equalized(unseen), reference, rtol=1e-4, atol=1e-3)
        settings = RoundingSettings(method="gptq")
        plain = (rounded_copy(model, fit, settings, STEM)[0](unseen) - reference).pow(2).mean().sqrt()
        better = (rounded_copy(equalized, fit, settings, STEM)[0](unseen) - reference).pow(2).mean().sqrt()
    assert better < 0.95 * plain, (float(better), float(plain))


def test_float16_goes_to_the_most_error_per_byte_within_the_budget() -> None:
    shares = {"big": 9.0, "dense": 4.0, "cheap": 1.0, "quiet": 0.0}
    sizes = {"big": 900, "dense": 100, "cheap": 50, "quiet": 10}
    assert choose_float16(shares, sizes, budget=160) == ["dense", "cheap"]  # 0.04 and 0.02 per weight vs 0.01
    assert choose_float16(shares, sizes, budget=120) == ["dense"]  # cheap no longer fits; quiet gains nothing
    assert choose_float16(shares, sizes, budget=2000) == ["dense", "cheap", "big"]


def test_keep_float16_measures_each_layer_and_stores_float16_weights() -> None:
    """A small net whose second conv is rounded far off (the others on the int8 grid): it is the one kept, as
    float16 values of the float weights; the rest keep their rounded weights."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 1000),
    ).eval()  # fmt: skip
    rounded = _rounded_to_nearest(net, skip=())
    with torch.no_grad():
        rounded[2].weight.add_(0.05 * torch.randn_like(rounded[2].weight))
    before = {n: m.weight.detach().clone() for n, m in quantized_layers(rounded).items()}
    images = torch.randn(20, 3, 8, 8).numpy()
    record = keep_float16(net, rounded, images)
    total = sum(m.weight.numel() for m in quantized_layers(net).values())
    assert record["budget_bytes"] == int(FLOAT16_BUDGET * 4 * total) and record["measured_on_photos"] == 16
    assert record["layers"][0] == "2" and "7" not in record["layers"]  # the classifier is never a candidate
    kept = quantized_layers(rounded)
    torch.testing.assert_close(kept["2"].weight, net[2].weight.half().float(), rtol=0, atol=0)
    for name in set(before) - set(record["layers"]):
        torch.testing.assert_close(kept[name].weight, before[name], rtol=0, atol=0)
    assert record["weights"] == sum(kept[n].weight.numel() for n in record["layers"]) <= record["budget_bytes"]


def test_the_mixed_recipe_needs_float_activations() -> None:
    assert recipe("learned-mixed").weights_only and recipe("learned-mixed").float16_layers
    assert not recipe("learned-mixed").bias_correction  # it would "correct" the float16 kernels by int8's error
    from quantize import tflite_int8

    tflite_int8.RECIPES["mixed-on-int8"] = ("gptq-rounding", "equalize-channels")
    try:
        with pytest.raises(ToolkitError, match="need weights-only"):
            recipe("mixed-on-int8")
    finally:
        del tflite_int8.RECIPES["mixed-on-int8"]


@pytest.mark.slow
def test_learned_mixed_tflite_holds_what_was_fitted_on_the_real_network(bvlc_loaded, imagenet_sample_dir, tmp_path):
    """The real network, 32 real calibration photos: the file stores float16 kernels for the layers the fit
    chose (and conv1), int8 for the rest, stays under 27% of FP32, and LiteRT computes the fitted PyTorch
    network on photos it was not fitted on, which follows FP32 more closely than `learned-weights`' weights."""
    pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra")
    from edge_runtime.sessions import TfliteRunner, tflite_op_histogram
    from quantize.calibration import FolderSource
    from quantize.tflite_quant import convert, fitted_weights

    photos = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=40, seed=5).arrays()
    calibration, unseen = photos[:32], photos[32:]
    fit: dict = {}
    mixed, fp32 = tmp_path / "mixed.tflite", tmp_path / "fp32.tflite"
    nhwc = np.ascontiguousarray(calibration.transpose(0, 2, 3, 1))
    mixed.write_bytes(convert(bvlc_loaded, "int8", "float32", nhwc, recipe("learned-mixed"), fit))
    fp32.write_bytes(convert(bvlc_loaded, None, "float32", None))
    kept = fit["float16"]["layers"]
    assert kept and fit["equalization"]["groups"] == 28 and "float16_kernels" not in fit
    ops = tflite_op_histogram(mixed)
    assert ops["DEQUANTIZE[FLOAT16->FLOAT32]"] == 1 + len(kept), ops  # conv1 and the chosen layers
    assert ops["DEQUANTIZE[INT8->FLOAT32]"] == 60 - 1 - len(kept), ops  # 57 convolutions + 2 LRN bands + classifier
    assert mixed.stat().st_size <= 0.27 * fp32.stat().st_size
    model, _ = fitted_weights(bvlc_loaded.model, calibration, recipe("learned-mixed"))
    plain, _ = fitted_weights(bvlc_loaded.model, calibration, recipe("learned-weights"))
    inputs = torch.from_numpy(unseen)
    with torch.no_grad():
        reference, fitted, weights_only = bvlc_loaded.model(inputs), model(inputs), plain(inputs)
    litert = TfliteRunner(mixed)(np.ascontiguousarray(unseen.transpose(0, 2, 3, 1)))
    spread = float(reference.max() - reference.min())
    np.testing.assert_allclose(litert, fitted.numpy(), rtol=0, atol=1e-3 * spread)
    error = {name: float((out - reference).pow(2).mean().sqrt()) for name, out in
             (("learned-mixed", fitted), ("learned-weights", weights_only))}  # fmt: skip
    assert error["learned-mixed"] < error["learned-weights"], error
