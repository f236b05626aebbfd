"""Reproduce the results table of docs/results.md: FP32 vs int8, ONNX vs TFLite, 1 and 2 threads, in one run.

    python -m export tflite --weights ../shared/weights/bvlc_googlenet.onnx --quantize int8 \\
        --calib ../shared/data/imagenet-sample --calib-size 100
    python -m export onnx --weights ../shared/weights/bvlc_googlenet.onnx --quantize int8 \\
        --calib ../shared/data/imagenet-sample --calib-size 100
    python -m studies.results_table --eval ../shared/data/imagenet-sample

Writes the full report plus int8/FP32 ratios (measured in the same run, so they hold on other machines
better than absolute times) to `artifacts/results-table.json` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.run import RunOptions, run
from benchmarks.table import report_table
from edge_runtime.device_runner import thread_list, whole_number
from export import ui
from export.artifacts import write_json
from export.errors import EXIT_USAGE, ToolkitError, one_line

PAIRS = (("onnx", "googlenet.onnx", "googlenet.int8.onnx"), ("tflite", "googlenet.tflite", "googlenet.int8.tflite"))


def ratios(report: dict) -> list[dict]:
    """int8 / FP32 per format and thread count: latency, peak RSS, size, activation memory."""
    by_name = {a["name"]: a for a in report["artifacts"]}
    rows = []
    for fmt, fp32_name, int8_name in PAIRS:
        fp32, int8 = by_name.get(fp32_name), by_name.get(int8_name)
        if not fp32 or not int8:
            continue
        row = {
            "format": fmt,
            "size": int8["size_bytes"] / fp32["size_bytes"],
            "peak_rss": int8["peak_rss_mb"] / fp32["peak_rss_mb"],
            "activation": int8["activation_bytes"] / fp32["activation_bytes"],
        }
        for threads in sorted(set(fp32["latency_ms"]) & set(int8["latency_ms"])):
            row[f"latency@{threads}"] = int8["latency_ms"][threads]["median"] / fp32["latency_ms"][threads]["median"]
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    threads = sorted({t for a in report["artifacts"] for t in a["latency_ms"]}, key=int)
    head = ["file", "size MB", "MACs", "top-1", "drop pp", "agreement", *[f"ms p50 @{t} thr" for t in threads]]
    head += ["peak RSS MB", "activations MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in report["artifacts"]:
        acc = a.get("accuracy") or {}
        view = acc.get("emulated") or acc
        vs = view.get("vs_reference") or {}
        note = " (emulated)" if acc.get("emulated") else ""
        cells = [
            f"`{a['name']}`",
            f"{a['size_bytes'] / 1e6:.2f}",
            f"{a['macs'] / 1e9:.3f} G",
            f"{view['top1']:.1%}{note}" if "top1" in view else "—",
            f"{vs['top1_drop_pp']:+.2f}{note}" if "top1_drop_pp" in vs else "—",
            f"{vs['top1_agreement']:.2%}{note}" if "top1_agreement" in vs else "—",
            *[f"{a['latency_ms'][t]['median']:.1f}" for t in threads],
            f"{a['peak_rss_mb']:.0f}",
            f"{a['activation_bytes'] / 1e6:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--threads", type=thread_list, default=[1, 2])
    parser.add_argument("--runs", type=whole_number(1), default=50)
    parser.add_argument("--out", type=Path, default=Path("artifacts/results-table.json"))
    args = parser.parse_args(argv)
    try:
        models = [args.artifacts / name for _, *names in PAIRS for name in names]
        missing = [str(p) for p in models if not p.is_file()]
        if missing:
            raise ToolkitError(f"missing {', '.join(missing)}: run the two export commands in this script's docstring")
        report = run(RunOptions(artifacts=models, eval_dir=args.eval, threads=args.threads, runs=args.runs))
    except ToolkitError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    result = {"report": report, "int8_over_fp32": ratios(report), "markdown": markdown(report)}
    write_json(args.out, result)
    ui.show(report_table(report))
    print(result["markdown"])
    for row in result["int8_over_fp32"]:
        print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    ui.show(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
