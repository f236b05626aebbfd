"""The terminal table of a benchmark report (`run`, `merge`): one row per artifact (and device), one column per
metric of `benchmarks.metrics` (per thread count for latency), plus the columns that go with them."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.metrics import BY_KEY, METRICS, Metric
from edge_runtime.kernel_coverage import coverage_text
from export import ui

Cell = Callable[[dict], str]


def speedup_text(latency: list) -> str:
    """Thread scaling: median at the fewest threads / median at the most."""
    return f"{latency[0] / latency[-1]:.2f}x" if latency[0] and latency[-1] else "—"


def ceiling_text(per_threads: dict | None) -> str:
    """`47% (18.6)`: share of this machine's ceiling at the fewest threads timed (achieved GMAC/s)."""
    if not per_threads:
        return "—"
    first = per_threads[min(per_threads, key=int)]
    share = f"{first['share']:.0%}" if first["share"] is not None else "—"
    return f"{share} ({first['gmacs']:.1f})"


def _untimed(artifact: dict) -> str:
    return "not timed" if artifact.get("timing") else "—"


def _extra_columns(threads: list[int]) -> dict[str, list[tuple[str, Cell]]]:
    """The columns that are no metric of their own, by the metric they follow."""
    latency = BY_KEY["latency_median"]
    speedup: list[tuple[str, Cell]] = []
    if len(threads) > 1:
        medians = lambda a: [latency.read(a, threads=str(t)) for t in threads]  # noqa: E731
        speedup = [(f"x @{threads[-1]}", lambda a: speedup_text(medians(a)))]
    throughput = lambda a: f"{a['throughput']['images_per_s']:.1f}" if a.get("throughput") else _untimed(a)  # noqa: E731
    return {
        "top1_agreement": [("int8 MACs", lambda a: coverage_text(a.get("kernels")))],
        "latency_median": [*speedup, ("% ceiling", lambda a: ceiling_text(a.get("ceiling"))), ("img/s", throughput)],
    }


def _cells(metric: Metric, artifact: dict, threads: list[int]) -> list[str]:
    """The metric's cell(s): the device's own accuracy figures (with the emulated ones where it shows them)."""
    acc = artifact.get("accuracy") or {}
    missing = _untimed(artifact) if metric.timed else "—"
    if "*" in metric.source:
        return [metric.text(metric.read(artifact, acc, threads=str(t)), missing) for t in threads]
    text = metric.text(metric.read(artifact, acc), missing)
    if metric.with_emulated and acc.get("emulated"):
        text += f" (emul {metric.text(metric.read(artifact, acc['emulated']))})"
    return [text]


def report_table(report: dict, metrics: tuple[Metric, ...] = METRICS):
    """One row per artifact (and device), like ultralytics' benchmark table."""
    threads = sorted({int(t) for a in report["artifacts"] for t in a["latency_ms"]})
    devices = {a["device"] for a in report["artifacts"]}
    extras = _extra_columns(threads)
    columns = ["artifact", *(["device"] if len(devices) > 1 else []), "precision"]
    for metric in metrics:
        per_thread = "*" in metric.source
        columns += [metric.column.format(threads=t) for t in threads] if per_thread else [metric.column]
        columns += [header for header, _ in extras.get(metric.key, [])]
    rows = []
    for a in report["artifacts"]:
        row = [a["name"], *([a["device"]] if len(devices) > 1 else []), a["precision"]]
        for metric in metrics:
            row += [*_cells(metric, a, threads), *(cell(a) for _, cell in extras.get(metric.key, []))]
        rows.append(row)
    host = report["host"]
    title = f"Benchmarks on {host.get('cpu')} ({host.get('cores')} cores, {', '.join(host.get('isa') or [])})"
    if any(a.get("timing") for a in report["artifacts"]):
        title += "; 'not timed': an emulated CPU, whose times are not the device's"
    return ui.table(title, columns, rows)
