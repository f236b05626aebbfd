"""Parameter and MAC counts: the torch model, its ONNX export (float, QDQ, QOperator), BVLC and the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from export import paths
from export.counting import (
    BLOCK_ORDER,
    PAPER_TABLE1,
    CountReport,
    block_of,
    compare_with_paper,
    count_torch,
    format_count,
    render_table,
)
from export.errors import ToolkitError
from export.inspect_onnx import count_onnx
from export.lrn import ONNX_TRANSLATIONS
from export.model import GoogLeNet, Inception

PROJECT = Path(__file__).resolve().parents[1]
REFERENCE_PARAMS = 6_998_552
REFERENCE_MACS = 1_582_671_872  # per 224x224 image
# Exact per-row (params, MACs) of the reference model, weights + biases.
REFERENCE_BLOCKS = {
    "conv1": (9_472, 118_013_952),
    "conv2": (114_944, 359_661_568),
    "inception_3a": (163_696, 128_049_152),
    "inception_3b": (388_736, 304_267_264),
    "inception_4a": (376_176, 73_608_192),
    "inception_4b": (449_160, 87_908_352),
    "inception_4c": (510_104, 99_850_240),
    "inception_4d": (605_376, 118_515_712),
    "inception_4e": (868_352, 169_996_288),
    "inception_5a": (1_043_456, 51_079_168),
    "inception_5b": (1_444_080, 70_697_984),
    "linear": (1_025_000, 1_024_000),
}


@pytest.fixture(scope="module")
def torch_report() -> CountReport:
    return count_torch(GoogLeNet())


@pytest.fixture(scope="module")
def reference_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference model exported the way the toolkit does it (random weights: counts ignore values)."""
    path = tmp_path_factory.mktemp("onnx") / "reference.onnx"
    program = torch.onnx.export(
        GoogLeNet().eval(),
        (torch.zeros(1, 3, 224, 224),),
        dynamo=True,
        custom_translation_table=ONNX_TRANSLATIONS,
        opset_version=18,
        external_data=False,
    )
    program.save(str(path), external_data=False)
    return path


def _block_numbers(report: CountReport) -> dict[str, tuple[int, int]]:
    return {name: (block.params, block.macs) for name, block in report.by_block().items()}


def _same_layers(report: CountReport, expected: CountReport) -> None:
    """Same layer names and numbers; order may differ (quantizers re-sort the graph)."""
    assert sorted((layer.name, layer.macs, layer.params) for layer in report.layers) == sorted(
        (layer.name, layer.macs, layer.params) for layer in expected.layers
    )


# ----------------------------------------------------------------------------------------- torch


def test_reference_totals(torch_report: CountReport) -> None:
    assert torch_report.params == REFERENCE_PARAMS
    assert torch_report.model_params == REFERENCE_PARAMS
    assert torch_report.macs == REFERENCE_MACS
    assert torch_report.macs == pytest.approx(1.586e9, rel=0.01)
    assert len(torch_report.layers) == 58  # 3 stem convs, 9 x 6 inception convs, fc


def test_reference_blocks_exact(torch_report: CountReport) -> None:
    assert list(torch_report.by_block()) == list(BLOCK_ORDER)
    assert _block_numbers(torch_report) == REFERENCE_BLOCKS


def test_inception_rows_match_paper(torch_report: CountReport) -> None:
    rows = {row.block: row for row in compare_with_paper(torch_report)}
    assert rows["inception_3a"].macs == 128_049_152  # the paper's 128M
    for block in BLOCK_ORDER[2:-1]:
        if block == "inception_5a":
            continue  # the paper's own 5a row is inconsistent with its widths, see below
        assert rows[block].ratio == pytest.approx(1.0, abs=0.05), block
    assert rows["conv2"].ratio == pytest.approx(1.0, abs=0.01)
    assert rows["linear"].macs == 1024 * 1000


def test_paper_5a_row_counts_a_5x5_reduce_of_48() -> None:
    """Table 1 prints #5x5 reduce 32 for 5a (so do the BVLC weights: 51.08M, 0.946 of the paper's 54M),
    but its 54M ops are what a reduce of 48 costs."""
    printed = count_torch(Inception(832, (256, 160, 320, 32, 128, 128)), (1, 832, 7, 7))
    assert printed.macs == REFERENCE_BLOCKS["inception_5a"][1]
    assert printed.macs / PAPER_TABLE1["inception_5a"].ops == pytest.approx(0.946, abs=0.001)
    implied = count_torch(Inception(832, (256, 160, 320, 48, 128, 128)), (1, 832, 7, 7))
    assert implied.macs == pytest.approx(PAPER_TABLE1["inception_5a"].ops, rel=0.01)


def test_paper_stem_row_is_inconsistent(torch_report: CountReport) -> None:
    conv1 = compare_with_paper(torch_report)[0]
    assert conv1.block == "conv1"
    assert conv1.macs == 7 * 7 * 3 * 64 * 112 * 112
    assert conv1.ratio == pytest.approx(3.47, abs=0.01)


