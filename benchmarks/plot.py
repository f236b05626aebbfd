"""`--plot`: latency vs top-1 accuracy (axes from `benchmarks.metrics`), one bubble per artifact (area = file
size), readable at a glance."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.metrics import BY_KEY, Metric, best_threads
from edge_runtime.formats import FORMATS
from export.errors import ToolkitError

# one marker shape per format, in table order
MARKERS = {f.name: marker for f, marker in zip(FORMATS, "osD^v<>p", strict=False)}


def require_matplotlib():
    """pyplot on a file-only backend; matplotlib is the optional `[plot]` extra, imported only here.

    `run --plot` calls it before the long measurement, so a missing extra fails at once."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolkitError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    return plt


def _axis_title(metric: Metric) -> str:
    return f"{metric.axis} - {'higher' if metric.higher_better else 'lower'} is better"


def plot_report(report: dict, path: Path) -> Path:
    """Write the PNG (atomically)."""
    plt = require_matplotlib()
    x, y = BY_KEY["latency_median"], BY_KEY["top1"]
    points = []
    for a in report["artifacts"]:
        if not a["latency_ms"]:
            continue  # not timed (an emulated CPU): no place on a latency axis
        best = best_threads(a)
        latency = x.read(a) or a["latency_ms"][best].get("mean")
        top1 = y.read(a, a.get("accuracy") or {})  # what the device computed
        if top1 is not None and latency:
            points.append((a, latency, 100 * top1, best))
    if not points:
        raise ToolkitError("--plot needs accuracy figures: run with --eval DIR")
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    largest = max(a["size_bytes"] for a, *_ in points)
    devices = sorted({a["device"] for a, *_ in points})
    precisions = sorted({a["precision"] for a, *_ in points})
    colours = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(precisions)}
    points.sort(key=lambda point: point[1])
    for index, (a, latency, top1, threads) in enumerate(points):
        axes.scatter(
            latency, top1, s=200 + 1800 * a["size_bytes"] / largest, marker=MARKERS.get(a["format"], "o"),
            color=colours[a["precision"]], alpha=0.55, edgecolors="black", linewidths=0.8,
        )  # fmt: skip
        where = f" @ {a['device']}" if len(devices) > 1 else ""
        label = f"{a['name']}{where}\n{a['size_bytes'] / 1e6:.1f} MB, {latency:.1f} ms, {threads} thr"
        offset = (14, 30 - 22 * (index % 4))  # staggered so neighbouring bubbles keep readable labels
        axes.annotate(
            label, (latency, top1), textcoords="offset points", xytext=offset, fontsize=8,
            arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6},
        )  # fmt: skip
    axes.set_xlabel(_axis_title(x))
    axes.set_ylabel(_axis_title(y))
    title = "GoogLeNet artifacts: latency vs accuracy (bubble area = file size; o ONNX, s TFLite)"
    axes.set_title(title, fontsize=10)
    for precision in precisions:
        axes.scatter([], [], color=colours[precision], label=precision, alpha=0.55)
    axes.legend(title="precision", fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    axes.margins(0.25)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(tmp, format="png")
    plt.close(figure)
    os.replace(tmp, path)
    return path
