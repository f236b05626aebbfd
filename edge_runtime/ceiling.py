"""How fast this machine can multiply-add at all, per runtime, precision and thread count: the ceiling an
artifact's achieved GMAC/s is a share of.

One 3x3 convolution, 256 -> 256 channels on a 28x28 map (462 M multiply-adds, a GEMM with K = 2304: large
enough for each runtime's best kernel; a 1x1 one was beaten by the whole int8 model on XNNPACK), timed through
the same runtimes as the models: ONNX Runtime FP32 and int8 (QDQ fused into QLinearConv, with uint8 and with
int8 activations: the faster one counts) and LiteRT FP32 and int8 with XNNPACK. The host writes the models
(`benchmarks.ceiling_models`) into its cache and into each device bundle's `ceiling/` beside this file, so this
runs on the device too: Python >= 3.9, numpy and the runtimes only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_runtime.formats import BY_NAME, format_of, open_session

CHANNELS, KERNEL, SIDE = 256, 3, 28
CEILING_MACS = CHANNELS * CHANNELS * KERNEL * KERNEL * SIDE * SIDE
CEILING_DIR = Path(__file__).resolve().parent / "ceiling"
# (runtime, precision) -> model files; for several, the fastest counts (the kernel a host prefers)
CEILING_MODELS = {
    ("onnxruntime", "fp32"): ("ceiling.onnx",),
    ("onnxruntime", "int8"): ("ceiling.u8s8.onnx", "ceiling.s8s8.onnx"),
    ("litert", "fp32"): ("ceiling.tflite",),
    ("litert", "int8"): ("ceiling.int8.tflite",),
}
CEILING_INPUT = {"NCHW": (1, CHANNELS, SIDE, SIDE), "NHWC": (1, SIDE, SIDE, CHANNELS)}  # by the input layout


def _runner(path: Path, threads: int):
    session = open_session(path, threads)
    shape = CEILING_INPUT[format_of(path).layout]
    sample = np.random.default_rng(0).uniform(-2, 2, shape).astype(np.float32)
    return lambda: session(sample)


def measure_ceiling(threads: list, runtimes: set, runs: int = 15, folder: Path = CEILING_DIR) -> dict:
    """{runtime: {precision: {threads: GMAC/s}}} for the runtimes given. One runtime at a time (ONNX Runtime's
    idle workers spin after each run and would steal a core from LiteRT), its models timed interleaved
    (round-robin), so a busy machine slows them alike. Sessions come from `formats.open_session`, the device
    runner's, so the ceiling runs in exactly the sessions (and XNNPACK setup) models get."""
    result: dict = {}
    for count in threads:
        for runtime in sorted(runtimes, reverse=True):  # onnxruntime, then litert
            runners = {
                (precision, name): _runner(folder / name, count)
                for (owner, precision), names in CEILING_MODELS.items()
                if owner == runtime
                for name in names
                if (folder / name).exists()
            }
            times: dict = {key: [] for key in runners}
            for _ in range(3):  # warm-up: first-call allocations, weight packing, the previous runtime's leftovers
                for run in runners.values():
                    run()
            for _ in range(runs):
                for key, run in runners.items():
                    started = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - started)
            for (precision, _name), measured in times.items():
                gmacs = CEILING_MACS / float(np.median(measured)) / 1e9
                slot = result.setdefault(runtime, {}).setdefault(precision, {})
                slot[str(count)] = round(max(gmacs, slot.get(str(count), 0.0)), 2)
            del runners
    return result


def ceiling_share(macs: int, median_ms: float, ceiling: dict, runtime: str, precision: str, threads):
    """(achieved GMAC/s, share of the ceiling) for one timed artifact, or (GMAC/s, None) without a ceiling."""
    achieved = macs / (median_ms / 1000) / 1e9
    peak = ceiling.get(runtime, {}).get(precision, {}).get(str(threads))
    return round(achieved, 2), (round(achieved / peak, 3) if peak else None)


def attach_ceiling(entries: list, ceiling: dict) -> None:
    """Give each timed report entry `ceiling` = {threads: {gmacs, share}}: its achieved GMAC/s (MACs per
    image / median latency) and that as a share of this machine's ceiling for its runtime and precision."""
    for entry in entries:
        if not entry.get("macs") or not entry.get("latency_ms"):
            continue
        runtime = BY_NAME[entry["format"]].runtime if entry["format"] in BY_NAME else ""
        per_threads = {}
        for threads, stats in entry["latency_ms"].items():
            gmacs, share = ceiling_share(entry["macs"], stats["median"], ceiling, runtime, entry["precision"], threads)
            per_threads[threads] = {"gmacs": gmacs, "share": share}
        entry["ceiling"] = per_threads


def runtimes_of(entries: list) -> set:
    return {BY_NAME[e["format"]].runtime for e in entries if e["format"] in BY_NAME}
