"""Parameters and multiply-adds (MACs) of GoogLeNet: the report every counter fills (torch here, ONNX in
`export.inspect_onnx`, `.tflite` in `export.inspect_tflite`) and its comparison with the paper.

Rows are grouped like the paper's Table 1 so a deployed model can be checked against the network the
paper describes. One fused multiply-add is one MAC, every count is per image, and only convolutions
and fully connected layers cost MACs (ReLU, pooling, LRN, concat and a folded batch norm are free).

For 224x224 input the reference GoogLeNet has 6,998,552 parameters and 1,582,671,872 MACs (1.58 G).
The paper's first-conv row (2.7K params, 34M ops) disagrees with its own architecture: 7x7x3x64 on a
112x112 output is 9.4K weights and 118M MACs; its inception rows match (3a: 128.05M) except 5a.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from torch import nn

BLOCK_ORDER = (
    "conv1", "conv2",
    "inception_3a", "inception_3b",
    "inception_4a", "inception_4b", "inception_4c", "inception_4d", "inception_4e",
    "inception_5a", "inception_5b",
    "linear",
)  # fmt: skip
LINEAR_OPS = frozenset({"Linear", "Gemm", "QGemm", "MatMul", "QLinearMatMul", "MatMulInteger"})


@dataclass(frozen=True)
class LayerCount:
    """One counted layer; `output_shape` is for one image (leading dim 1)."""

    name: str
    op: str
    params: int
    macs: int
    output_shape: tuple[int, ...]
    block: str


@dataclass(frozen=True)
class BlockCount:
    block: str
    layers: int
    params: int
    macs: int


@dataclass
class CountReport:
    """Counted layers in execution order. `model_params` is every parameter of a torch model (aux heads
    that do not run in eval mode included); ONNX reports leave it None as initializers also hold
    shapes and quantization scales."""

    layers: list[LayerCount]
    source: str = ""
    model_params: int | None = None

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def by_block(self) -> dict[str, BlockCount]:
        """Table 1 rows in the paper's order, then any other groups (`aux`, `other`) as first met."""
        totals: dict[str, list[int]] = {}
        for layer in self.layers:
            entry = totals.setdefault(layer.block, [0, 0, 0])
            entry[0] += 1
            entry[1] += layer.params
            entry[2] += layer.macs
        order = [b for b in BLOCK_ORDER if b in totals] + [b for b in totals if b not in BLOCK_ORDER]
        return {b: BlockCount(b, *totals[b]) for b in order}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "params": self.params,
            "macs": self.macs,
            "model_params": self.model_params,
            "blocks": [asdict(block) for block in self.by_block().values()],
            "layers": [{**asdict(layer), "output_shape": list(layer.output_shape)} for layer in self.layers],
        }


_SEP_BEFORE, _SEP_AFTER = r"(?:^|[^a-z0-9])", r"(?:[^a-z0-9]|$)"
_BLOCK_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(_SEP_BEFORE + pattern + _SEP_AFTER), block)
    for pattern, block in (
        (r"(?:aux\d*|loss[12])", "aux"),
        (r"inception_?(\d[a-z])", "inception_{}"),
        (r"conv1", "conv1"),
        (r"conv[23]", "conv2"),  # torchvision calls the 1x1 reduce conv2 and the 3x3 conv3
        (r"(?:fc|classifier|loss3|logits)", "linear"),
    )
)


def block_of(name: str, op: str = "") -> str:
    """Table 1 row of a layer, from torch paths (`inception3a.branch1.conv`), Caffe names
    (`inception_3a/1x1`) or flattened ones (`p_inception3a_branch1_conv_weight`)."""
    lowered = name.lower()
    for pattern, block in _BLOCK_RULES:
        match = pattern.search(lowered)
        if match:
            return block.format(*match.groups())
    return "linear" if op in LINEAR_OPS else "other"


# ----------------------------------------------------------------------------------------- torch


def count_torch(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> CountReport:
    """Run one zero batch through `model` in eval mode and count every Conv, Linear and BatchNorm call.

    Hooks see the real shapes, so nothing about the architecture is assumed. The model's training
    flag is restored afterwards.
    """
    import torch
    from torch import nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    batch = int(input_shape[0])
    rows: dict[str, LayerCount] = {}

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if isinstance(module, convs):
            per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
            macs = output.numel() // batch * per_output
        elif isinstance(module, transposed):
            per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
            macs = inputs[0].numel() // batch * per_input
        elif isinstance(module, nn.Linear):
            macs = output.numel() // batch * module.in_features
        else:  # batch norm folds into the convolution before it at deployment
            macs = 0
        if name in rows:  # a module called twice costs twice but owns its parameters once
            rows[name] = replace(rows[name], macs=rows[name].macs + macs)
            return
        op = type(module).__name__
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows[name] = LayerCount(name, op, params, macs, (1, *output.shape[1:]), block_of(name, op))

    first = next(model.parameters(), None)
    floating = first is not None and first.is_floating_point()
    x = torch.zeros(
        tuple(input_shape),
        dtype=first.dtype if floating else None,
        device=first.device if first is not None else None,
    )
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: record(name, m, i, o))
        for name, module in model.named_modules()
        if isinstance(module, (*convs, *transposed, nn.Linear, *norms))
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    model_params = sum(p.numel() for p in model.parameters())
    return CountReport(list(rows.values()), type(model).__name__, model_params)


