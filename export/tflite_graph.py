"""GoogLeNet rebuilt from its PyTorch weights as a TensorFlow function, for the TFLite converter.

Why not convert the ONNX file: onnx2tf pins older onnx/numpy, downloads a sample file at run time,
and pads ceil-mode max pools with -FLT_MAX, which breaks full-integer models. The toolkit owns this
architecture, so it writes the same network once more in `tf.nn` ops, NHWC from the start: ceil-mode
3x3/2 max pools become SAME pools (identical windows for these sizes), LRN is lowered to elementwise
ops (see `lrn`), batch norm (torchvision variant) is folded into the convolutions, and the
7x7 average pool over the 7x7 map is a MEAN: in int8, AVERAGE_POOL_2D must keep its input's scale (the
0-65 range of inception 5b), MEAN gets its own, about 4x finer, for the 1024 features the classifier reads.
Every conversion is then checked against the ONNX model in LiteRT, so a mistake here cannot ship.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edge_runtime.kernel_coverage import LOWERED_LRN_MARK
from export.lrn import LRN
from export.model import GoogLeNet, Inception
from export.preprocess import Preprocess
from export.torchvision_variant import BasicConv2d, TorchvisionGoogLeNet, TorchvisionInception


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _conv_params(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> tuple[np.ndarray, np.ndarray]:
    """OIHW weights -> HWIO, with an eval-mode batch norm folded in."""
    weight = _np(conv.weight)
    bias = _np(conv.bias) if conv.bias is not None else np.zeros(weight.shape[0], np.float32)
    if bn is not None:
        scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - _np(bn.running_mean)) * scale + _np(bn.bias)
    return weight.transpose(2, 3, 1, 0).copy(), bias


class TFGoogLeNet:
    """A callable of NHWC float32 images -> logits, built from a reference or torchvision GoogLeNet."""

    def __init__(self, model: nn.Module, global_mean: bool = True) -> None:
        import tensorflow as tf

        self.tf = tf
        self.torchvision = isinstance(model, TorchvisionGoogLeNet)
        if not isinstance(model, GoogLeNet | TorchvisionGoogLeNet):
            raise TypeError(f"no TensorFlow port for {type(model).__name__}")
        self.model = model.eval()
        self.global_mean = global_mean  # False: the reference net's 7x7 pool as AVERAGE_POOL_2D (for comparisons)
        self._consts: dict[str, Any] = {}
        # name -> value subtracted from that layer's bias (int8 weight-rounding correction, quantize.tflite_int8)
        self.bias_shift: dict[str, np.ndarray] = {}
        # while recording (eager calls only): name -> [kernel, sum of inputs per channel, count of input positions]
        self.recorded: dict[str, list] | None = None

    def record_layer_inputs(self, body, batches) -> dict[str, list]:
        """Run `body` eagerly on `batches`; per conv/FC layer: its float kernel and mean input per channel."""
        self.recorded, self._consts = {}, {}
        try:
            for batch in batches:
                body(self.tf.constant(batch))
            return {name: [kernel, total / count] for name, (kernel, total, count) in self.recorded.items()}
        finally:
            self.recorded, self._consts = None, {}  # constants are made again, with the bias shifts

    def _record(self, name: str, kernel: np.ndarray, x) -> None:
        if self.recorded is None:
            return
        total = self.tf.reduce_sum(x, axis=list(range(len(x.shape) - 1))).numpy().astype(np.float64)
        count = int(np.prod(x.shape[:-1]))
        if name in self.recorded:
            self.recorded[name][1] += total
            self.recorded[name][2] += count
        else:
            self.recorded[name] = [kernel, total, count]

    def _bias(self, name: str, bias: np.ndarray) -> np.ndarray:
        return (bias - self.bias_shift[name]).astype(np.float32) if name in self.bias_shift else bias

    def _const(self, key: str, value: np.ndarray):
        if key not in self._consts:
            self._consts[key] = self.tf.constant(value)
        return self._consts[key]

    # -- building blocks ---------------------------------------------------------------------------------
    def conv(self, x, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, relu: bool = True):
        tf = self.tf
        weight, bias = _conv_params(conv, bn)
        self._record(name, weight, x)
        bias = self._bias(name, bias)
        stride, pad, kernel = conv.stride[0], conv.padding[0], conv.kernel_size[0]
        if stride == 1 and pad == kernel // 2:
            padding: Any = "SAME"
        else:
            padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
        y = tf.nn.conv2d(x, self._const(f"{name}/w", weight), stride, padding)
        y = tf.nn.bias_add(y, self._const(f"{name}/b", bias))
        return tf.nn.relu(y) if relu else y

    def max_pool(self, x, pool: nn.MaxPool2d):
        kernel, stride, pad = pool.kernel_size, pool.stride, pool.padding
        if pad == kernel // 2 and stride == 1:
            return self.tf.nn.max_pool2d(x, kernel, 1, "SAME")
        if pad == 0 and pool.ceil_mode:
            # ceil mode = the trailing partial window is kept; SAME pads only at the end for these sizes
            return self.tf.nn.max_pool2d(x, kernel, stride, "SAME")
        return self.tf.nn.max_pool2d(x, kernel, stride, "VALID")

    def lrn(self, x, name: str, lrn: LRN):
        """LRN written in ops XNNPACK runs: LiteRT's LOCAL_RESPONSE_NORMALIZATION is a scalar kernel outside the
        delegate (9.1 ms for norm2 alone on a Xeon core, at any thread count; 2.3 ms lowered, 1.2 ms on two
        threads). As in `export.onnx_lrn`: the window sum over channels is a 1x1 convolution with a band of
        alpha/size (faster and lighter on memory than pad + shifted slices here, docs/int8-speed.md), then
        y = x / (k + sum)^0.75 as two square roots. Every op is named `<name>/lrn_<part>` (`LOWERED_LRN_MARK`):
        the int8 recipe keeps them in float and the counters skip them.
        """
        tf = self.tf
        if lrn.beta != 0.75:  # TensorFlow divides alpha by nothing; PyTorch/Caffe divide it by the window size
            return tf.nn.local_response_normalization(
                x, depth_radius=lrn.size // 2, bias=lrn.k, alpha=lrn.alpha / lrn.size, beta=lrn.beta
            )
        part = f"{name}{LOWERED_LRN_MARK}"
        # output channel c sums input channels c - size//2 .. c + (size-1)//2 (PyTorch's window, zero-padded)
        source, target = np.meshgrid(np.arange(x.shape[-1]), np.arange(x.shape[-1]), indexing="ij")
        inside = (source >= target - lrn.size // 2) & (source <= target + (lrn.size - 1) // 2)
        band = inside.astype(np.float32) * np.float32(lrn.alpha / lrn.size)  # [in, out]
        square = tf.math.multiply(x, x, name=f"{part}square")
        window = tf.nn.conv2d(square, self._const(f"{part}band", band[None, None]), 1, "VALID", name=f"{part}band")
        root = tf.math.sqrt(tf.math.add(window, np.float32(lrn.k), name=f"{part}base"), name=f"{part}sqrt")
        half_way = tf.math.divide(x, root, name=f"{part}div")
        return tf.math.divide(half_way, tf.math.sqrt(root, name=f"{part}sqrt4"), name=f"{part}out")

    def inception(self, x, name: str, block: nn.Module):
        if isinstance(block, Inception):
            b1 = self.conv(x, f"{name}.b1", block.branch1.conv)
            b2 = self.conv(self.conv(x, f"{name}.b2.0", block.branch2[0].conv), f"{name}.b2.1", block.branch2[1].conv)
            b3 = self.conv(self.conv(x, f"{name}.b3.0", block.branch3[0].conv), f"{name}.b3.1", block.branch3[1].conv)
            b4 = self.conv(self.max_pool(x, block.branch4[0]), f"{name}.b4", block.branch4[1].conv)
        else:
            assert isinstance(block, TorchvisionInception)
            b1 = self.basic(x, f"{name}.b1", block.branch1)
            b2 = self.basic(self.basic(x, f"{name}.b2.0", block.branch2[0]), f"{name}.b2.1", block.branch2[1])
            b3 = self.basic(self.basic(x, f"{name}.b3.0", block.branch3[0]), f"{name}.b3.1", block.branch3[1])
            b4 = self.basic(self.max_pool(x, block.branch4[0]), f"{name}.b4", block.branch4[1])
        return self.tf.concat([b1, b2, b3, b4], axis=-1)

    def basic(self, x, name: str, module: BasicConv2d):
        return self.conv(x, name, module.conv, module.bn)

    def classifier(self, x, fc: nn.Linear):
        tf = self.tf
        x = tf.reshape(x, [-1, fc.in_features])
        weight = _np(fc.weight).T.copy()
        self._record("fc", weight, x)
        return tf.matmul(x, self._const("fc/w", weight)) + self._const("fc/b", self._bias("fc", _np(fc.bias)))

    # -- the network ---------------------------------------------------------------------------------------
    def __call__(self, x):
        m = self.model
        tf = self.tf
        blocks = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
        if not self.torchvision:
            x = self.lrn(self.max_pool(self.conv(x, "conv1", m.conv1.conv), m.pool1), "norm1", m.norm1)
            x = self.conv(self.conv(x, "conv2_reduce", m.conv2_reduce.conv), "conv2", m.conv2.conv)
            x = self.max_pool(self.lrn(x, "norm2", m.norm2), m.pool2)
            pools = {"3b": m.pool3, "4e": m.pool4}
        else:
            if m.transform_input:
                scale = np.array([0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5], np.float32)
                shift = np.array([(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5], np.float32)
                x = x * self._const("transform/scale", scale) + self._const("transform/shift", shift)
            x = self.max_pool(self.basic(x, "conv1", m.conv1), m.maxpool1)
            x = self.max_pool(self.basic(self.basic(x, "conv2", m.conv2), "conv3", m.conv3), m.maxpool2)
            pools = {"3b": m.maxpool3, "4e": m.maxpool4}
        for name in blocks:
            x = self.inception(x, f"inception{name}", getattr(m, f"inception{name}"))
            if name in pools:
                x = self.max_pool(x, pools[name])
        if self.torchvision or (self.global_mean and x.shape[1] == x.shape[2] == m.avgpool.kernel_size):
            x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # a global average pool (see the module doc)
        else:
            x = tf.nn.avg_pool2d(x, m.avgpool.kernel_size, 1, "VALID")
        return self.classifier(x, m.fc)


def raw_pixel_preprocess(preprocess: Preprocess) -> Preprocess:
    """What a camera frame is after resize and crop only: RGB, 0-255, NHWC (the uint8-input model's input)."""
    return Preprocess(
        color="RGB",
        scale=1.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize=preprocess.resize,
        resize_mode=preprocess.resize_mode,
        crop=preprocess.crop,
        layout="NHWC",
        interpolation=preprocess.interpolation,
    )


def with_preprocessing(net: TFGoogLeNet, preprocess: Preprocess):
    """Wrap `net` so it takes raw RGB 0-255 pixels and applies `preprocess`'s colour/scale/mean/std itself.

    The channel swap is a gather: `tf.reverse` is miscompiled in full-integer models (measured here:
    top-1 66% instead of 80%).
    """
    tf = net.tf
    order = [2, 1, 0] if preprocess.color == "BGR" else [0, 1, 2]
    mean = np.asarray(preprocess.mean, np.float32)
    inv_std = 1.0 / np.asarray(preprocess.std, np.float32)

    def wrapped(pixels):
        x = tf.gather(pixels, order, axis=3) if order != [0, 1, 2] else pixels
        x = (x * np.float32(preprocess.scale) - mean) * inv_std
        return net(x)

    return wrapped
