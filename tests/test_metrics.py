"""The metric table (issue 13): one row per metric drives the report schema, the run table, compare, gate and
plot. Checked on hand-made reports (no models): a row added to a copy of the table shows up everywhere."""

from __future__ import annotations

import argparse
import copy
import io
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from benchmarks.compare import compare
from benchmarks.gate import GateThresholds, judge
from benchmarks.metrics import BY_KEY, METRICS, THRESHOLDS, Metric, Threshold
from benchmarks.report import ARTIFACT_SCHEMA, REPORT_SCHEMA
from benchmarks.table import report_table

PROJECT = Path(__file__).resolve().parents[1]


def artifact(name: str, agreement: float, median: float, emulated: float | None = None) -> dict:
    vs = {"reference": "googlenet.onnx", "top1_agreement": agreement, "top1_drop_pp": 0.5}
    entry = {
        "name": name, "path": name, "format": "onnx", "precision": "int8", "device": "vm", "size_bytes": 7_286_104,
        "macs": 1_582_671_872, "activation_bytes": 7_200_000, "peak_rss_mb": 104.0, "load_ms": 12.5,
        "latency_ms": {"1": {"mean": median, "median": median, "runs": 3}},
        "throughput": {"threads": 1, "images_per_s": 1000 / median},
        "accuracy": {"images": 50, "top1": 0.8, "vs_reference": vs},
    }  # fmt: skip
    if emulated is not None:
        entry["accuracy"]["emulated"] = {"images": 50, "top1": 0.79, "vs_reference": {**vs, "top1_agreement": emulated}}
    return entry


def report(*artifacts: dict) -> dict:
    return {"schema_version": 1, "host": {"cpu": "cpu", "cores": 2, "isa": []}, "artifacts": list(artifacts)}


def schema_at(source: str) -> dict:
    """The schema of a report artifact's field at `source` (`*`: any key of an object)."""
    node = ARTIFACT_SCHEMA
    for part in source.split("."):
        if part == "*":
            node = node["additionalProperties"]
        else:
            if "oneOf" in node:  # accuracy: null or the block
                node = next(choice for choice in node["oneOf"] if choice.get("type") == "object")
            node = node["properties"][part]
    return node


# A new metric, as a contributor would add it: its producer writes `load_ms`; this is its one row.
LOAD = Metric(
    "load_ms", "load ms", column="load ms", unit="ms", source="load_ms", higher_better=False, cell="{:.1f}",
    schema={"type": ["number", "null"]},
    gate=Threshold(
        "max_load_ms", None, failure="load {value:.1f} ms {op} {limit:g} ms", what="load", checked="load",
        metavar="MS", help="slowest load (ms)",
    ),
)  # fmt: skip


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.key)
def test_every_metric_is_in_the_report_schema_from_its_row(metric: Metric) -> None:
    assert schema_at(metric.source) is metric.schema


def test_report_schema_and_compare_cover_every_metric() -> None:
    changes = compare(report(artifact("m.onnx", 0.9, 10.0)), report(artifact("m.onnx", 0.9, 10.0)))
    assert [c.metric for c in changes] == [m.label for m in METRICS]
    assert all(c.verdict == "same" for c in changes)


def test_a_new_row_shows_up_in_compare_and_the_table() -> None:
    old, new = report(artifact("m.onnx", 0.9, 10.0)), report(artifact("m.onnx", 0.9, 10.0))
    new["artifacts"][0]["load_ms"] = 20.0
    changes = compare(old, new, (*METRICS, LOAD))
    assert [(c.metric, c.old, c.new, c.verdict) for c in changes if c.metric == "load ms"] == [
        ("load ms", 12.5, 20.0, "worse")
    ]
    console = Console(file=io.StringIO(), width=300, record=True)
    console.print(report_table(new, (*METRICS, LOAD)))
    text = console.export_text()
    assert "load ms" in text and "20.0" in text


def test_compare_judges_int8_accuracy_on_the_emulated_figures_and_latency_with_tolerance() -> None:
    old = report(artifact("m.int8.onnx", 0.99, 10.0, emulated=0.97))
    new = report(artifact("m.int8.onnx", 0.80, 10.4, emulated=0.98))
    verdicts = {c.metric: c.verdict for c in compare(old, new)}
    assert verdicts["agreement"] == "better"  # emulated 0.97 -> 0.98, whatever the host figure did
    assert verdicts[BY_KEY["latency_median"].label] == "same"  # +4% is within the 5% tolerance


def test_gate_thresholds_flags_and_pyproject_keys_come_from_the_table() -> None:
    from benchmarks.commands import configure_gate

    settings = [t.setting for t in THRESHOLDS]
    assert [f.name for f in fields(GateThresholds)] == [*settings, "accuracy"]
    assert {t.setting: t.default for t in THRESHOLDS} == {
        s: getattr(GateThresholds(), s) for s in settings
    }  # the defaults
    parser = argparse.ArgumentParser()
    configure_gate(parser)
    flags = {a.dest for a in parser._actions}
    assert set(settings) <= flags
    table = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["googlenet-edge"]["gate"]
    assert set(table) <= set(settings)


def test_gate_messages_as_documented() -> None:
    entry = artifact("googlenet.int8.onnx", 0.99, 10.0, emulated=0.96)
    (verdict,) = judge(report(entry), GateThresholds(max_size_mb=5))
    assert verdict.failures == [
        "top-1 agreement 96.00% (float-emulated) < 97.00%",  # README's example
        "size 7.29 MB > 5 MB",
    ]
    assert verdict.checked == ["top1_drop", "agreement", "size"]
    (host,) = judge(report(entry), replace(GateThresholds(), accuracy="host"))
    assert host.passed


def test_a_gated_row_is_judged() -> None:
    from benchmarks.gate import GATED, thresholds_type

    limits = thresholds_type((*THRESHOLDS, LOAD.gate))(max_load_ms=10.0)
    (verdict,) = judge(report(artifact("m.onnx", 0.99, 10.0)), limits, gated=(*GATED, LOAD))
    assert verdict.failures == ["load 12.5 ms > 10 ms"] and "load" in verdict.checked


def test_the_probe_reports_validate() -> None:
    jsonschema.validate(report(artifact("m.onnx", 0.9, 10.0, emulated=0.9)), REPORT_SCHEMA)
    broken = copy.deepcopy(report(artifact("m.onnx", 0.9, 10.0)))
    broken["artifacts"][0]["accuracy"]["vs_reference"]["top1_agreement"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, REPORT_SCHEMA)
