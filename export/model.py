"""The paper-faithful GoogLeNet (Inception v1, Szegedy et al. 2014, Table 1 and Figure 3).

Plain `torch.nn`, no batch norm, LRN in the stem, real 5x5 convolutions in the inception modules,
ceil-mode max pools and a 7x7 average pool, exactly the network the BVLC Caffe weights were trained as.
The two auxiliary classifiers run only in training mode; `googlenet_loss` weighs them by 0.3.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from export.lrn import LRN

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj (input width is the previous output).
INCEPTION_WIDTHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
AUX_LOSS_WEIGHT = 0.3


class ConvReLU(nn.Sequential):
    """Convolution with bias followed by ReLU (Caffe's conv + relu pair)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
        self.relu = nn.ReLU(inplace=True)


class Inception(nn.Module):
    """Figure 3(b): 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1, concatenated on channels."""

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj = widths
        self.branch1 = ConvReLU(in_ch, n1x1, 1)
        self.branch2 = nn.Sequential(ConvReLU(in_ch, n3x3red, 1), ConvReLU(n3x3red, n3x3, 3))
        self.branch3 = nn.Sequential(ConvReLU(in_ch, n5x5red, 1), ConvReLU(n5x5red, n5x5, 5))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), ConvReLU(in_ch, pool_proj, 1)
        )
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxClassifier(nn.Module):
    """Section 5's side classifier: 5x5/3 avg-pool, 1x1 conv 128, FC 1024, dropout 70%, FC classes."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv = ConvReLU(in_ch, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux1: torch.Tensor | None
    aux2: torch.Tensor | None


class GoogLeNet(nn.Module):
    """GoogLeNet as in Table 1. Eval mode returns logits [N, classes] (softmax is left to the caller);
    training mode with `aux_logits=True` returns `GoogLeNetOutputs` for `googlenet_loss`."""

    arch = "reference"

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = ConvReLU(3, 64, 7, stride=2)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm1 = LRN(5, 1e-4, 0.75, 1.0)
        self.conv2_reduce = ConvReLU(64, 64, 1)
        self.conv2 = ConvReLU(64, 192, 3)
        self.norm2 = LRN(5, 1e-4, 0.75, 1.0)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        in_ch = 192
        blocks: dict[str, Inception] = {}
        for name, widths in INCEPTION_WIDTHS.items():
            blocks[name] = Inception(in_ch, widths)
            in_ch = blocks[name].out_channels
        self.inception3a, self.inception3b = blocks["3a"], blocks["3b"]
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a, self.inception4b, self.inception4c = blocks["4a"], blocks["4b"], blocks["4c"]
        self.inception4d, self.inception4e = blocks["4d"], blocks["4e"]
        self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception5a, self.inception5b = blocks["5a"], blocks["5b"]
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.aux1 = AuxClassifier(512, num_classes) if aux_logits else None
        self.aux2 = AuxClassifier(528, num_classes) if aux_logits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        x = self.norm1(self.pool1(self.conv1(x)))
        x = self.pool2(self.norm2(self.conv2(self.conv2_reduce(x))))
        x = self.pool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.pool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training and self.aux1 is not None:
            return GoogLeNetOutputs(logits, aux1, aux2)
        return logits


def googlenet_loss(outputs: torch.Tensor | GoogLeNetOutputs, target: torch.Tensor) -> torch.Tensor:
    """L = main + 0.3 * aux1 + 0.3 * aux2 (the paper's weighting); plain cross-entropy without aux."""
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, target)
    loss = F.cross_entropy(outputs.logits, target)
    for aux in (outputs.aux1, outputs.aux2):
        if aux is not None:
            loss = loss + AUX_LOSS_WEIGHT * F.cross_entropy(aux, target)
    return loss


def caffe_layer_map(model: GoogLeNet) -> dict[str, str]:
    """Caffe layer name (as in BVLC/ONNX-zoo initializers, `<layer>/W`) -> module path in this model."""
    mapping = {
        "conv1/7x7_s2": "conv1.conv",
        "conv2/3x3_reduce": "conv2_reduce.conv",
        "conv2/3x3": "conv2.conv",
        "loss3/classifier": "fc",
    }
    branches = {
        "1x1": "branch1.conv",
        "3x3_reduce": "branch2.0.conv",
        "3x3": "branch2.1.conv",
        "5x5_reduce": "branch3.0.conv",
        "5x5": "branch3.1.conv",
        "pool_proj": "branch4.1.conv",
    }
    for block in INCEPTION_WIDTHS:
        for caffe, ours in branches.items():
            mapping[f"inception_{block}/{caffe}"] = f"inception{block}.{ours}"
    if model.aux1 is not None:
        for index, head in ((1, "aux1"), (2, "aux2")):
            mapping[f"loss{index}/conv"] = f"{head}.conv.conv"
            mapping[f"loss{index}/fc"] = f"{head}.fc1"
            mapping[f"loss{index}/classifier"] = f"{head}.fc2"
    return mapping
