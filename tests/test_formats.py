"""The format table: its rows drive the CLI, the report schema and the bundle, and nothing else branches on a suffix.

Adding a format must mean adding its row (`edge_runtime/formats.py`) and its own code, not hunting for
`if path.suffix == ".onnx"` across the benchmark side: the grep below fails on any suffix or format-name branch
in `benchmarks/` and `edge_runtime/` outside the table, and on any other literal list of the format names.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from benchmarks.bundle import SHIPPED_BESIDE_RUN
from benchmarks.report import ARTIFACT_SCHEMA
from edge_runtime import android_bench, formats
from edge_runtime.errors import ToolkitError
from export.cli import build_parser
from export.formats import OPTIONS

PROJECT = Path(__file__).resolve().parents[1]
TABLE = PROJECT / "edge_runtime" / "formats.py"
EXEMPT = {
    # Standard library only, run from the bundle's android/ folder: it writes LiteRT's suffix itself (pinned below).
    PROJECT / "edge_runtime" / "android_bench.py",
    # A study of the two int8 quantizers beside a PyTorch-only one: it picks a quantizer by name (its
    # `--backends` choices), it reads no model file.
    PROJECT / "benchmarks" / "int8_fidelity.py",
}
SUFFIX = re.compile(r"^\.(onnx|tflite)$", re.IGNORECASE)
NAMES = {f.name for f in formats.FORMATS}


def _format_literals(node: ast.AST) -> list[str]:
    """String constants in `node` that are a model suffix or a format name."""
    return [
        c.value
        for c in ast.walk(node)
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and (SUFFIX.match(c.value) or c.value in NAMES)
    ]


def branches_on_format(path: Path, root: Path = PROJECT) -> list[str]:
    """Comparisons, `endswith`/`with_suffix` calls, dict keys and subscripts on a literal suffix or format name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        call = isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("endswith", "with_suffix")
        if isinstance(node, ast.Compare) or call:
            hits = _format_literals(node)
        elif isinstance(node, ast.Dict):
            hits = [v for key in node.keys if key is not None for v in _format_literals(key)]
        elif isinstance(node, ast.Subscript):
            hits = _format_literals(node.slice)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SUFFIX.match(node.value):
            hits = [node.value]  # a bare suffix anywhere: a table of suffixes kept outside the table
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno}: {hit!r}" for hit in hits]
    return found


def _outside_the_table(packages: tuple[str, ...], check) -> list[str]:
    """`check`'s hits in every module of `packages` but the table and the exempt files."""
    files = [path for package in packages for path in sorted((PROJECT / package).rglob("*.py"))]
    return [hit for path in files if path != TABLE and path not in EXEMPT for hit in check(path)]


def test_the_benchmark_side_has_no_suffix_branches() -> None:
    found = _outside_the_table(("benchmarks", "edge_runtime"), branches_on_format)
    assert not found, "format branches outside edge_runtime/formats.py:\n" + "\n".join(found)


def test_the_check_sees_the_branches_it_forbids(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        'if path.suffix == ".onnx": pass\n'
        'ok = str(path).endswith(".tflite")\n'
        'MARKERS = {"onnx": "o"}\n'
        'if fmt == "tflite": pass\n'
        'SUFFIXES = (".onnx",)\n'
        'name = "googlenet.onnx"\n'  # a file name is not a branch
    )
    lines = {hit.split(":")[1] for hit in branches_on_format(probe, tmp_path)}
    assert lines == {"1", "2", "3", "4", "5"}


def test_every_row_is_complete() -> None:
    """Every field set, every option known, every Ref naming a function that exists."""
    import dataclasses
    import importlib

    assert len(formats.BY_NAME) == len(formats.FORMATS)
    assert tuple(f.suffix for f in formats.FORMATS) == formats.MODEL_SUFFIXES
    for row in formats.FORMATS:
        assert set(row.options) <= set(OPTIONS), row.name
        assert row.layout in ("NCHW", "NHWC")
        assert row.description and row.tolerance > 0 and row.suffix.startswith(".")
        for field in dataclasses.fields(row):
            value = getattr(row, field.name)
            if isinstance(value, formats.Ref):
                module, _, name = value.target.partition(":")
                assert callable(getattr(importlib.import_module(module), name)), (row.name, field.name)
    assert sum(f.reference for f in formats.FORMATS) == 1


