"""Measure a model the same way on the host and on a device (Raspberry Pi, a phone with Python).

Standalone on purpose: Python >= 3.9, numpy, and onnxruntime or ai-edge-litert; of this repository only the
runtime core files the bundle ships beside it (`formats`, `errors`, `metrics`, `hostinfo`, `kernel_coverage`,
`ceiling`). The host
benchmark runs `measure` in a fresh subprocess per artifact (so the peak RSS is that model's own) and takes its
accuracy metrics from here; `python -m benchmarks bundle` ships this file as `run.py`, where `main()` validates
the bundle and writes `results-<hostname>.json` in the report schema.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _core(name: str):
    """A module of the runtime core, `edge_runtime.<name>`, here and in the device bundle alike. Run as a script
    (the bundle's `run.py` under `python -I`, the measurement subprocess), nothing puts this folder on sys.path:
    it then stands in for the `edge_runtime` package, so the modules beside it import each other as on the host."""
    import importlib
    import importlib.util
    from importlib.machinery import ModuleSpec

    if not __package__ and "edge_runtime" not in sys.modules:
        spec = ModuleSpec("edge_runtime", None, is_package=True)
        spec.submodule_search_locations = [str(Path(__file__).resolve().parent)]
        sys.modules["edge_runtime"] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"edge_runtime.{name}")


formats = _core("formats")
kernel_coverage = _core("kernel_coverage")
ceiling = _core("ceiling")
errors = _core("errors")
metrics = _core("metrics")
hostinfo = _core("hostinfo")
RunnerError = errors.RunnerError
open_session = formats.open_session

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def predict(session, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([session(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


# ---------------------------------------------------------------- latency and memory


def latency_stats(times_ms: list[float]) -> dict:
    """Median / p90 / p99 / mean / std / min / max (ms) over the timed runs."""
    values = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "runs": len(values),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux: VmHWM of /proc/self/status, which belongs to this program's address space. Not ru_maxrss:
    Linux carries it across fork and exec, so a child started by a big parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1048576.0 if sys.platform == "darwin" else maxrss / 1024.0  # bytes on macOS, KiB elsewhere


def measure(path: str | Path, sample: np.ndarray, threads: list[int], runs: int, warmup: int) -> dict:
    """Load time, first inference and latency percentiles per thread count, and the process's peak RSS.

    Meant to run in a fresh process: the peak RSS then is the runtime plus this one model.
    """
    baseline = peak_rss_mb()
    per_threads: dict[str, dict] = {}
    load_ms = first_ms = None
    for count in threads:
        started = time.perf_counter()
        session = open_session(path, count)
        loaded = time.perf_counter()
        session(sample)
        first = time.perf_counter()
        for _ in range(warmup):
            session(sample)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session(sample)
            times.append((time.perf_counter() - t0) * 1000.0)
        stats = latency_stats(times)
        stats.update(load_ms=(loaded - started) * 1000.0, first_inference_ms=(first - loaded) * 1000.0)
        per_threads[str(count)] = stats
        if load_ms is None:
            load_ms, first_ms = stats["load_ms"], stats["first_inference_ms"]
        del session
    best = min(per_threads, key=lambda t: per_threads[t]["median"])
    return {
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "latency_ms": per_threads,
        "throughput": {"threads": int(best), "images_per_s": 1000.0 / per_threads[best]["median"]},
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
    }


def measure_in_subprocess(
    path: str | Path, sample_npy: str | Path, threads: list[int], runs: int, warmup: int, timeout: float = 1800
) -> dict:
    """`measure` in a fresh Python process (this very file run as a script), its JSON read back."""
    command = [sys.executable, str(Path(__file__).resolve()), "measure", str(path), str(sample_npy)]
    command += ["--threads", ",".join(map(str, threads)), "--runs", str(runs), "--warmup", str(warmup)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunnerError(f"{path}: measurement failed ({last})")
    return json.loads(done.stdout)


# ---------------------------------------------------------------- the bundle


def verify_bundle(root: Path) -> dict:
    """The manifest, after checking every file it lists is present with its recorded sha256."""
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunnerError(f"{manifest_path}: not a readable bundle manifest ({exc})") from None
    for name, expected in sorted(manifest.get("files", {}).items()):
        path = root / name
        if not path.is_file():
            raise RunnerError(f"{path}: missing from the bundle; unpack it again")
        if metrics.file_sha256(path) != expected:
            raise RunnerError(f"{path}: corrupted (sha256 differs from the manifest); copy the bundle again")
    return manifest


NOT_TIMED = "not timed: this run emulates the CPU, so its times are not the device's"


def run_bundle(
    root: Path,
    threads: list[int],
    runs: int,
    warmup: int,
    only: list[str] | None = None,
    device: str | None = None,
    accuracy_only: bool = False,
    eval_threads: int = 1,
) -> dict:
    """Every model of the bundle: latency and memory in a subprocess each, accuracy on the bundled inputs.

    `accuracy_only` (runs under an emulated CPU): no timings, which would be the emulator's and not the
    device's, and no float emulation of int8 ONNX, which is target-independent and measured on the host."""
    manifest = verify_bundle(root)
    facts = hostinfo.read_host_facts()
    device = device or facts["device"] or facts["hostname"]
    unknown = sorted(set(only or ()) - {m["name"] for m in manifest["models"]})
    if unknown:
        raise RunnerError(
            f"--only {unknown[0]}: not in this bundle ({', '.join(m['name'] for m in manifest['models'])})"
        )
    labels = np.load(root / manifest["labels"]) if manifest.get("labels") else None
    reference = np.load(root / manifest["reference_outputs"]) if manifest.get("reference_outputs") else None
    inputs_by_file: dict[str, np.ndarray] = {}  # ONNX fp32 and int8 share one preprocessed set
    artifacts = []
    for model in manifest["models"]:
        if only and model["name"] not in only:
            continue
        missing = formats.missing_runtime(model["format"])
        if missing:
            print(f"skipping {model['name']}: {missing}", file=sys.stderr, flush=True)
            continue
        print(f"measuring {model['name']} ({model['format']} {model['precision']}) ...", file=sys.stderr, flush=True)
        if model["inputs"] not in inputs_by_file:
            inputs_by_file[model["inputs"]] = np.load(root / model["inputs"])
        entry = {k: v for k, v in model.items() if k not in ("inputs", "file", "sample", "layer_macs")}
        entry.update(path=model["file"], device=device)
        if accuracy_only:
            entry.update(latency_ms={}, peak_rss_mb=None, timing=NOT_TIMED)
        else:
            entry.update(measure_in_subprocess(root / model["file"], root / model["sample"], threads, runs, warmup))
        entry["accuracy"], entry["runtime"] = evaluate(
            root / model["file"],
            model,
            inputs_by_file[model["inputs"]],
            labels,
            reference,
            manifest.get("reference"),
            threads=eval_threads,
            float_emulation=not accuracy_only,
        )
        sample = np.load(root / model["sample"])
        entry["kernels"] = kernel_coverage.coverage(root / model["file"], sample, model.get("layer_macs"))
        artifacts.append(entry)
    if not artifacts:
        packages = " or ".join(f"{f.package} (for {f.suffix})" for f in formats.FORMATS)
        raise RunnerError(f"nothing measured: pip install {packages}")
    settings = {"threads": [] if accuracy_only else threads, "runs": 0 if accuracy_only else runs, "warmup": warmup}
    settings.update(manifest.get("settings", {}), eval_threads=eval_threads)
    report = {"schema_version": SCHEMA_VERSION, "host": facts, "settings": settings, "artifacts": artifacts}
    if not accuracy_only:
        print("measuring this device's ceiling ...", file=sys.stderr, flush=True)
        gmacs = ceiling.measure_ceiling(threads, ceiling.runtimes_of(artifacts))
        ceiling.attach_ceiling(artifacts, gmacs)
        report["ceiling"] = {"macs": ceiling.CEILING_MACS, "gmacs": gmacs}
    return metrics.round_floats(report)  # type: ignore[return-value]


def _predict_with_progress(session, inputs: np.ndarray, label: str, batch_size: int = 4) -> np.ndarray:
    """`predict`, printing `progress <label> <done>/<total>` lines (stderr) that a caller can turn into a bar."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        outputs.append(session(inputs[start : start + batch_size]))
        print(f"progress {label} {min(start + batch_size, len(inputs))}/{len(inputs)}", file=sys.stderr, flush=True)
    return np.concatenate(outputs)


def evaluate(
    path: Path,
    model: dict,
    inputs: np.ndarray,
    labels,
    reference: np.ndarray | None,
    reference_name: str | None,
    threads: int = 1,
    float_emulation: bool = True,
) -> tuple:
    """Accuracy vs the labels and the FP32 reference outputs recorded on the host for the same inputs, and
    what the runtime ran it with (for LiteRT: how many XNNPACK delegate kernels)."""
    session = open_session(path, threads)
    runtime = {"threads": threads}
    delegate = formats.format_of(path).delegate
    if delegate:
        runtime.update({delegate: session.delegated_nodes > 0, "delegate_nodes": session.delegated_nodes})
    if labels is None and reference is None:
        return None, runtime
    labels = labels if labels is not None else np.full(len(inputs), -1)
    logits = _predict_with_progress(session, inputs, model["name"])
    block = metrics.accuracy_block(logits, labels, reference, reference_name)
    if float_emulation and formats.has_emulated_run(model["format"], model["precision"]):
        emulated = predict(open_session(path, threads, emulate=True), inputs)
        block["emulated"] = metrics.accuracy_block(emulated, labels, reference, reference_name)
    return block, runtime


def print_table(report: dict) -> None:
    """A plain table (no third-party library on the device)."""
    columns = ("model", "precision", "size MB", "top-1", "drop pp", "agree", "ms p50", "threads", "peak MB")
    rows = []
    for a in report["artifacts"]:
        acc = a.get("accuracy") or {}
        vs = acc.get("vs_reference") or {}
        best = str(a["throughput"]["threads"]) if a.get("throughput") else None
        rows.append(
            (
                a["name"],
                a["precision"],
                f"{a['size_bytes'] / 1e6:.2f}",
                f"{acc['top1']:.1%}" if "top1" in acc else "-",
                f"{vs['top1_drop_pp']:+.2f}" if "top1_drop_pp" in vs else "-",
                f"{vs['top1_agreement']:.1%}" if "top1_agreement" in vs else "-",
                f"{a['latency_ms'][best]['median']:.1f}" if best else "not timed",
                best or "-",
                f"{a['peak_rss_mb']:.0f}" if a.get("peak_rss_mb") is not None else "-",
            )
        )
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def thread_list(text: str) -> list[int]:
    """`--threads 1,2,4` (sorted, without repeats)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes counts like 1,2 (got {text!r})") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--threads takes counts >= 1 like 1,2 (got {text!r})")
    return sorted(set(values))


