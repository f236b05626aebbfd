"""JSON-only commands start without the heavy stacks: a CI gate must not pay for PyTorch on every call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorflow", "onnx", "onnxruntime")

PROBE = """
import runpy, sys
sys.argv = ["benchmarks", *sys.argv[1:]]
try:
    runpy.run_module("benchmarks", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("LOADED", ",".join(m for m in {heavy!r} if m in sys.modules), "EXIT", code)
"""


def _report(path: Path) -> Path:
    artifact = {
        "name": "googlenet.int8.onnx", "path": "googlenet.int8.onnx", "format": "onnx", "precision": "int8",
        "device": "ci", "size_bytes": 7_280_000, "latency_ms": {"1": {"mean": 10.0, "median": 10.0, "runs": 3}},
        "peak_rss_mb": 90.0,
        "accuracy": {"images": 4, "top1": 0.75, "vs_reference": {"reference": "googlenet.onnx", "top1_agreement": 1.0,
                                                                 "top1_drop_pp": 0.0}},
    }  # fmt: skip
    report = {"schema_version": 1, "host": {"cpu": "x", "cores": 2, "isa": []}, "artifacts": [artifact]}
    path.write_text(json.dumps(report))
    return path


def test_gate_compare_and_help_import_neither_torch_nor_tensorflow_nor_onnx(tmp_path: Path) -> None:
    report = _report(tmp_path / "report.json")
    for args in (
        ["gate", str(report)],
        ["compare", str(report), str(report)],
        ["schema"],
        ["--help"],
        ["gate", "--help"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
            cwd=PROJECT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        last = done.stdout.strip().splitlines()[-1]
        assert last == "LOADED  EXIT 0", (args, last, done.stderr[-1000:])