# ----------------------------------------------------------------------------------------- paper


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 1 as printed: params in K, ops (multiply-adds) in M, both rounded by the paper."""

    block: str
    label: str
    params_k: float
    ops_m: float

    @property
    def params(self) -> int:
        return round(self.params_k * 1000)

    @property
    def ops(self) -> int:
        return round(self.ops_m * 1_000_000)


PAPER_TABLE1: dict[str, PaperRow] = {
    row.block: row
    for row in (
        # The paper's own stem row is inconsistent: 7x7x3x64 weights are 9.4K and on a 112x112 output
        # cost 118M MACs, not 2.7K / 34M; every count here disagrees with that row by ~3.5x.
        PaperRow("conv1", "convolution 7x7/2", 2.7, 34),
        PaperRow("conv2", "convolution 3x3/1 (reduce 64)", 112, 360),
        PaperRow("inception_3a", "inception (3a)", 159, 128),
        PaperRow("inception_3b", "inception (3b)", 380, 304),
        PaperRow("inception_4a", "inception (4a)", 364, 73),
        PaperRow("inception_4b", "inception (4b)", 437, 88),
        PaperRow("inception_4c", "inception (4c)", 463, 100),
        PaperRow("inception_4d", "inception (4d)", 580, 119),
        PaperRow("inception_4e", "inception (4e)", 840, 170),
        PaperRow("inception_5a", "inception (5a)", 1072, 54),  # fits #5x5 reduce 48, printed as 32
        PaperRow("inception_5b", "inception (5b)", 1388, 71),
        PaperRow("linear", "linear", 1000, 1),
    )
}


@dataclass(frozen=True)
class PaperComparison:
    block: str
    label: str
    params: int
    paper_params: int
    macs: int
    paper_ops: int
    ratio: float  # macs / paper_ops


def compare_with_paper(report: CountReport) -> list[PaperComparison]:
    """Every Table 1 row next to the measured block (zeros when the model has no such block).

    For the reference model the inception rows agree within 1% (3a: 128.05M vs 128M) except 5a:
    51.08M vs 54M (0.946). The paper's 5a ops and params fit a 5x5 reduce of 48 (54.24M), not the 32
    its own width column and the BVLC weights have. The stem row is off by 3.5x (see PAPER_TABLE1),
    which is why the measured total (1.583 G MACs at 224x224) exceeds the paper rows' sum (1.502 G).
    """
    blocks = report.by_block()
    rows = []
    for key, paper in PAPER_TABLE1.items():
        block = blocks.get(key, BlockCount(key, 0, 0, 0))
        ratio = block.macs / paper.ops if paper.ops else math.nan
        rows.append(PaperComparison(key, paper.label, block.params, paper.params, block.macs, paper.ops, ratio))
    return rows


# ----------------------------------------------------------------------------------------- table

_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def format_count(n: float, digits: int = 4) -> str:
    """`1586000000` -> `1.586 G`, `6998552` -> `6.999 M`: `digits` significant figures, SI unit."""
    for scale, unit in _UNITS:
        if abs(n) >= scale:
            value = n / scale
            decimals = max(0, digits - len(str(int(abs(value)))))
            return f"{value:.{decimals}f} {unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def render_table(report: CountReport, paper: bool = True, layers: bool = False) -> Table:
    """Per Table 1 row (with the paper's numbers beside ours), or per layer when `layers`."""
    title = f"{report.source}: {format_count(report.params)} params, {format_count(report.macs)} MACs/image"
    if layers:
        table = Table(title=title)
        for column in ("layer", "op", "block", "output"):
            table.add_column(column, no_wrap=True)
        table.add_column("params", justify="right", no_wrap=True)
        table.add_column("MACs", justify="right", no_wrap=True)
        for layer in report.layers:
            shape = "x".join(map(str, layer.output_shape[1:]))
            params, macs = f"{layer.params:,}", format_count(layer.macs)
            table.add_row(layer.name, layer.op, layer.block, shape, params, macs)
        table.add_section()
        table.add_row("total", "", "", "", f"{report.params:,}", format_count(report.macs))
        return table

    table = Table(title=title)
    table.add_column("block", no_wrap=True)
    table.add_column("layers", justify="right")
    table.add_column("params", justify="right")
    if paper:
        table.add_column("paper", justify="right")
    table.add_column("MACs", justify="right")
    if paper:
        table.add_column("paper ops", justify="right")
        table.add_column("ratio", justify="right")
    for block in report.by_block().values():
        row = [block.block, str(block.layers), f"{block.params:,}"]
        ref = PAPER_TABLE1.get(block.block)
        if paper:
            row.append(f"{ref.params_k:g}K" if ref else "-")
        row.append(format_count(block.macs))
        if paper:
            row += [f"{ref.ops_m:g}M", f"{block.macs / ref.ops:.2f}"] if ref else ["-", "-"]
        table.add_row(*row)
    table.add_section()
    total = ["total", str(len(report.layers)), f"{report.params:,}"]
    if paper:
        total.append(format_count(sum(r.params for r in PAPER_TABLE1.values())))
    total.append(format_count(report.macs))
    if paper:
        paper_ops = sum(r.ops for r in PAPER_TABLE1.values())
        total += [format_count(paper_ops), f"{report.macs / paper_ops:.2f}"]
    table.add_row(*total)
    return table
