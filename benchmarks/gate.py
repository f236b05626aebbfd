"""`python -m benchmarks gate`: a CI pass/fail over a report, with JUnit XML for CI dashboards.

Thresholds come from the command line, else from `[tool.googlenet-edge.gate]` in the nearest
`pyproject.toml`, else the defaults in the metric table (`benchmarks.metrics`, which also names them). An
int8 ONNX model is judged on its emulated (target-independent) figures where the report has them: CI
runners are x86 hosts whose int8 kernels can saturate (no VNNI), while the model ships to ARM devices;
`--accuracy host` judges the host figures.
"""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields, make_dataclass, replace
from pathlib import Path

from benchmarks.metrics import GATED, LATENCY_RATIO, THRESHOLDS, Metric, Threshold, accuracy_view
from export.errors import ToolkitError, one_line

PYPROJECT_TABLE = ("tool", "googlenet-edge", "gate")


def thresholds_type(thresholds: tuple[Threshold, ...]) -> type:
    """A frozen dataclass with one field per threshold (its default) and which accuracy figures to judge."""
    return make_dataclass(
        "GateThresholds",
        [
            *((t.setting, float | None, field(default=t.default)) for t in thresholds),
            ("accuracy", str, field(default="emulated")),  # "emulated" (where the report has it) or "host"
        ],
        frozen=True,
    )


GateThresholds = thresholds_type(THRESHOLDS)


def thresholds_from_pyproject(start: Path | None = None) -> tuple:
    """Defaults overridden by the nearest pyproject.toml's `[tool.googlenet-edge.gate]` table."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ToolkitError(f"cannot read ({one_line(exc)})", candidate) from None
            table: object = data
            for key in PYPROJECT_TABLE:
                table = table.get(key, {}) if isinstance(table, dict) else {}
            if not table:
                return GateThresholds(), None
            return _from_table(table, candidate), candidate  # type: ignore[arg-type]
    return GateThresholds(), None


def _from_table(table: dict, source: Path):
    known = {f.name: f for f in fields(GateThresholds)}
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ToolkitError(f"unknown gate setting {key!r} in [tool.googlenet-edge.gate]", source)
        if name == "accuracy":
            if value not in ("emulated", "host"):
                raise ToolkitError(f"gate accuracy must be 'emulated' or 'host', not {value!r}", source)
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise ToolkitError(f"gate setting {key!r} must be a number, not {value!r}", source)
        values[name] = value
    return replace(GateThresholds(), **values)


@dataclass
class Verdict:
    name: str
    device: str
    failures: list[str]
    checked: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def _accuracy_view(artifact: dict, mode: str) -> tuple[dict, str]:
    """The figures to judge: float-emulated int8 where asked and present, else what the device computed
    (an `aarch64-qemu` device's own figures are ARM's kernels; it has no float emulation)."""
    acc = artifact.get("accuracy") or {}
    if mode == "emulated" and accuracy_view(artifact) is not acc:
        return accuracy_view(artifact), "float-emulated"
    return acc, f"as computed on {artifact['device']}" if acc else ""


def _reference_latency(report: dict, artifact: dict) -> dict | None:
    """The reference artifact's latency on the same device (by the name recorded as the reference)."""
    vs = (artifact.get("accuracy") or {}).get("vs_reference") or {}
    name = vs.get("reference") or (report.get("settings") or {}).get("reference")
    for other in report["artifacts"]:
        if other["name"] == name and other["device"] == artifact["device"]:
            return other["latency_ms"]
    return None


def judge(
    report: dict, limits: GateThresholds, devices: list[str] | None = None, gated: tuple[Metric, ...] = GATED
) -> list[Verdict]:
    """One verdict per artifact (and device): the thresholds it breaks, each as one readable reason.

    `devices` restricts the verdicts to those devices of a merged report, e.g. `aarch64-qemu (neoverse-n1)`:
    int8 accuracy as ARM's kernels compute it."""
    present = list(dict.fromkeys(a["device"] for a in report["artifacts"]))
    unknown = [d for d in devices or () if d not in present]
    if unknown:
        raise ToolkitError(f"--device {unknown[0]!r} is not in the report (devices: {', '.join(present)})")
    verdicts = []
    for artifact in report["artifacts"]:
        if devices and artifact["device"] not in devices:
            continue
        failures, checked = [], []
        view, label = _accuracy_view(artifact, limits.accuracy)
        where = f" ({label})" if label else ""
        judged = [(m, getattr(limits, m.gate.setting), m.read(artifact, view)) for m in gated if m.gate]
        wanted = [m.gate.what for m, limit, value in judged if limit is not None and value is None]
        if wanted:  # a threshold with nothing to judge is a failure, or a CI job without --eval always passes
            failures.append(
                f"no {' or '.join(wanted)} figure to check (was `benchmarks run` given --eval and a reference?)"
            )
        for metric, limit, value in judged:
            if limit is None or value is None:
                continue
            checked.append(metric.gate.checked)
            if value < limit if metric.higher_better else value > limit:
                op, shown = ("<" if metric.higher_better else ">"), where if metric.accuracy else ""
                failures.append(metric.gate.failure.format(value=value, where=shown, op=op, limit=limit))
        if limits.max_latency_ratio is not None and artifact.get("timing"):
            checked.append(f"{LATENCY_RATIO.checked}: not timed (emulated CPU)")
        elif limits.max_latency_ratio is not None:
            reference = _reference_latency(report, artifact)
            if reference is None:
                failures.append(f"{LATENCY_RATIO.what}: no reference measured on the same device")
            else:
                for threads, stats in sorted(artifact["latency_ms"].items()):
                    base = (reference.get(threads) or {}).get("median")
                    if base and stats.get("median") is not None:
                        checked.append(f"{LATENCY_RATIO.checked}@{threads}")
                        ratio, limit = stats["median"] / base, limits.max_latency_ratio
                        if ratio > limit:
                            failures.append(
                                LATENCY_RATIO.failure.format(value=ratio, threads=threads, op=">", limit=limit)
                            )
        verdicts.append(Verdict(artifact["name"], artifact["device"], failures, checked))
    return verdicts


def junit_xml(verdicts: list[Verdict], path: Path) -> None:
    """One test case per artifact (and device); a failing one carries its reasons."""
    suite = ET.Element(
        "testsuite",
        name="googlenet-edge gate",
        tests=str(len(verdicts)),
        failures=str(sum(not v.passed for v in verdicts)),
        errors="0",
    )
    for verdict in verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{verdict.device}", name=verdict.name)
        if not verdict.passed:
            failure = ET.SubElement(case, "failure", message="; ".join(verdict.failures))
            failure.text = "\n".join(verdict.failures)
        else:
            ET.SubElement(case, "system-out").text = "checked: " + ", ".join(verdict.checked or ["nothing"])
    tree = ET.ElementTree(ET.Element("testsuites"))
    tree.getroot().append(suite)
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tree.write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
