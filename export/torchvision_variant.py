"""torchvision's GoogLeNet, rewritten in plain `torch.nn` with exactly torchvision's `state_dict` keys.

It differs from the paper (batch norm, no LRN, a 3x3 convolution where the paper has 5x5 — see
pytorch/vision#906, a 2x2 fourth max-pool, `transform_input`), so it is kept apart from the reference
model; it exists so that torchvision checkpoints and fine-tunes load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.model import INCEPTION_WIDTHS, GoogLeNetOutputs


class BasicConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class TorchvisionInception(nn.Module):
    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj = widths
        self.branch1 = BasicConv2d(in_ch, n1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_ch, n3x3red, kernel_size=1), BasicConv2d(n3x3red, n3x3, kernel_size=3, padding=1)
        )
        # torchvision's known deviation: the "5x5" branch is a 3x3 convolution.
        self.branch3 = nn.Sequential(
            BasicConv2d(in_ch, n5x5red, kernel_size=1), BasicConv2d(n5x5red, n5x5, kernel_size=3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_ch, pool_proj, kernel_size=1),
        )
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class TorchvisionAux(nn.Module):
    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_ch, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


class TorchvisionGoogLeNet(nn.Module):
    """Same module names as `torchvision.models.googlenet`, so its checkpoints load strictly."""

    arch = "torchvision"

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = False,
        transform_input: bool = True,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        in_ch = 192
        for name, widths in INCEPTION_WIDTHS.items():
            block = TorchvisionInception(in_ch, widths)
            setattr(self, f"inception{name}", block)
            in_ch = block.out_channels
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.aux1 = TorchvisionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = TorchvisionAux(528, num_classes, dropout_aux) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> the (x - 0.5) / 0.5 scaling the original weights were trained on."""
        if not self.transform_input:
            return x
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training and self.aux1 is not None:
            return GoogLeNetOutputs(logits, aux1, aux2)
        return logits