def test_count_is_per_image_and_leaves_the_model_alone() -> None:
    model = GoogLeNet(aux_logits=True).train()
    report = count_torch(model, (2, 3, 224, 224))
    assert model.training
    assert report.macs == REFERENCE_MACS
    assert report.params == REFERENCE_PARAMS  # aux heads do not run in eval mode ...
    assert report.model_params > REFERENCE_PARAMS  # ... but they are the model's parameters


def test_torchvision_variant_groups_into_table1_rows() -> None:
    variant = pytest.importorskip("export.torchvision_variant")
    model = variant.TorchvisionGoogLeNet(aux_logits=False)
    report = count_torch(model)
    assert list(report.by_block()) == list(BLOCK_ORDER)
    assert report.params == report.model_params  # batch-norm weights and biases included
    norms = [layer for layer in report.layers if layer.op == "BatchNorm2d"]
    assert len(norms) == 57 and all(layer.macs == 0 for layer in norms)


# ------------------------------------------------------------------------------------------ ONNX


@pytest.mark.slow  # a full-model export (reference_onnx)
def test_onnx_export_counts_like_torch(reference_onnx: Path, torch_report: CountReport) -> None:
    report = count_onnx(reference_onnx)
    assert report.params == REFERENCE_PARAMS
    assert report.macs == REFERENCE_MACS
    _same_layers(report, torch_report)  # names are the torch module paths
    assert report.layers[0].output_shape == (1, 64, 112, 112)


@pytest.mark.slow  # a full-model export (reference_onnx)
def test_onnx_model_proto_with_symbolic_batch(reference_onnx: Path) -> None:
    model = onnx.load(reference_onnx)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    report = count_onnx(model)
    assert (report.params, report.macs) == (REFERENCE_PARAMS, REFERENCE_MACS)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # caller's copy untouched


@pytest.mark.slow  # a full-model export (reference_onnx)
def test_onnx_dynamic_spatial_size_is_a_toolkit_error(reference_onnx: Path) -> None:
    model = onnx.load(reference_onnx)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(ToolkitError, match="dynamic size"):
        count_onnx(model)


