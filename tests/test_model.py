"""The reference GoogLeNet (paper Table 1) and the torchvision variant kept apart from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from export.lrn import LRN
from export.model import INCEPTION_WIDTHS, GoogLeNet, GoogLeNetOutputs, googlenet_loss
from export.torchvision_variant import TorchvisionGoogLeNet

REFERENCE_PARAMS = 6_998_552
TORCHVISION_PARAMS = 6_624_904
TORCHVISION_PARAMS_WITH_AUX = 13_004_888
BLOCKS = [f"inception{name}" for name in INCEPTION_WIDTHS]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def reference() -> GoogLeNet:
    return GoogLeNet().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 50


# -- reference model --------------------------------------------------------------------------------
def test_reference_parameter_count(reference: GoogLeNet) -> None:
    assert n_params(reference) == REFERENCE_PARAMS
    assert reference.aux1 is None and reference.aux2 is None
    assert not any(name.startswith(("aux1", "aux2")) for name in reference.state_dict())


@pytest.mark.parametrize("block", BLOCKS)
def test_inception_5x5_branch_is_a_real_5x5(reference: GoogLeNet, block: str) -> None:
    conv = getattr(reference, block).branch3[1].conv
    assert conv.kernel_size == (5, 5)
    assert conv.padding == (2, 2)
    _, _, _, n5x5red, n5x5, _ = INCEPTION_WIDTHS[block.removeprefix("inception")]
    assert (conv.in_channels, conv.out_channels) == (n5x5red, n5x5)


def test_two_lrn_modules_with_caffe_parameters(reference: GoogLeNet) -> None:
    lrns = [m for m in reference.modules() if isinstance(m, LRN)]
    assert [(m.size, m.alpha, m.beta, m.k) for m in lrns] == [(5, 1e-4, 0.75, 1.0)] * 2
    assert reference.norm1 is lrns[0] and reference.norm2 is lrns[1]
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in reference.modules())


def test_lrn_is_caffe_cross_channel_normalisation() -> None:
    """b_c = a_c / (k + alpha/n * sum over the n channels around c of a^2)^beta, computed by hand."""
    x = np.random.default_rng(0).normal(0, 60, size=(2, 9, 4, 5)).astype(np.float64)
    size, alpha, beta, k = 5, 1e-4, 0.75, 1.0
    expected = np.empty_like(x)
    for c in range(x.shape[1]):
        window = x[:, max(0, c - size // 2) : c + size // 2 + 1]
        expected[:, c] = x[:, c] / (k + alpha / size * (window**2).sum(axis=1)) ** beta
    got = LRN(size, alpha, beta, k)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert np.abs(got - x).max() > 1.0  # the normalisation does something at this input scale


def test_num_classes_changes_only_the_head(reference: GoogLeNet) -> None:
    ten = GoogLeNet(num_classes=10)
    full_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ten_shapes = {k: tuple(v.shape) for k, v in ten.state_dict().items()}
    assert full_shapes.keys() == ten_shapes.keys()
    changed = {k for k in full_shapes if full_shapes[k] != ten_shapes[k]}
    assert changed == {"fc.weight", "fc.bias"}
    assert ten_shapes["fc.weight"] == (10, 1024) and ten_shapes["fc.bias"] == (10,)
    assert n_params(reference) - n_params(ten) == 990 * 1025


@pytest.fixture(scope="module")
def aux_run(images: torch.Tensor) -> tuple[GoogLeNet, GoogLeNetOutputs, torch.Tensor]:
    """A 7-class reference model with aux heads: its training-mode outputs and eval-mode logits."""
    torch.manual_seed(1)
    model = GoogLeNet(num_classes=7, aux_logits=True)
    with torch.no_grad():
        train_outputs = model.train()(images)
        eval_logits = model.eval()(images[:1])
    return model, train_outputs, eval_logits


def test_aux_heads_only_with_aux_logits(aux_run: tuple[GoogLeNet, GoogLeNetOutputs, torch.Tensor]) -> None:
    model, train_outputs, eval_logits = aux_run
    assert isinstance(model.aux1, nn.Module) and isinstance(model.aux2, nn.Module)
    assert any(k.startswith("aux1.") for k in model.state_dict())
    assert any(k.startswith("aux2.") for k in model.state_dict())
    assert model.aux1.fc2.out_features == 7 and model.aux2.fc2.out_features == 7
    assert isinstance(train_outputs, GoogLeNetOutputs) and len(train_outputs) == 3
    assert all(isinstance(t, torch.Tensor) and t.shape == (2, 7) for t in train_outputs)
    assert isinstance(eval_logits, torch.Tensor) and eval_logits.shape == (1, 7)


def _cross_entropy_by_hand(logits: torch.Tensor, target: torch.Tensor) -> float:
    z = logits.detach().double().numpy()
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), target.numpy()]))


def test_googlenet_loss_weighs_aux_by_0_3(aux_run: tuple[GoogLeNet, GoogLeNetOutputs, torch.Tensor]) -> None:
    _, outputs, eval_logits = aux_run
    target = torch.tensor([3, 5])
    main, aux1, aux2 = (_cross_entropy_by_hand(t, target) for t in outputs)
    assert aux1 != pytest.approx(main) and aux2 != pytest.approx(main)  # the three terms are distinct
    assert float(googlenet_loss(outputs, target)) == pytest.approx(main + 0.3 * aux1 + 0.3 * aux2, rel=1e-5)
    plain = float(googlenet_loss(eval_logits, target[:1]))
    assert plain == pytest.approx(_cross_entropy_by_hand(eval_logits, target[:1]), rel=1e-5)


# -- torchvision variant ----------------------------------------------------------------------------
# Characteristic keys of torchvision.models.googlenet(aux_logits=True).state_dict().
TORCHVISION_KEYS_SAMPLE = [
    "conv1.conv.weight",
    "conv1.bn.weight",
    "conv1.bn.bias",
    "conv1.bn.running_mean",
    "conv1.bn.running_var",
    "conv1.bn.num_batches_tracked",
    "conv2.conv.weight",
    "conv2.bn.running_var",
    "conv3.conv.weight",
    "conv3.bn.num_batches_tracked",
    "inception3a.branch1.conv.weight",
    "inception3a.branch1.bn.running_mean",
    "inception3a.branch2.0.conv.weight",
    "inception3a.branch2.1.conv.weight",
    "inception3a.branch2.1.bn.bias",
    "inception3a.branch3.0.conv.weight",
    "inception3a.branch3.1.conv.weight",
    "inception3a.branch4.1.conv.weight",
    "inception3b.branch3.1.bn.num_batches_tracked",
    "inception4a.branch2.0.bn.weight",
    "inception4b.branch1.conv.weight",
    "inception4c.branch3.0.bn.running_var",
    "inception4d.branch4.1.bn.running_mean",
    "inception4e.branch4.1.bn.weight",
    "inception5a.branch2.1.conv.weight",
    "inception5b.branch3.1.conv.weight",
    "inception5b.branch4.1.bn.num_batches_tracked",
    "aux1.conv.conv.weight",
    "aux1.conv.bn.weight",
    "aux1.conv.bn.running_mean",
    "aux1.fc1.weight",
    "aux1.fc1.bias",
    "aux1.fc2.weight",
    "aux1.fc2.bias",
    "aux2.conv.conv.weight",
    "aux2.conv.bn.num_batches_tracked",
    "aux2.fc1.weight",
    "aux2.fc2.bias",
    "fc.weight",
    "fc.bias",
]


def torchvision_key_set(aux: bool) -> set[str]:
    """torchvision's googlenet key layout, written out from its module tree (BasicConv2d = conv + bn)."""
    convs = ["conv1", "conv2", "conv3"]
    for block in BLOCKS:
        convs += [f"{block}.{b}" for b in ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1", "branch4.1")]
    if aux:
        convs += ["aux1.conv", "aux2.conv"]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {f"{c}.conv.weight" for c in convs} | {f"{c}.bn.{b}" for c in convs for b in bn}
    keys |= {"fc.weight", "fc.bias"}
    if aux:
        keys |= {f"aux{i}.{fc}.{p}" for i in (1, 2) for fc in ("fc1", "fc2") for p in ("weight", "bias")}
    return keys


def test_torchvision_state_dict_keys() -> None:
    with_aux = TorchvisionGoogLeNet(aux_logits=True).state_dict()
    assert len(with_aux) == 364
    assert set(TORCHVISION_KEYS_SAMPLE) <= set(with_aux)
    assert set(with_aux) == torchvision_key_set(aux=True)
    without_aux = TorchvisionGoogLeNet().state_dict()
    assert len(without_aux) == 344
    assert set(without_aux) == torchvision_key_set(aux=False)
    shapes = {
        "conv1.conv.weight": (64, 3, 7, 7),
        "conv3.conv.weight": (192, 64, 3, 3),
        "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),
        "inception5b.branch4.1.conv.weight": (128, 832, 1, 1),
        "aux1.conv.conv.weight": (128, 512, 1, 1),
        "aux2.conv.conv.weight": (128, 528, 1, 1),
        "aux1.fc1.weight": (1024, 2048),
        "aux2.fc2.weight": (1000, 1024),
        "fc.weight": (1000, 1024),
    }
    assert {k: tuple(with_aux[k].shape) for k in shapes} == shapes


def test_torchvision_parameter_counts() -> None:
    assert n_params(TorchvisionGoogLeNet(aux_logits=True)) == TORCHVISION_PARAMS_WITH_AUX
    assert n_params(TorchvisionGoogLeNet()) == TORCHVISION_PARAMS


@pytest.mark.parametrize("block", BLOCKS)
def test_torchvision_5x5_branch_is_3x3(block: str) -> None:
    model = TorchvisionGoogLeNet()
    assert getattr(model, block).branch3[1].conv.kernel_size == (3, 3)
    assert not any(isinstance(m, LRN | nn.LocalResponseNorm) for m in model.modules())
