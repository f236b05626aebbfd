"""The `run`, `gate`, `compare`, `plot`, `bundle`, `merge` and `schema` subcommands: arguments and terminal output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime import device_runner
from export import ui
from export.errors import ToolkitError

thread_counts = device_runner.thread_list
count = device_runner.whole_number


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifacts", nargs="*", type=Path, help="models or folders (default: artifacts/)")
    parser.add_argument("--reference", type=Path, help="FP32 model to compare against (default: the FP32 ONNX)")
    parser.add_argument("--eval", type=Path, help="labelled images (wnid file-name prefix or class sub-folders)")
    parser.add_argument("--eval-size", type=count(1), help="a seeded stratified subset of --eval")
    parser.add_argument("--threads", type=thread_counts, default=[1, 2], help="thread counts (default 1,2)")
    parser.add_argument("--runs", type=count(1), default=50, help="timed runs per thread count (default 50)")
    parser.add_argument("--warmup", type=count(0), default=5, help="untimed runs first (default 5)")
    parser.add_argument("--layers", action="store_true", help="also store per-layer params/MACs in the report")
    parser.add_argument("--out", type=Path, default=Path("artifacts/report.json"), help="report JSON path")
    parser.add_argument("--plot", type=Path, nargs="?", const=True, help="also write a PNG (default: beside --out)")


def run_run(args: argparse.Namespace) -> int:
    from benchmarks.plot import plot_report, require_matplotlib
    from benchmarks.run import RunOptions, run
    from benchmarks.table import report_table
    from export.artifacts import write_json

    if args.eval is not None and not args.eval.is_dir():
        raise ToolkitError("evaluation folder not found", args.eval)
    if args.plot is not None:
        require_matplotlib()
    options = RunOptions(
        artifacts=list(args.artifacts),
        reference=args.reference,
        eval_dir=args.eval,
        eval_size=args.eval_size,
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
        layers=args.layers,
    )
    report = run(options)
    ui.show(report_table(report))
    write_json(args.out, report)
    ui.show(f"wrote {args.out}")
    if args.plot is not None:
        target = args.out.with_suffix(".png") if args.plot is True else args.plot
        ui.show(f"wrote {plot_report(report, target)}")
    return 0


def configure_gate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", type=Path, help="report.json from `benchmarks run` (or `merge`)")
    from benchmarks.metrics import THRESHOLDS

    for limit in THRESHOLDS:
        flag = "--" + limit.setting.replace("_", "-")
        parser.add_argument(flag, type=float, metavar=limit.metavar, help=limit.help)
    parser.add_argument("--accuracy", choices=("emulated", "host"), help="int8 ONNX figures to judge")
    parser.add_argument(
        "--device", action="append", metavar="NAME", help="judge only this device of a merged report (repeatable)"
    )
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML")


def run_gate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from benchmarks.gate import judge, junit_xml, thresholds_from_pyproject
    from benchmarks.metrics import THRESHOLDS
    from benchmarks.report import load_report

    for limit in THRESHOLDS:
        value = getattr(args, limit.setting)
        if limit.fraction and value is not None and not 0 <= value <= 1:
            flag = "--" + limit.setting.replace("_", "-")
            raise ToolkitError(f"{flag} is a fraction between 0 and 1 (got {value})")
    report = load_report(args.report)
    limits, source = thresholds_from_pyproject()
    settings = [*(limit.setting for limit in THRESHOLDS), "accuracy"]
    overrides = {k: getattr(args, k) for k in settings if getattr(args, k) is not None}
    limits = replace(limits, **overrides)
    verdicts = judge(report, limits, args.device)
    rows = [
        (v.name, v.device, "pass" if v.passed else "FAIL", "; ".join(v.failures) or ", ".join(v.checked))
        for v in verdicts
    ]
    settings = ", ".join(f"{k}={v}" for k, v in vars(limits).items() if v is not None)
    ui.show(
        ui.table(
            f"Gate ({settings}{'; from ' + str(source) if source else ''})",
            ("artifact", "device", "", "checked, or why it failed"),
            rows,
        )
    )
    if args.junit:
        junit_xml(verdicts, args.junit)
        ui.show(f"wrote {args.junit}")
    for verdict in verdicts:
        if not verdict.passed:
            print(f"FAIL {verdict.name} [{verdict.device}]: {'; '.join(verdict.failures)}", file=sys.stderr)
    return 0 if all(v.passed for v in verdicts) else 1


def configure_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, help="the earlier report.json")
    parser.add_argument("new", type=Path, help="the later report.json")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the changes as JSON")
    parser.add_argument("--all", action="store_true", help="also list metrics that stayed the same")


def run_compare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from benchmarks.compare import compare
    from benchmarks.report import load_report
    from export.artifacts import write_json

    changes = compare(load_report(args.old), load_report(args.new))
    style = {"better": "[green]better[/green]", "worse": "[red]worse[/red]"}
    shown = [c for c in changes if args.all or c.verdict != "same"]
    rows = [(c.artifact, c.device, c.metric, _fmt(c.old), _fmt(c.new), style.get(c.verdict, c.verdict)) for c in shown]
    counts = {v: sum(c.verdict == v for c in changes) for v in ("better", "worse", "same")}
    title = f"{args.old} -> {args.new}: {counts['better']} better, {counts['worse']} worse, {counts['same']} same"
    ui.show(ui.table(title, ("artifact", "device", "metric", "old", "new", ""), rows))
    if args.json:
        write_json(args.json, {"old": str(args.old), "new": str(args.new), "changes": [asdict(c) for c in changes]})
        ui.show(f"wrote {args.json}")
    return 0


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"


def configure_schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="write the JSON Schema to a file")
    parser.add_argument("--sidecar", action="store_true", help="the artifacts' sidecar schema, not the report's")


def run_schema(args: argparse.Namespace) -> int:
    from benchmarks.report import REPORT_SCHEMA
    from export.artifact_record import SIDECAR_SCHEMA
    from export.artifacts import write_json

    schema = SIDECAR_SCHEMA if args.sidecar else REPORT_SCHEMA
    if args.out:
        write_json(args.out, schema)
    else:
        print(json.dumps(schema, indent=2))
    return 0


def configure_plot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", type=Path, help="report.json (from run or merge)")
    parser.add_argument("--out", type=Path, help="PNG path (default: beside the report)")


def run_plot(args: argparse.Namespace) -> int:
    from benchmarks.plot import plot_report
    from benchmarks.report import load_report

    report = load_report(args.report)
    ui.show(f"wrote {plot_report(report, args.out or args.report.with_suffix('.png'))}")
    return 0


def configure_bundle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifacts", nargs="*", type=Path, help="models or folders (default: artifacts/)")
    parser.add_argument("--eval", type=Path, required=True, help="labelled images to preprocess into the bundle")
    parser.add_argument("--eval-size", type=count(1), default=100, help="a seeded stratified subset (default 100)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/googlenet-bench.tar.gz"), help="the tarball")


def run_bundle(args: argparse.Namespace) -> int:
    from benchmarks.bundle import BUNDLE_ROOT, DEVICE_INSTALL, build_bundle

    if not args.eval.is_dir():
        raise ToolkitError("evaluation folder not found", args.eval)
    if not args.out.name.endswith((".tar.gz", ".tgz")):
        raise ToolkitError("--out must end in .tar.gz or .tgz", args.out)
    out, manifest = build_bundle(list(args.artifacts), args.eval, args.eval_size, args.out)
    rows = [(m["name"], m["format"], m["precision"], f"{m['size_bytes'] / 1e6:.2f} MB") for m in manifest["models"]]
    ui.show(
        ui.table(f"Bundle {out} ({out.stat().st_size / 1e6:.1f} MB)", ("model", "format", "precision", "size"), rows)
    )
    ui.show(f"{manifest['settings']['eval_images']} evaluation images, reference {manifest['reference']}")
    steps = f"{DEVICE_INSTALL} && python3 {BUNDLE_ROOT}/run.py"
    ui.show(f"on the device: tar xf {out.name} && {steps}")
    return 0


def configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", type=Path, help="report.json and results-*.json files")
    parser.add_argument("--out", type=Path, default=Path("artifacts/merged.json"), help="merged report path")


def run_merge(args: argparse.Namespace) -> int:
    from benchmarks.bundle import merge_reports
    from benchmarks.report import load_report
    from benchmarks.table import report_table
    from export.artifacts import write_json

    merged = merge_reports([(path, load_report(path)) for path in args.reports])
    ui.show(report_table(merged))
    write_json(args.out, merged)
    ui.show(f"wrote {args.out}")
    return 0


def configure_emulate(parser: argparse.ArgumentParser) -> None:
    from benchmarks.emulate import ARM_CPUS, DEFAULT_CPUS, parse_cpus

    parser.add_argument(
        "bundle", nargs="?", type=Path, default=Path("artifacts/googlenet-bench.tar.gz"),
        help="bundle tarball or unpacked folder from `benchmarks bundle` (default artifacts/googlenet-bench.tar.gz)",
    )  # fmt: skip
    cpus = "; ".join(f"{c.name} = {c.like}" for c in ARM_CPUS.values())
    parser.add_argument(
        "--cpu", type=parse_cpus, default=list(DEFAULT_CPUS), help=f"emulated CPUs, comma-separated ({cpus})"
    )
    parser.add_argument("--only", action="append", metavar="MODEL", help="only this model file name (repeatable)")
    parser.add_argument("--out-dir", type=Path, default=Path("artifacts"), help="where results-qemu-<cpu>.json go")
    parser.add_argument("--threads", type=count(1), help="inference threads inside the emulator (default: cores)")
    parser.add_argument("--setup", action="store_true", help="only prepare (or verify) the aarch64 environment")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached aarch64 environment")
    parser.add_argument("--cache", type=Path, help="cache (default $GOOGLENET_EDGE_CACHE, ~/.cache/googlenet-edge)")
    parser.add_argument("--mirror", help="Debian mirror for the first setup (default: the one apt uses here)")


def run_emulate(args: argparse.Namespace) -> int:
    from benchmarks.bundle import merge_reports
    from benchmarks.emulate import emulate
    from benchmarks.emulation_env import EmulationEnv, default_cache_dir, runtime_pins
    from benchmarks.report import load_report
    from benchmarks.table import report_table

    env = EmulationEnv(args.cache or default_cache_dir(), runtime_pins())
    if not args.setup and not args.bundle.exists():
        raise ToolkitError("bundle not found (make one with `python -m benchmarks bundle`)", args.bundle)
    import time

    started = time.monotonic()
    built = env.setup(rebuild=args.rebuild, mirror=args.mirror)
    verb = "built" if built else "verified"
    ui.show(f"aarch64 environment {verb} in {time.monotonic() - started:.1f} s: {env.path}")
    if args.setup:
        return 0
    written = emulate(args.bundle, args.cpu, args.out_dir, env, args.only, args.threads)
    merged = merge_reports([(path, load_report(path)) for path in written])
    ui.show(report_table(merged))
    ui.show("emulated CPUs: accuracy as ARM's kernels compute it; not timed (an emulator's times are not a device's)")
    for path in written:
        ui.show(f"wrote {path}")
    ui.show(f"merge with the host's report: python -m benchmarks merge report.json {' '.join(map(str, written))}")
    return 0
