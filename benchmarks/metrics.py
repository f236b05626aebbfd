"""The benchmark metrics, declared once: one row each drives the report schema's properties for it, the `run`
table's column, `compare`, `gate` (its threshold setting, flag and message) and `plot`'s axes.

A new metric is its producer (what writes the field into the report) and one row in `METRICS`. Kept free of
heavy imports: `python -m benchmarks gate` reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """A gate limit on a metric: `setting` is the `GateThresholds` field, the pyproject key and (dashed) the flag;
    a higher-is-better metric's limit is a minimum, any other's a maximum."""

    setting: str
    default: float | None
    failure: str  # str.format'ed with value, where (the accuracy view), op (< or >), limit
    what: str  # its name where a figure is missing
    checked: str  # its name in the list of what was checked
    metavar: str
    help: str
    fraction: bool = False  # the limit must lie in 0..1


@dataclass(frozen=True)
class Metric:
    """One figure per artifact. `source`: where the report holds it (`accuracy.` paths are read in the accuracy
    view being judged, `*` in `latency_ms.*` is the best thread count); divided by `per`, it is in `unit`."""

    key: str
    label: str  # compare's row label
    column: str  # the run table's header ({threads} for per-thread columns)
    unit: str
    source: str
    schema: dict  # JSON Schema of the source field (report.py places it)
    higher_better: bool
    tolerance: float = 0.0  # relative change compare still counts as "same"
    per: float = 1  # 1e6: bytes -> MB
    cell: str | Callable[[float], str] = "{:.2f}"  # the run table's cell
    timed: bool = False  # measured by running it: "not timed" on an emulated CPU
    with_emulated: bool = False  # the run table shows the emulated figure beside it
    axis: str = ""  # plot axis title
    gate: Threshold | None = None

    @property
    def accuracy(self) -> bool:
        return self.source.startswith("accuracy.")

    def read(self, artifact: dict, view: dict | None = None, threads: str | None = None) -> float | None:
        """The value in `unit` (None when the report lacks it); `view`: the accuracy block to read
        `accuracy.` figures from (default: the emulated figures where present, as the gate); `threads`:
        the thread count for `*` (default: the best)."""
        path = self.source.split(".")
        if self.accuracy:
            node: object = accuracy_view(artifact) if view is None else view
            path = path[1:]
        else:
            node = artifact
        for part in path:
            if part == "*":
                part = threads or best_threads(artifact)
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or self.per == 1:
            return node  # type: ignore[return-value]
        return node / self.per  # type: ignore[operator]

    def text(self, value: float | None, missing: str = "—") -> str:
        if value is None:
            return missing
        return self.cell(value) if callable(self.cell) else self.cell.format(value)


def accuracy_view(artifact: dict) -> dict:
    """int8 ONNX: the target-independent (emulated) figures where the report has them, else the device's."""
    acc = artifact.get("accuracy") or {}
    return acc.get("emulated") or acc


def best_threads(artifact: dict) -> str:
    """The thread count `throughput` names (the fastest), else the first timed one."""
    if artifact.get("throughput"):
        return str(artifact["throughput"]["threads"])
    return next(iter(artifact.get("latency_ms") or {}), "")


def _count(value: float) -> str:
    from export.counting import format_count

    return format_count(value) if value else "—"


_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_NULLABLE = {"type": ["number", "null"]}
METRICS: tuple[Metric, ...] = (
    Metric(
        "size_mb", "size MB", column="size MB", unit="MB", source="size_bytes", higher_better=False, per=1e6,
        schema={"type": "integer", "minimum": 1},
        gate=Threshold(
            "max_size_mb", None, failure="size {value:.2f} MB{where} {op} {limit:g} MB", what="size",
            checked="size", metavar="M", help="largest file size (MB)",
        ),
    ),
    Metric(
        "macs", "MACs", column="MACs", unit="MACs", source="macs", higher_better=False, cell=_count,
        schema={"type": ["integer", "null"], "description": "multiply-adds per image, from the graph"},
    ),
    Metric(
        "top1", "top-1", column="top-1", unit="fraction", source="accuracy.top1", higher_better=True,
        schema=_FRACTION, cell="{:.1%}", axis="top-1 accuracy (%)",
    ),
    Metric(
        "top1_drop_pp", "top-1 drop pp", column="drop pp", unit="pp", source="accuracy.vs_reference.top1_drop_pp",
        higher_better=False, schema={"type": "number"}, cell="{:+.2f}", with_emulated=True,
        gate=Threshold(
            "max_top1_drop", 1.0, failure="top-1 drop {value:.2f} pp{where} {op} {limit:g} pp", what="top-1 drop",
            checked="top1_drop", metavar="PP", help="largest allowed top-1 drop (pp)",
        ),
    ),
    Metric(
        "top1_agreement", "agreement", column="agree", unit="fraction",
        source="accuracy.vs_reference.top1_agreement", higher_better=True, schema=_FRACTION, cell="{:.1%}",
        with_emulated=True,
        gate=Threshold(
            "min_agreement", 0.97, failure="top-1 agreement {value:.2%}{where} {op} {limit:.2%}", what="agreement",
            checked="agreement", metavar="F", help="smallest top-1 agreement (0..1)", fraction=True,
        ),
    ),
    Metric(
        "latency_median", "ms p50 (best threads)", column="ms p50 @{threads}", unit="ms",
        source="latency_ms.*.median", higher_better=False, tolerance=0.05, schema=_NULLABLE, cell="{:.1f}",
        timed=True, axis="median latency per image (ms, best thread count)",
    ),
    Metric(
        "peak_rss_mb", "peak RSS MB", column="peak MB", unit="MB", source="peak_rss_mb", higher_better=False,
        tolerance=0.05, schema={**_NULLABLE, "description": "peak RSS of a fresh process running it"},
        cell="{:.0f}", timed=True,
    ),
    Metric(
        "activation_mb", "activation MB", column="act. MB", unit="MB", source="activation_bytes",
        higher_better=False, per=1e6, cell="{:.1f}",
        schema={"type": ["integer", "null"], "description": "largest set of live tensors"},
    ),
)  # fmt: skip
BY_KEY = {m.key: m for m in METRICS}

# Gate limits that are not one figure of one artifact (the latency is judged per thread count against the
# reference's): declared here with the others so flags, pyproject keys and defaults come from one place.
LATENCY_RATIO = Threshold(
    "max_latency_ratio", None, failure="latency {value:.2f}x the reference at {threads} threads {op} {limit:g}x",
    what="latency ratio", checked="latency", metavar="R", help="median latency / the reference's",
)  # fmt: skip
# The gated metrics, accuracy first (a missing figure is reported before any other failure), and every limit.
GATED: tuple[Metric, ...] = tuple(sorted((m for m in METRICS if m.gate), key=lambda m: not m.accuracy))
THRESHOLDS: tuple[Threshold, ...] = (*(m.gate for m in GATED if m.gate), LATENCY_RATIO)


def schema_properties(parent: str) -> dict[str, dict]:
    """The JSON Schema properties of the metrics whose source field sits directly under `parent` ("" = top)."""
    found = {}
    for metric in METRICS:
        where, _, name = metric.source.rpartition(".")
        if where == parent:
            found[name] = metric.schema
    return found
