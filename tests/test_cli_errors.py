"""Bad input through `python -m export onnx`: exit 2, one `error:` line naming the file, nothing written.

All failing runs are started side by side by one module fixture (each is a fresh interpreter that spends
most of its time importing torch); each test then checks one case. Every run gets its own `$TMPDIR`, so
a staging folder or temporary file left behind would show up there.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from export import paths


@dataclass
class Case:
    """One bad invocation: its arguments, the file the message must name, what it must say."""

    args: list[str | Path]
    names: str | None  # the file name the error line must contain (None: no file involved)
    says: str  # a fragment the error line must contain
    env: dict[str, str | None] | None = None
    needs: Callable[[], Path | None] | None = None  # a shared asset; the case skips without it
    no_eval: bool = True  # pass --no-eval (every case but the one about --eval)


def _write_cases(folder: Path, reference: Path, ten_classes: Path) -> dict[str, Case]:
    truncated_pt = folder / "truncated.pt"
    truncated_pt.write_bytes(reference.read_bytes()[:1000])

    garbage_onnx = folder / "garbage.onnx"
    garbage_onnx.write_bytes(b"GIF89a this is not an ONNX model \x00\xff\xfe" * 300)

    truncated_onnx = folder / "truncated.onnx"
    bvlc = paths.bvlc_onnx()
    if bvlc is not None:
        truncated_onnx.write_bytes(bvlc.read_bytes()[:100_000])

    other_onnx = folder / "tiny_relu.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), other_onnx)

    other_net = folder / "other_net.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 10)).state_dict(), other_net)

    not_a_state_dict = folder / "history.pt"
    torch.save({"epochs": [1, 2, 3], "best": 0.7}, not_a_state_dict)

    labels = folder / "three_labels.txt"
    labels.write_text("cat\ndog\nbird\n", encoding="utf-8")

    return {
        "missing_weights": Case(["--weights", folder / "missing.pt"], "missing.pt", "not found"),
        "truncated_pt": Case(["--weights", truncated_pt], "truncated.pt", "checkpoint"),
        "garbage_onnx": Case(["--weights", garbage_onnx], "garbage.onnx", "ONNX"),
        "truncated_onnx": Case(["--weights", truncated_onnx], "truncated.onnx", "ONNX", needs=paths.bvlc_onnx),
        "onnx_of_another_network": Case(["--weights", other_onnx], "tiny_relu.onnx", "BVLC"),
        "state_dict_of_another_network": Case(["--weights", other_net], "other_net.pt", "not a GoogLeNet"),
        "checkpoint_without_tensors": Case(["--weights", not_a_state_dict], "history.pt", "state_dict"),
        "ten_classes_without_num_classes": Case(["--weights", ten_classes], "ten_classes.pt", "--num-classes 10"),
        "ten_classes_with_num_classes_5": Case(
            ["--weights", ten_classes, "--num-classes", "5"], "ten_classes.pt", "10 classes"
        ),
        "unknown_option": Case(["--weights", reference, "--frobnicate"], None, "--frobnicate"),
        "opset_5": Case(["--weights", reference, "--opset", "5"], None, "opset"),
        "labels_of_the_wrong_length": Case(
            ["--weights", reference, "--labels", labels], "three_labels.txt", "3 labels"
        ),
        "negative_num_classes": Case(["--num-classes", "-3"], None, "num-classes"),
        "missing_eval_folder": Case(
            ["--weights", reference, "--eval", folder / "no_such_photos"], "no_such_photos", "not found", no_eval=False
        ),
        "missing_weights_from_env": Case(
            [], "from_env.pt", "not found", env={paths.WEIGHTS_ENV: str(folder / "from_env.pt")}
        ),
    }


@dataclass
class Run:
    case: Case
    result: subprocess.CompletedProcess | None  # None: skipped (a shared asset is missing)
    out_dir: Path
    tmp_dir: Path


@pytest.fixture(scope="module")
def failed_runs(
    run_export_cli, reference_checkpoint: Path, ten_class_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    folder = tmp_path_factory.mktemp("cli_errors")
    cases = _write_cases(folder, reference_checkpoint, ten_class_checkpoint)

    def run(item: tuple[str, Case]) -> tuple[str, Run]:
        name, case = item
        out_dir, tmp_dir = folder / name / "out", folder / name / "tmp"
        tmp_dir.mkdir(parents=True)
        if case.needs is not None and case.needs() is None:
            return name, Run(case, None, out_dir, tmp_dir)
        env = {"TMPDIR": str(tmp_dir), **(case.env or {})}
        args = [*case.args, "--no-eval"] if case.no_eval else case.args
        result = run_export_cli("onnx", *args, "--out", out_dir, env=env, timeout=300)
        return name, Run(case, result, out_dir, tmp_dir)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, cases.items()))


CASES = [
    "missing_weights",
    "truncated_pt",
    "garbage_onnx",
    "truncated_onnx",
    "onnx_of_another_network",
    "state_dict_of_another_network",
    "checkpoint_without_tensors",
    "ten_classes_without_num_classes",
    "ten_classes_with_num_classes_5",
    "unknown_option",
    "opset_5",
    "labels_of_the_wrong_length",
    "negative_num_classes",
    "missing_eval_folder",
    "missing_weights_from_env",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_error_line_and_writes_nothing(name: str, failed_runs: dict[str, Run]) -> None:
    run = failed_runs[name]
    if run.result is None:
        pytest.skip(f"shared BVLC weights not found under {paths.shared_dir()}; set ${paths.SHARED_ENV}")
    result, case = run.result, run.case
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    (line,) = lines
    assert line.startswith("error: "), line
    if case.names:
        assert case.names in line, line
    assert case.says in line, line
    leftovers = sorted(p.name for p in run.out_dir.iterdir()) if run.out_dir.exists() else []
    assert leftovers == [], f"--out holds {leftovers}"
    # the toolkit's own staging folders and *.tmp files (ONNX Runtime keeps a `.ses` id file there: not ours)
    staged = [p.name for p in run.tmp_dir.iterdir() if p.name.startswith(".googlenet") or p.name.endswith(".tmp")]
    assert staged == [], f"left in $TMPDIR: {staged}"


def test_cases_cover_the_fixture(failed_runs: dict[str, Run]) -> None:
    assert sorted(failed_runs) == sorted(CASES)


@pytest.mark.slow  # a full export (ten_class_dynamic_export)
def test_ten_classes_with_num_classes_10_succeeds(ten_class_dynamic_export: tuple) -> None:
    result, out_dir = ten_class_dynamic_export
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower()
    assert sorted(p.name for p in out_dir.iterdir()) == ["googlenet.onnx", "googlenet.onnx.json"]
    metadata = {
        p.key: p.value for p in onnx.load(str(out_dir / "googlenet.onnx"), load_external_data=False).metadata_props
    }
    assert metadata["num_classes"] == "10" and metadata["weights_format"] == "state_dict"
    assert json.loads(metadata["labels"])["names"] == [f"class_{i}" for i in range(10)]