def _literal_lists(path: Path, root: Path = PROJECT) -> list[str]:
    """Tuple, list, set and dict literals (their keys) holding two or more format names or suffixes."""
    wanted = NAMES | {f.suffix for f in formats.FORMATS}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [key for key in node.keys if key is not None]
        else:
            continue
        hits = {i.value for i in items if isinstance(i, ast.Constant) and i.value in wanted}
        if len(hits) >= 2:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {sorted(hits)}")
    return found


def test_the_table_is_the_only_list_of_formats() -> None:
    found = _outside_the_table(("edge_runtime", "export", "quantize", "benchmarks", "studies"), _literal_lists)
    assert not found, "lists of formats outside edge_runtime/formats.py:\n" + "\n".join(found)


def test_the_list_check_sees_a_second_list(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        'BACKENDS = ("onnx", "tflite")\n'
        'RECIPES = {"onnx": 1, "tflite": 2}\n'
        'SUFFIXES = [".onnx", ".tflite"]\n'
        'ONE = ("onnx", "int8")\n'  # one name is not a list of formats
    )
    assert {hit.split(":")[1] for hit in _literal_lists(probe, tmp_path)} == {"1", "2", "3"}


def test_the_cli_and_the_report_read_the_table() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "format")
    assert list(commands.choices) == [f.name for f in formats.FORMATS]
    for name, sub in commands.choices.items():
        quantize = next((a for a in sub._actions if a.dest == "quantize"), None)
        assert tuple(quantize.choices) == formats.BY_NAME[name].quantize
    assert ARTIFACT_SCHEMA["properties"]["format"]["enum"] == [f.name for f in formats.FORMATS]
    runtimes = ARTIFACT_SCHEMA["properties"]["kernels"]["properties"]["runtime"]["enum"]
    assert runtimes == list(dict.fromkeys(f.runtime for f in formats.FORMATS))


def test_the_android_tool_writes_litert_s_row() -> None:
    row = formats.BY_NAME[android_bench.FORMAT]
    assert row.suffix == android_bench.MODEL_SUFFIX and row.runtime == "litert"


def test_format_of_reads_the_suffix_and_names_an_unknown_one(tmp_path: Path) -> None:
    assert formats.format_of(tmp_path / "m.TFLITE").name == "tflite"
    assert formats.format_of("a/googlenet.int8.onnx").name == "onnx"
    with pytest.raises(ToolkitError) as caught:
        formats.format_of(tmp_path / "notes.txt")
    assert str(caught.value) == f"{tmp_path / 'notes.txt'}: unknown model format (expected .onnx or .tflite)"
    assert formats.format_of(tmp_path / "notes.txt", strict=False).reference  # inspectors read it as ONNX, as before


def test_the_bundled_runner_imports_the_table_from_beside_it(tmp_path: Path) -> None:
    """`run.py` under `python -I` (no folder on sys.path) finds `formats.py` and the rest beside it."""
    core = PROJECT / "edge_runtime"
    shutil.copyfile(core / "device_runner.py", tmp_path / "run.py")
    for name in SHIPPED_BESIDE_RUN:
        shutil.copyfile(core / name, tmp_path / name)
    node = helper.make_node("Relu", ["x"], ["logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "tiny.onnx")
    np.save(tmp_path / "sample.npy", np.ones((1, 4), np.float32))
    command = [sys.executable, "-I", "run.py", "measure", "tiny.onnx", "sample.npy", "--threads", "1", "--runs", "2"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"latency_ms"' in done.stdout
    unknown = subprocess.run(
        [sys.executable, "-I", "run.py", "measure", "tiny.txt", "sample.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip().splitlines()[-1] == "error: tiny.txt: unknown model format (expected .onnx or .tflite)"
    )


def test_a_missing_runtime_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device with one runtime skips the other format's models, saying what to install."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert formats.missing_runtime("onnx") == "pip install onnxruntime to run it"
    assert formats.missing_runtime("tflite") is None
    assert formats.has_emulated_run("onnx", "int8") and not formats.has_emulated_run("tflite", "int8")
