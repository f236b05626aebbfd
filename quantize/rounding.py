"""Weight rounding onto the int8 grid that ONNX Runtime and TFLite both compute, better than round-to-nearest.

Both backends quantize a weight tensor per output channel, symmetric: scale = max|w| / 127, q = round(w / scale).
A weight that already lies on that grid (w = q * scale, with the channel's largest element left untouched so
the scale they recompute is the same) comes out of their round-to-nearest as exactly q. So the rounding can be
chosen once, here, on the PyTorch reference and the calibration images, and both exporters inherit it by
exporting the pre-rounded float weights.

Two ways of choosing it, both layer by layer with the layer's *float* inputs (the cheap variant):
- `adaround`: learned rounding (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
  Quantization"): a rectified-sigmoid h(V) in [0, 1] per weight, Adam on the layer's output error plus a
  regularizer annealed from beta 20 to 2 that pushes every h to 0 or 1.
- `gptq`: sequential rounding with error feedback (Frantar et al. 2023, the OBQ/GPTQ solver): each input
  column is rounded in turn and the error it leaves is spread over the columns not yet rounded, through the
  inverse of the inputs' second moment.

Both only need the layer's input second moment H = sum over all output positions of x x^T (x the input patch),
so the calibration images run through the network once: the output error of a weight error E (out x in) is
trace(E H E^T) / N. Layers seen at many more positions than they have inputs (conv2: 544 per input) estimate H
from a seeded sample of `positions_per_input` positions per input, scaled back to the full count (the cost of
that shortcut is measured in docs/int8-fidelity.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INT8_MAX = 127  # symmetric int8 weights, as ONNX Runtime (WeightSymmetric) and TFLite store them
# ONNX Runtime's `reduce_range` (the x86-avx2 preset: 7-bit weights so AVX2's u8s8 pairs cannot saturate)
REDUCED_INT8_MAX = 64
ROUNDING_METHODS = ("nearest", "adaround", "gptq")


@dataclass(frozen=True)
class RoundingSettings:
    """How `learned_rounding` rounds; the defaults are the measured 2-core budget (studies/rounding_study.py)."""

    method: str = "gptq"
    iterations: int = 300  # AdaRound: Adam steps per layer
    learning_rate: float = 1e-2  # AdaRound
    reg_weight: float = 0.01  # AdaRound lambda, on the output error normalised by round-to-nearest's
    # GPTQ: fraction of mean(diag H) added to H's diagonal; None = 0.01 + inputs/positions (capped at 1), since
    # layers seen at few positions (inception 5, the classifier) overfit their fit images with a small one
    damping: float | None = None
    act_order: bool = True  # GPTQ: round the columns with the largest input energy first
    seed: int = 0
    # H from at most this many output positions per input (a seeded sample); None = every position
    positions_per_input: int | None = 64
    qmax: int = INT8_MAX  # the grid's largest integer: REDUCED_INT8_MAX for ONNX Runtime's reduce_range

    def to_dict(self) -> dict:
        common = {"method": self.method, "grid": f"per-channel symmetric int8, scale = max|w|/{self.qmax}"}
        if self.method == "adaround":
            return {**common, "iterations": self.iterations, "learning_rate": self.learning_rate,
                    "reg_weight": self.reg_weight, "beta": [20, 2], "seed": self.seed}  # fmt: skip
        if self.method == "gptq":
            return {**common, "damping": "auto" if self.damping is None else self.damping, "act_order": self.act_order,
                    "positions_per_input": self.positions_per_input}  # fmt: skip
        return common


def grid_scale(weight: torch.Tensor, qmax: int = INT8_MAX) -> torch.Tensor:
    """Per output channel (row of the [out, in] matrix) scale = max|w| / qmax, as both backends compute it (qmax
    127; 64 for ONNX Runtime's reduce_range, whose symmetric int8 grid is -64..64)."""
    scale = weight.abs().amax(dim=1, keepdim=True) / qmax
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def pinned(weight: torch.Tensor) -> torch.Tensor:
    """Mask of each row's largest-magnitude element: it must stay at +-qmax so the recomputed scale is the same."""
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[torch.arange(weight.shape[0]), weight.abs().argmax(dim=1)] = True
    return mask


def to_float(weight: torch.Tensor, ints: torch.Tensor, qmax: int = INT8_MAX) -> torch.Tensor:
    """The float weights that the backends' round-to-nearest turns into exactly `ints`: q * scale, float32,
    with every +-qmax element set to the row's original max|w| (so max|w|, hence the scale, is unchanged)."""
    weight = weight.float()
    scale = grid_scale(weight, qmax)
    out = ints.float() * scale
    top = weight.abs().amax(dim=1, keepdim=True).expand_as(out)
    return torch.where(ints.abs() == qmax, torch.sign(ints.float()) * top, out)


def nearest_ints(weight: torch.Tensor, qmax: int = INT8_MAX) -> torch.Tensor:
    return torch.clamp(torch.round(weight / grid_scale(weight, qmax)), -qmax, qmax)


def output_error(
    weight: torch.Tensor, ints: torch.Tensor, hessian: torch.Tensor, count: int, qmax: int = INT8_MAX
) -> float:
    """Mean over output positions of the summed squared output error: trace(E H E^T) / N (E = w~ - w)."""
    return weights_output_error(weight, to_float(weight, ints, qmax), hessian, count)


def weights_output_error(weight: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor, count: int) -> float:
    """`output_error` of any new weights [out, in] (not only the int8 grid's)."""
    error = (new - weight).double()
    return float(((error @ hessian.double()) * error).sum() / max(count, 1))


def _pin_values(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.sign(weight) * qmax


def auto_damping(columns: int, count: int) -> float:
    """Measured on held-out calibration images (layers of 3a-5b and the classifier): the damping that
    generalises best grows with the ratio of inputs to fitted positions."""
    return min(1.0, 0.01 + columns / max(count, 1))


def gptq_order(hessian: torch.Tensor, damping: float, act_order: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's column order (largest input energy first with `act_order`) and the upper Cholesky factor of the
    damped inverse H in that order: what `gptq_columns` needs."""
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    order = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(h.shape[0])
    h = h[order][:, order]
    h += damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return order, torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq_columns(w: torch.Tensor, hinv: torch.Tensor, choose: Callable[[int, np.ndarray], np.ndarray]) -> torch.Tensor:
    """Sequential rounding with error feedback (the OBQ/GPTQ solver) of `w` [out, in], float64, its columns in
    `gptq_order` (updated in place): column j becomes `choose(j, values)`, any nearest-level rounding, and the
    error it leaves is spread over the columns not yet rounded. Returns the chosen values, in that order."""
    chosen = torch.zeros_like(w)
    block = 128
    hinv_np = hinv.numpy()
    # the column loop in numpy, columns as rows: the same float64 operations as torch's, a third of the overhead
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        chunk = w[:, start:end].T.numpy().copy()  # [columns, out]
        errors = np.zeros_like(chunk)
        for j in range(end - start):
            col = chunk[j]
            q = choose(start + j, col)
            chosen[:, start + j] = torch.from_numpy(q)
            err = (col - q) / hinv_np[start + j, start + j]
            chunk[j:] -= hinv_np[start + j, start + j : end][:, None] * err[None, :]
            errors[j] = err
        w[:, end:] -= torch.from_numpy(errors.T.copy()) @ hinv[start:end, end:]
    return chosen


def gptq(
    weight: torch.Tensor, hessian: torch.Tensor, damping: float = 0.01, act_order: bool = True, qmax: int = INT8_MAX
) -> torch.Tensor:
    """Integer weights [out, in] by sequential rounding with error feedback (GPTQ), on a fixed grid."""
    w = (weight.double() / grid_scale(weight, qmax).double()).clone()  # in grid units
    order, hinv = gptq_order(hessian, damping, act_order)
    pin = pinned(weight)[:, order].T.numpy().copy()
    pin_value = _pin_values(weight, qmax).double()[:, order].T.numpy().copy()

    def nearest_int(j: int, col: np.ndarray) -> np.ndarray:
        return np.where(pin[j], pin_value[j], np.clip(np.round(col), -qmax, qmax))

    ints = gptq_columns(w[:, order], hinv, nearest_int)
    return ints[:, torch.argsort(order)].float()


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * 1.2 - 0.1, 0, 1)  # zeta 1.1, gamma -0.1 (the paper's)


def adaround(
    weight: torch.Tensor, hessian: torch.Tensor, count: int, settings: RoundingSettings = RoundingSettings()
) -> torch.Tensor:
    """Integer weights [out, in] learned with AdaRound on the layer's (pre-activation) output error."""
    qmax = settings.qmax
    scale = grid_scale(weight, qmax)
    x = weight / scale
    floor = torch.floor(x)
    rest = (x - floor).clamp(0.01, 0.99)
    v = (-torch.log(1.2 / (rest + 0.1) - 1)).requires_grad_(True)  # h(V) = rest at the start
    pin = pinned(weight)
    pin_ints = _pin_values(weight, qmax)
    m = hessian.float() / max(count, 1)
    reference = max(output_error(weight, nearest_ints(weight, qmax), hessian, count, qmax), 1e-30)
    optimizer = torch.optim.Adam([v], lr=settings.learning_rate)
    warmup = int(0.2 * settings.iterations)
    for step in range(settings.iterations):
        h = _rectified_sigmoid(v)
        q = torch.where(pin, pin_ints, torch.clamp(floor + h, -qmax, qmax))
        error = (q - x) * scale
        loss = ((error @ m) * error).sum() / reference
        if step >= warmup:
            progress = (step - warmup) / max(settings.iterations - warmup, 1)
            beta = 2 + (20 - 2) * 0.5 * (1 + math.cos(math.pi * progress))  # 20 -> 2
            loss = loss + settings.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel() * 100
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        ints = torch.clamp(floor + (_rectified_sigmoid(v) >= 0.5).float(), -qmax, qmax)
        return torch.where(pin, pin_ints, ints)


def quantized_layers(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Conv and linear layers by module path, minus `skip` (e.g. the float stem's conv1)."""
    skipped = set(skip)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and name not in skipped
    }


_GEOMETRY = ("kernel_size", "stride", "padding", "dilation")


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows = output positions, columns = the layer's input patch in the order of weight.reshape(out, -1)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1) and tuple(module.padding) == (0, 0):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # a 1x1 conv's patch is one pixel: no im2col copy
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _sampled_patches(module: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`_patches(module, x)[rows]` without building every patch: a sampled 3x3 or 5x5 conv reads ~1/10 of its
    output positions, so gathering just those avoids an im2col of the whole batch (same values, same order)."""
    if isinstance(module, nn.Linear) or tuple(module.kernel_size) == (1, 1):
        return _patches(module, x)[rows]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (tuple(getattr(module, a)) for a in _GEOMETRY)
    channels = x.shape[1]
    out_h, out_w = _output_size(module, x)
    image, position = rows // (out_h * out_w), rows % (out_h * out_w)
    ys = (position // out_w)[:, None] * sh + torch.arange(kh)[None, :] * dh
    xs = (position % out_w)[:, None] * sw + torch.arange(kw)[None, :] * dw
    # channels-last, each (image, y, x) is one row of `channels` floats: a patch is kh * kw row copies
    padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()
    flat = (image[:, None, None] * padded.shape[1] + ys[:, :, None]) * padded.shape[2] + xs[:, None, :]
    picked = padded.reshape(-1, channels)[flat.reshape(-1)].reshape(len(rows), kh * kw, channels)
    return picked.transpose(1, 2).reshape(len(rows), channels * kh * kw)  # unfold's order: channel, row, column


def _output_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """The conv's output height and width for input `x` (NCHW), as F.unfold computes them."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (tuple(getattr(conv, a)) for a in _GEOMETRY)
    return (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _output_positions(module: nn.Module, x: torch.Tensor) -> int:
    """Rows `_patches` would return: output positions times images."""
    if isinstance(module, nn.Linear):
        return x.numel() // x.shape[-1]
    return x.shape[0] * math.prod(_output_size(module, x))


def _gram(rows: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """rows^T rows, float64, computing only the blocks on and above the diagonal (5/8 of the products at 4)."""
    columns = rows.shape[1]
    if columns < 256:
        return (rows.T @ rows).double()
    edges = [round(i * columns / blocks) for i in range(blocks + 1)]
    gram = torch.empty(columns, columns, dtype=torch.float64)
    for i in range(blocks):
        a = rows[:, edges[i] : edges[i + 1]]
        for j in range(i, blocks):
            block = (a.T @ rows[:, edges[j] : edges[j + 1]]).double()
            gram[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = block
            gram[edges[j] : edges[j + 1], edges[i] : edges[i + 1]] = block.T
    return gram


@torch.no_grad()
def layer_hessians(
    model: nn.Module,
    images: np.ndarray,
    layers: dict[str, nn.Module],
    batch_size: int = 10,
    positions_per_input: int | None = None,
    seed: int = 0,
) -> dict[str, tuple[torch.Tensor, int]]:
    """Per layer, sum of x x^T over every output position of every image (float64), and the position count.
    With `positions_per_input`, a layer seen at more positions than that per input column sums a seeded
    sample of them (the same share of every batch), scaled up to estimate the full sum."""
    stats: dict[str, list] = {}
    generator = torch.Generator().manual_seed(seed)
    # an inception block's 1x1 convs share their input: its gram is computed once per batch (the entry holds the
    # input, so no later tensor of the batch can reuse its address and match the key)
    batch_grams: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def gram_of(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        x = x.float()
        count = _output_positions(module, x)
        share = 1.0
        if positions_per_input:
            columns = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1] * math.prod(module.kernel_size)
            share = min(1.0, positions_per_input * columns * x.shape[0] / (count * len(images)))
        if share >= 1.0:
            return _gram(_patches(module, x)), count
        keep = max(1, round(share * count))
        sample = torch.randperm(count, generator=generator)[:keep]
        return _gram(_sampled_patches(module, x, sample)) * (count / keep), count

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            geometry = [getattr(module, a, None) for a in _GEOMETRY]
            key = (x.data_ptr(), tuple(x.shape), str(geometry))
            if key not in batch_grams:
                batch_grams[key] = (*gram_of(module, x), x)
            gram, count, _ = batch_grams[key]
            if name in stats:
                stats[name][0] += gram
                stats[name][1] += count
            else:
                stats[name] = [gram.clone(), count]  # the cached gram may be shared

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in layers.items()]
    try:
        model.eval()
        # channels-last: PyTorch's CPU max pools and convolutions run ~1.6x faster (the forward is a third of this)
        model.to(memory_format=torch.channels_last)
        for start in range(0, len(images), batch_size):
            batch_grams.clear()
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).float()
            model(batch.contiguous(memory_format=torch.channels_last))
    finally:
        model.to(memory_format=torch.contiguous_format)
        for handle in handles:
            handle.remove()
    return {name: (gram, count) for name, (gram, count) in stats.items()}


def round_layer(weight: torch.Tensor, hessian: torch.Tensor, count: int, settings: RoundingSettings) -> torch.Tensor:
    """Integer weights [out, in] of one layer by `settings.method`."""
    if settings.method == "nearest":
        return nearest_ints(weight, settings.qmax)
    if settings.method == "gptq":
        damping = auto_damping(weight.shape[1], count) if settings.damping is None else settings.damping
        return gptq(weight, hessian, damping, settings.act_order, settings.qmax)
    if settings.method == "adaround":
        return adaround(weight, hessian, count, settings)
    raise ValueError(f"unknown rounding method {settings.method!r} (choose from {', '.join(ROUNDING_METHODS)})")


@torch.no_grad()
def learned_rounding(
    model: nn.Module, images: np.ndarray, settings: RoundingSettings, skip: Iterable[str] = ()
) -> dict[str, dict]:
    """Round every conv/linear weight of `model` (not `skip`) in place onto the int8 grid; per layer, the
    output error (fitted images) of round-to-nearest and of the chosen rounding."""
    torch.manual_seed(settings.seed)
    layers = quantized_layers(model, skip)
    stats = layer_hessians(model, images, layers, positions_per_input=settings.positions_per_input, seed=settings.seed)
    report = {}
    for name, module in layers.items():
        weight = module.weight.detach().float().reshape(module.weight.shape[0], -1)
        hessian, count = stats[name]
        with torch.enable_grad():
            ints = round_layer(weight, hessian, count, settings)
        report[name] = {
            "nearest_error": output_error(weight, nearest_ints(weight, settings.qmax), hessian, count, settings.qmax),
            "error": output_error(weight, ints, hessian, count, settings.qmax),
        }
        module.weight.copy_(to_float(weight, ints, settings.qmax).reshape(module.weight.shape))
    return report


def rounded_copy(
    model: nn.Module, images: np.ndarray, settings: RoundingSettings, skip: Iterable[str] = ()
) -> tuple[nn.Module, dict]:
    """A copy of `model` whose quantized layers hold on-grid weights, and the sidecar's record of how.

    The last result is kept: the ONNX and TFLite exporters of one run fit the same rounding only once."""
    import copy
    import hashlib

    key = (id(model), hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest(), settings,
           tuple(skip))  # fmt: skip
    if _LAST.get("key") == key:
        return _LAST["value"]
    rounded = copy.deepcopy(model).eval()
    layers = learned_rounding(rounded, images, settings, skip) if settings.method != "nearest" else {}
    ratios = [v["error"] / v["nearest_error"] for v in layers.values() if v["nearest_error"] > 0]
    record = {
        **settings.to_dict(),
        "fitted_images": len(images),
        "layers": sorted(layers),
        "kept_float": sorted(skip),
        "output_error_vs_nearest": round(float(np.mean(ratios)), 4) if ratios else 1.0,
    }
    _LAST.update(key=key, value=(rounded, record), model=model)  # holding `model` keeps its id unique
    return rounded, record


_LAST: dict = {}
