#!/usr/bin/env python3
"""Benchmark the toolkit's .tflite files on an Android phone with TensorFlow Lite's `benchmark_model`.

Standalone on purpose: Python >= 3.9 standard library only and no other file of this repository, because
the device bundle ships it beside the .tflite files and it runs on the user's computer, which drives the
phone over `adb`. It pushes the official benchmark_model binary and every model to /data/local/tmp, runs
each model at each thread count, parses the tool's output (`parse_benchmark_model`) and writes
results-android-<device>.json in the report schema of the host benchmarks.

The prebuilt binary for 64-bit phones is `android_aarch64_benchmark_model`, linked from the TensorFlow Lite
performance page: https://www.tensorflow.org/lite/performance/measurement#native_benchmark_binary
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

try:  # the host: the edge_runtime package
    from edge_runtime.benchmark_model_output import parse_benchmark_model
    from edge_runtime.hostinfo import ISA_FLAGS
except ImportError:  # the bundle's android/ folder: the same files beside this one
    from benchmark_model_output import parse_benchmark_model  # type: ignore[no-redef]
    from hostinfo import ISA_FLAGS  # type: ignore[no-redef]

SCHEMA_VERSION = 1
# LiteRT's row of edge_runtime/formats.py, the one format benchmark_model runs. Written here, not imported: this
# tool runs from the bundle's android/ folder on the standard library alone (tests pin the two equal).
FORMAT, MODEL_SUFFIX = "tflite", ".tflite"
DEVICE_DIR = "/data/local/tmp"
DEVICE_BINARY = f"{DEVICE_DIR}/benchmark_model"
BINARY_NAMES = ("benchmark_model", "android_aarch64_benchmark_model", "android_arm_benchmark_model")
BINARY_PAGE = "https://www.tensorflow.org/lite/performance/measurement#native_benchmark_binary"
NO_ADB = "adb not found on PATH: install Android platform-tools and connect a device (adb devices)"
RUN_TIMEOUT_S = 900.0  # benchmark_model stops each phase after 150 s (--max_secs), plus model loading


# ---------------------------------------------------------------- the device, through adb


class BenchError(Exception):
    """A problem the user fixes (no adb, no phone, no binary, no models): one `error:` line, exit 2."""


def adb(args: list[str], serial: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run one adb command and return it finished: every device call goes through here (tests fake `adb`)."""
    executable = shutil.which("adb")
    if executable is None:
        raise BenchError(NO_ADB)
    command = [executable, *(["-s", serial] if serial else []), *args]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"`adb {' '.join(args)[:80]}` did not finish within {timeout:.0f} s") from None


