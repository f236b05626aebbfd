"""Local response normalisation that exports as one ONNX `LRN` node.

`nn.LocalResponseNorm` traces to a 5-D AveragePool decomposition that onnx2tf and most edge runtimes
reject. During `torch.onnx.export` this module calls a custom op instead, which the exporter's
translation table (`ONNX_TRANSLATIONS`) maps to the standard `LRN` operator; eager mode and training
use PyTorch's own implementation, so autograd is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("googlenet::lrn", mutates_args=())
def lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return F.local_response_norm(x, size, alpha, beta, k)


@lrn_op.register_fake
def _lrn_fake(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return torch.empty_like(x)


def _lrn_onnx(x, size: int, alpha: float, beta: float, k: float):
    from onnxscript import opset18 as op  # imported lazily: only the exporter needs onnxscript

    return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


ONNX_TRANSLATIONS = {torch.ops.googlenet.lrn.default: _lrn_onnx}


class LRN(nn.Module):
    """Cross-channel LRN as in Caffe and the paper: x / (k + alpha/size * sum(x^2))^beta."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return lrn_op(x, self.size, self.alpha, self.beta, self.k)
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