def whole_number(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected at least {minimum}, got {value}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description="Benchmark the models of this bundle (or, with `measure`, one model).")
    parser.add_argument("command", nargs="?", default="bundle", choices=("bundle", "measure"))
    parser.add_argument("model", nargs="?", help="measure: the model file")
    parser.add_argument("sample", nargs="?", help="measure: an .npy input batch in the model's preprocessing")
    parser.add_argument("--threads", type=thread_list, default=[1, 2], help="thread counts, e.g. 1,2,4")
    parser.add_argument("--runs", type=whole_number(1), default=50, help="timed runs per thread count")
    parser.add_argument("--warmup", type=whole_number(0), default=5, help="untimed runs before timing")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="unpacked bundle")
    parser.add_argument("--only", action="append", help="only this model file name (repeatable)")
    parser.add_argument("--device", help="name for this device in the report (default: board model or hostname)")
    parser.add_argument("--out", type=Path, help="results JSON (default results-<hostname>.json)")
    parser.add_argument(
        "--accuracy-only", action="store_true", help="no timings (for an emulated CPU, whose times mean nothing)"
    )
    parser.add_argument("--eval-threads", type=whole_number(1), default=1, help="threads for the accuracy pass")
    args = parser.parse_args(argv)
    try:
        if args.command == "measure":
            if not args.model or not args.sample:
                parser.error("measure needs MODEL and SAMPLE.npy")
            sample = np.load(args.sample)
            result = measure(args.model, sample, args.threads, args.runs, args.warmup)
            print(json.dumps(result))
            return 0
        report = run_bundle(
            args.bundle,
            args.threads,
            args.runs,
            args.warmup,
            args.only,
            args.device,
            args.accuracy_only,
            args.eval_threads,
        )
    except errors.ToolkitError as exc:  # RunnerError's base: every one-line error of the runtime core
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"results-{socket.gethostname()}.json")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print_table(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