def shell(command: str, serial: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`adb shell COMMAND` (one string, quoted by the caller: the device's shell splits it)."""
    return adb(["shell", command], serial, timeout)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_device(serial: str | None) -> None:
    """One phone connected, authorized and online, or a one-line hint on what to do."""
    done = adb(["get-state"], serial, timeout=30)
    state = done.stdout.strip()
    if done.returncode == 0 and state == "device":
        return
    detail = _last_line(done.stderr) or state or f"exit status {done.returncode}"
    hint = "; several are connected: pick one with --serial (see adb devices)" if "more than one" in detail else ""
    raise BenchError(
        f"no Android device ready (adb get-state: {detail}): connect a phone with USB debugging on and accept "
        f"its prompt, then check adb devices{hint}"
    )


def _props(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        found = re.match(r"^\[([^\]]+)\]: \[(.*)\]\s*$", line.strip())
        if found:
            props[found.group(1)] = found.group(2)
    return props


def device_facts(serial: str | None) -> dict:
    """The phone's model, SoC, cores, ISA flags and Android version: the report's `host` block."""
    props = _props(shell("getprop", serial).stdout)
    cpuinfo = shell("cat /proc/cpuinfo", serial).stdout
    features: list[str] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Features", "flags") and value.strip():
            features = value.split()
            break
    abi = props.get("ro.product.cpu.abi") or None
    isa = {name for flag, name in ISA_FLAGS.items() if flag in features}
    if abi == "arm64-v8a":
        isa.add("neon")  # mandatory on ARMv8-A even where cpuinfo says nothing
    cores = sum(1 for line in cpuinfo.splitlines() if re.match(r"processor\s*:", line))
    release = props.get("ro.build.version.release")
    return {
        "device": props.get("ro.product.model") or "unknown Android device",
        "manufacturer": props.get("ro.product.manufacturer") or None,
        "cpu": props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware") or "unknown",
        "cores": cores or None,
        "isa": sorted(isa),
        "cpu_features": features,
        "machine": abi,
        "system": f"Android {release}" if release else "Android",
        "sdk": int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk", "").isdigit() else None,
        "runtimes": {},
    }


def push(local: Path, remote: str, serial: str | None) -> None:
    done = adb(["push", str(local), remote], serial, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"adb push {local} failed: {_last_line(done.stderr) or _last_line(done.stdout)}")


def benchmark_command(model: str, threads: int, runs: int, warmup: int, peak_memory: bool = False) -> str:
    """The device command line: the official flags, every word quoted for the device's shell."""
    words = [DEVICE_BINARY, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}"]
    words.append(f"--warmup_runs={warmup}")
    if peak_memory:
        words.append("--report_peak_memory_footprint=true")
    return " ".join(shlex.quote(word) for word in words)


# ---------------------------------------------------------------- models and the report


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def guess_precision(name: str) -> str:
    """googlenet.int8.tflite -> int8, googlenet.fp16.tflite -> fp16, googlenet.tflite -> fp32."""
    tokens = set(re.split(r"[._\-]+", name.lower()))
    if tokens & {"int8", "uint8", "quant", "quantized"}:
        return "int8"
    if tokens & {"fp16", "float16", "f16"}:
        return "fp16"
    if tokens & {"dynamic", "drq"}:
        return "dynamic"
    return "fp32"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_precision(path: Path) -> str:
    """The sidecar's `precision` (`x.tflite.json` or `x.json`), else the bundle manifest's, else the name's."""
    for sidecar in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        data = _read_json(sidecar)
        if isinstance(data, dict) and isinstance(data.get("precision"), str):
            return data["precision"]
    manifest = _read_json(path.parent / "manifest.json")
    models = manifest.get("models") if isinstance(manifest, dict) else None
    for model in models if isinstance(models, list) else []:
        named = isinstance(model, dict) and Path(str(model.get("file", ""))).name == path.name
        if named and isinstance(model.get("precision"), str):
            return model["precision"]
    return guess_precision(path.name)


def find_models(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BenchError(f"{folder}: no such folder (pass --models DIR with the .tflite files)")
    models = sorted(path for path in folder.iterdir() if path.suffix == MODEL_SUFFIX and path.is_file())
    if not models:
        raise BenchError(f"{folder}: no .tflite files (pass --models DIR with the .tflite files)")
    return models


def find_binary(given: Path | None, folder: Path, serial: str | None) -> Path | None:
    """The local benchmark_model to push, or None when the phone already has one in /data/local/tmp."""
    if given is not None:
        if not given.is_file():
            raise BenchError(f"{given}: no such file (--binary takes the downloaded android_aarch64_benchmark_model)")
        return given
    for place in dict.fromkeys((folder, Path.cwd(), Path(__file__).resolve().parent)):
        for name in BINARY_NAMES:
            if (place / name).is_file():
                return place / name
    if shell(f"test -x {DEVICE_BINARY} && echo present", serial).stdout.strip() == "present":
        return None
    raise BenchError(
        f"no benchmark_model binary: download android_aarch64_benchmark_model (see {BINARY_PAGE}) "
        "and pass it with --binary PATH"
    )


def measure_model(path: Path, args: argparse.Namespace, device: str) -> dict:
    """One model at every thread count: the schema's artifact entry (`errors` names failed thread counts)."""
    remote = f"{DEVICE_DIR}/{path.name}"
    latency: dict[str, dict] = {}
    details: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for threads in args.threads:
        print(f"{path.name}: {threads} thread(s) ...", file=sys.stderr, flush=True)
        command = benchmark_command(remote, threads, args.runs, args.warmup, args.peak_memory)
        done = shell(command, args.serial, timeout=RUN_TIMEOUT_S)
        output = done.stdout + done.stderr  # the tool logs INFO to stdout and ERROR to stderr
        try:
            parsed = parse_benchmark_model(output, threads)
        except ValueError as exc:
            errors[str(threads)] = _failure(output) or str(exc)
            print(f"warning: {path.name} with {threads} thread(s): {errors[str(threads)]}", file=sys.stderr)
            continue
        if parsed["threads"] != threads:  # an old binary can ignore the flag: say so rather than mislabel
            said = parsed["threads"]
            print(f"warning: {path.name}: asked for {threads} thread(s), benchmark_model says {said}", file=sys.stderr)
        latency.update(parsed.pop("latency_ms"))
        details[str(threads)] = parsed
    timed = {count: entry for count, entry in latency.items() if entry.get("mean") is not None}
    best = min(timed, key=lambda count: (timed[count]["mean"], int(count))) if timed else None
    first = details[next(iter(details))] if details else {}  # load and first inference: first thread count's
    peaks = [d["peak_rss_mb"] for d in details.values() if d["peak_rss_mb"] is not None]
    artifact = {
        "name": path.name,
        "path": str(path),
        "format": FORMAT,
        "precision": model_precision(path),
        "device": device,
        "size_bytes": path.stat().st_size,
        "load_ms": first.get("load_ms"),
        "first_inference_ms": first.get("first_inference_ms"),
        "latency_ms": latency,
        "throughput": None if best is None else {"threads": int(best), "images_per_s": 1000.0 / timed[best]["mean"]},
        "peak_rss_mb": max(peaks) if peaks else None,
        "accuracy": None,
        "benchmark_model_runs": details,
    }
    if errors:
        artifact["errors"] = errors
    return artifact


def _failure(output: str) -> str | None:
    """The line that says why a run failed: the last ERROR or "failed" line, else the last line (adb's)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "FATAL")) or "failed" in line.lower()]
    return (errors or lines or [None])[-1]


def _round(data: object) -> object:
    if isinstance(data, float):
        return round(data, 4)
    if isinstance(data, dict):
        return {key: _round(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_round(value) for value in data]
    return data


def run(args: argparse.Namespace) -> dict:
    """Check the setup, push, measure every model at every thread count: the whole report."""
    if shutil.which("adb") is None:
        raise BenchError(NO_ADB)
    check_device(args.serial)
    models = find_models(args.models)
    binary = find_binary(args.binary, args.models, args.serial)
    facts = device_facts(args.serial)
    if binary is not None:
        print(f"pushing {binary.name} to {DEVICE_BINARY} ...", file=sys.stderr, flush=True)
        push(binary, DEVICE_BINARY, args.serial)
        shell(f"chmod 755 {DEVICE_BINARY}", args.serial)
    for path in models:
        print(f"pushing {path.name} ...", file=sys.stderr, flush=True)
        push(path, f"{DEVICE_DIR}/{path.name}", args.serial)
    try:
        artifacts = [measure_model(path, args, facts["device"]) for path in models]
    finally:
        shell("rm -f " + " ".join(shlex.quote(f"{DEVICE_DIR}/{path.name}") for path in models), args.serial)
    versions = [r["benchmark_model"]["version"] for a in artifacts for r in a["benchmark_model_runs"].values()]
    facts["runtimes"]["benchmark_model"] = {
        # benchmark_model prints no version as of 2024: the binary's sha256 is what identifies the build
        "version": next((version for version in versions if version), None),
        "binary": binary.name if binary else None,
        "sha256": file_sha256(binary) if binary else None,
        "path_on_device": DEVICE_BINARY,
    }
    settings = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "tool": "benchmark_model"}
    settings["report_peak_memory_footprint"] = args.peak_memory
    return _round({"schema_version": SCHEMA_VERSION, "host": facts, "settings": settings, "artifacts": artifacts})


def _cell(value: object, digits: int = 2) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def print_table(report: dict) -> None:
    """One row per model and thread count, plain text (only the standard library on the user's computer)."""
    host = report["host"]
    print(f"{host['device']} ({host['cpu']}, {host['cores'] or '?'} cores, {host['system']})")
    columns = ("model", "precision", "threads", "mean ms", "median ms", "std ms", "min ms", "max ms", "runs")
    columns += ("img/s", "load ms", "peak MB")
    rows, failures = [], []
    for artifact in report["artifacts"]:
        for count, entry in artifact["latency_ms"].items():
            mean = entry.get("mean")
            stats = [_cell(entry.get(key)) for key in ("mean", "median", "std", "min", "max", "runs")]
            speed = _cell(1000.0 / mean if mean else None, 1)
            memory = _cell(artifact["peak_rss_mb"], 1)
            rows.append(
                (artifact["name"], artifact["precision"], count, *stats, speed, _cell(artifact["load_ms"], 1), memory)
            )
        for count, error in artifact.get("errors", {}).items():
            failures.append(f"{artifact['name']} with {count} thread(s) failed: {error}")
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, *rows]:
        print("  ".join(str(v).ljust(widths[i]) if i < 2 else str(v).rjust(widths[i]) for i, v in enumerate(row)))
    for line in failures:
        print(line)


def default_out(device: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"
    return Path(f"results-android-{slug}.json")


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes counts like 1,2,4 (got {text!r})") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--threads takes counts >= 1 like 1,2,4 (got {text!r})")
    return list(dict.fromkeys(values))


def _whole(minimum: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        return value

    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        description="Benchmark .tflite models on an Android phone over adb with TensorFlow Lite's benchmark_model.",
        epilog=f"benchmark_model: download android_aarch64_benchmark_model, see {BINARY_PAGE}",
    )
    parser.add_argument("--models", type=Path, default=Path("."), help="folder with the .tflite files (default: .)")
    parser.add_argument("--threads", type=_thread_list, default=[1, 2, 4], help="thread counts (default 1,2,4)")
    parser.add_argument("--runs", type=_whole(1), default=50, help="timed runs per thread count (default 50)")
    parser.add_argument("--warmup", type=_whole(0), default=5, help="warm-up runs before timing (default 5)")
    parser.add_argument(
        "--binary",
        type=Path,
        help="the benchmark_model binary for the phone's CPU (default: benchmark_model or "
        "android_aarch64_benchmark_model in --models, the current folder or this script's folder, "
        "else the one already in /data/local/tmp on the phone)",
    )
    parser.add_argument("--serial", help="the phone's adb serial when several are connected (adb devices)")
    parser.add_argument("--out", type=Path, help="results JSON (default results-android-<device>.json)")
    parser.add_argument(
        "--peak-memory",
        action="store_true",
        help="also sample the peak memory (--report_peak_memory_footprint; its thread can slow the timing)",
    )
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_out(report["host"]["device"])
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print_table(report)
    print(f"wrote {out}")
    measured = any(artifact["latency_ms"] for artifact in report["artifacts"])
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