class _ZerosReader:
    """One calibration batch is enough: counts do not depend on the quantization ranges."""

    def __init__(self) -> None:
        self.batches = iter([{"x": np.zeros((1, 3, 224, 224), np.float32)}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.mark.slow  # a full-model export and quantization
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_int8_onnx_counts_like_float(fmt: str, reference_onnx: Path, torch_report: CountReport, tmp_path: Path) -> None:
    quantization = pytest.importorskip("onnxruntime.quantization")
    out = tmp_path / f"reference.{fmt}.onnx"
    quantization.quantize_static(
        str(reference_onnx),
        str(out),
        _ZerosReader(),
        quant_format=getattr(quantization.QuantFormat, fmt),
        per_channel=True,
    )
    ops = {node.op_type for node in onnx.load(out, load_external_data=False).graph.node}
    assert ("DequantizeLinear" in ops) if fmt == "QDQ" else ("QLinearConv" in ops and "QGemm" in ops)
    report = count_onnx(out)
    assert (report.params, report.macs) == (REFERENCE_PARAMS, REFERENCE_MACS)
    _same_layers(report, torch_report)


def _initializer(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


BN = ("weight", "bias", "running_mean", "running_var")


def test_integer_and_matmul_ops() -> None:
    """ConvInteger, ConvTranspose, batch norm, MatMul + Add bias, MatMulInteger, weight-first Gemm."""
    nodes = [
        helper.make_node("ConvInteger", ["x", "stem/W"], ["c1"], pads=[1, 1, 1, 1]),  # 8x3x3x3 -> 8x8x8
        helper.make_node("Cast", ["c1"], ["c1f"], to=TensorProto.FLOAT),
        helper.make_node("ConvTranspose", ["c1f", "up.weight", "up.bias"], ["c2"], strides=[2, 2]),  # 8->4
        helper.make_node("BatchNormalization", ["c2", *(f"norm.{n}" for n in BN)], ["c2n"]),
        helper.make_node("Flatten", ["c2n"], ["flat"]),  # 4x17x17 = 1156
        helper.make_node("MatMul", ["flat", "fc1_weight"], ["m1"]),
        helper.make_node("Add", ["m1", "fc1_bias"], ["m1b"]),
        helper.make_node("Cast", ["m1b"], ["m1q"], to=TensorProto.UINT8),
        helper.make_node("MatMulInteger", ["m1q", "fc2/W"], ["m2"]),
        helper.make_node("Cast", ["m2"], ["m2f"], to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["head.weight", "m2f"], ["y"], transB=1),  # 10x5 @ (Nx5)^T
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            _initializer("stem/W", (8, 3, 3, 3), np.uint8),
            _initializer("up.weight", (8, 4, 3, 3)),
            _initializer("up.bias", (4,)),
            *(_initializer(f"norm.{name}", (4,)) for name in BN),
            _initializer("fc1_weight", (1156, 6)),
            _initializer("fc1_bias", (6,)),
            _initializer("fc2/W", (6, 5), np.uint8),
            _initializer("head.weight", (10, 5)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = count_onnx(model)
    got = {layer.name: (layer.op, layer.params, layer.macs) for layer in report.layers}
    assert got == {
        "stem": ("ConvInteger", 216, 8 * 8 * 8 * 27),
        "up": ("ConvTranspose", 292, 8 * 8 * 8 * 36),
        "norm": ("BatchNormalization", 8, 0),
        "fc1": ("MatMul", 1156 * 6 + 6, 1156 * 6),
        "fc2": ("MatMulInteger", 30, 30),
        "head": ("Gemm", 50, 10 * 5),  # weight @ activation: per "image" of the weight's rows
    }
    assert [layer.block for layer in report.layers] == ["other"] * 3 + ["linear"] * 3


def test_bvlc_onnx_counts_like_reference(torch_report: CountReport) -> None:
    bvlc = paths.bvlc_onnx()
    if bvlc is None:
        pytest.skip(f"no BVLC GoogLeNet ONNX under {paths.shared_dir()} (set ${paths.SHARED_ENV})")
    report = count_onnx(bvlc)
    assert report.params == REFERENCE_PARAMS
    assert report.macs == REFERENCE_MACS
    assert _block_numbers(report) == _block_numbers(torch_report)
    _same_layers(count_onnx(bvlc, batch=4), report)  # its batch dim is symbolic: counts stay per image
    assert report.layers[-1].name == "loss3/classifier"
    assert report.layers[3].name == "inception_3a/1x1"


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="no such file"):
        count_onnx(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff" * 64 + b"not an onnx model")
    with pytest.raises(ToolkitError, match="not an ONNX model"):
        count_onnx(garbage)


# ------------------------------------------------------------------------------- names and tables


@pytest.mark.parametrize(
    ("name", "block"),
    [
        ("conv1.conv", "conv1"),
        ("conv1/7x7_s2", "conv1"),
        ("conv2_reduce.conv", "conv2"),
        ("conv2/3x3_reduce", "conv2"),
        ("conv3.conv", "conv2"),  # torchvision's 3x3
        ("conv3.bn", "conv2"),
        ("inception3a.branch1.conv", "inception_3a"),
        ("inception_4e/5x5", "inception_4e"),
        ("p_inception5b_branch3_1_conv_weight", "inception_5b"),
        ("inception4a.branch2.0.bn", "inception_4a"),
        ("fc", "linear"),
        ("loss3/classifier", "linear"),
        ("aux1.conv.conv", "aux"),
        ("loss1/fc", "aux"),
        ("something_else", "other"),
    ],
)
def test_block_of(name: str, block: str) -> None:
    assert block_of(name) == block


def test_format_count() -> None:
    assert format_count(REFERENCE_PARAMS) == "6.999 M"
    assert format_count(REFERENCE_MACS) == "1.583 G"
    assert format_count(128_049_152) == "128.0 M"
    assert format_count(9_472) == "9.472 K"
    assert format_count(512) == "512"


def _text(table: object) -> str:
    console = Console(file=io.StringIO(), width=160)
    console.print(table)
    return console.file.getvalue()


def test_tables_and_json(torch_report: CountReport) -> None:
    blocks = render_table(torch_report)
    assert blocks.row_count == len(BLOCK_ORDER) + 1
    text = _text(blocks)
    assert "inception_3a" in text and "128M" in text and "6,998,552" in text
    layers = render_table(torch_report, layers=True)
    assert layers.row_count == len(torch_report.layers) + 1
    assert "inception5b.branch3.1.conv" in _text(layers)
    plain = render_table(torch_report, paper=False)
    assert len(plain.columns) == 4
    data = json.loads(json.dumps(torch_report.to_dict()))
    assert data["params"] == REFERENCE_PARAMS and data["macs"] == REFERENCE_MACS
    assert [b["block"] for b in data["blocks"]] == list(BLOCK_ORDER)


# ------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", *args]
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False)


def test_cli_macs_on_bvlc(tmp_path: Path) -> None:
    bvlc = paths.bvlc_onnx()
    if bvlc is None:
        pytest.skip(f"no BVLC GoogLeNet ONNX under {paths.shared_dir()} (set ${paths.SHARED_ENV})")
    out = tmp_path / "reports" / "macs.json"
    result = _cli("macs", str(bvlc), "--layers", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "inception_5b" in result.stdout and "inception_5b/pool_proj" in result.stdout
    assert "1.583 G" in result.stdout
    data = json.loads(out.read_text())
    assert data["params"] == REFERENCE_PARAMS and data["macs"] == REFERENCE_MACS
    assert [row["block"] for row in data["paper_table1"]] == list(PAPER_TABLE1)
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


@pytest.mark.parametrize("case", ["missing", "garbage", "usage"])
def test_cli_errors_are_one_line(case: str, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    if case == "garbage":
        target.write_bytes(b"\x00\xff" * 64 + b"not an onnx model")
    result = _cli("macs", "--no-such-option") if case == "usage" else _cli("macs", str(target))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")
