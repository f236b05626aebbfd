"""Parse the output of TFLite's `benchmark_model` (init time, latency statistics, memory footprint).

Its own module so the Android tool (`android_bench.py`) stays small; like it, standard library only: the device
bundle ships both in its `android/` folder.
"""

from __future__ import annotations

import re

NO_TIMINGS = "no benchmark_model timing lines found"
_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
# logcat prefixes of the benchmark app: "07-14 13:14:52.097 22838 22838 I tflite  : " and "I/tflite  (22838): "
_LOGCAT = re.compile(r"^.*?\b[VDIWEF](?:/|\s+)tflite\s*(?:\(\s*\d+\s*\))?\s*:\s?")
_LEVEL = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|FATAL|VERBOSE|DEBUG):\s*")  # TFLITE_LOG prefixes since 2021
_STATS = re.compile(r"^(?:count|curr)=\d")  # anchored: op profiling also prints "Timings (microseconds): count=..."
_PAIR = re.compile(r"(\w+)=" + _NUM)
_RUN_HEADER = re.compile(r"^Running benchmark for (?:at least )?\d+ iterations")
_RUN_START = re.compile(r"^(?:STARTING!|Log parameter values verbosely)")
_SUMMARY = re.compile(r"^(?:Average )?[Ii]nference timings in us:")
_SUMMARY_FIELDS = {
    "init": re.compile(r"\bInit: " + _NUM),
    "first": re.compile(r"\bFirst inference: " + _NUM),
    "warmup": re.compile(r"\bWarmup(?: \(avg\))?: " + _NUM),
    "inference": re.compile(r"(?:\bInference(?: \(avg\))?|\bno stats): " + _NUM),
}
_INIT_SESSION = re.compile(r"Initialized session in " + _NUM + r"\s*ms")
_THREADS = re.compile(r"^Num threads: \[(-?\d+)\]")
_CPU_THREADS = re.compile(r"^#threads used for CPU inference: \[(-?\d+)\]")
_GRAPH = re.compile(r"^Graph: \[(.*)\]\s*$")
_MODEL_SIZE = re.compile(r"The input model file size \(MB\): " + _NUM)
# "Peak memory footprint (MB): init= overall=" is the 2020 name of the same delta line.
_MEM_DELTA = re.compile(
    r"(Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): init="
    + _NUM
    + " overall="
    + _NUM
)
_MEM_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_MEM_END = {
    "end_vm_rss_mb": re.compile(r"^- VmRSS\s*: (\d+) MB"),
    "end_rss_anon_mb": re.compile(r"^\+ RssAnnon\s*: (\d+) MB"),
    "end_rss_file_shmem_mb": re.compile(r"^\+ RssFile \+ RssShmem\s*: (\d+) MB"),
}
_VERSION = re.compile(r"\b(?:TensorFlow Lite|TF ?Lite|LiteRT)(?: runtime)? version:?\s*\[?v?(\d+\.\d+[\w.\-]*)", re.I)


def _message(line: str) -> str:
    """One output line without its logcat or log-level prefix, so stdout and logcat parse alike."""
    text = _LOGCAT.sub("", line.strip(), count=1)
    return _LEVEL.sub("", text, count=1).strip()


def _stats(message: str) -> dict | None:
    """`count=50 first=.. curr=.. min=.. max=.. avg=.. std=.. [p5=.. median=.. p95=..]` as numbers (us)."""
    if not _STATS.match(message):
        return None
    values = {key: float(value) for key, value in _PAIR.findall(message)}
    return values if "count" in values else None


def _is_timing(message: str) -> bool:
    return _stats(message) is not None or bool(_SUMMARY.match(message))


def _runs(messages: list[str]) -> list[list[str]]:
    """Split concatenated output (a whole logcat, a script's log) into one list per benchmark_model run."""
    runs: list[list[str]] = [[]]
    timed = False
    for message in messages:
        if timed and _RUN_START.match(message):
            runs.append([])
            timed = False
        runs[-1].append(message)
        timed = timed or _is_timing(message)
    return runs


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 4)


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1.0)


def _flat(stats: dict) -> dict:
    """A stats line whose runs were all equal prints only `count=N curr=X`: fill min/max/avg/std from it."""
    if "avg" not in stats and "min" not in stats and "max" not in stats and "curr" in stats:
        same = stats["curr"]
        return {"median": same, **stats, "min": same, "max": same, "avg": same, "std": 0.0, "first": same}
    return stats


# benchmark_model prints p5/median/p95 since 2023 and never p90/p99 (kept for the host reports' schema).
_LATENCY_KEYS = ("mean", "std", "min", "max", "median", "p90", "p99", "p5", "p95", "runs")


def _latency(stats: dict | None, mean_us: float | None) -> dict | None:
    """The schema's latency entry (ms); only the mean when the measured-run line itself is missing."""
    if stats is not None and stats.get("count", 0) > 0:
        stats = _flat(stats)
        mean = stats.get("avg", mean_us)
        entry = {key: _ms(stats.get(key)) for key in _LATENCY_KEYS}  # p90/p99 stay null: never printed
        entry.update(mean=_ms(mean), runs=int(stats["count"]))
        return entry
    return None if mean_us is None else {**dict.fromkeys(_LATENCY_KEYS), "mean": _ms(mean_us)}


def _split_stats(blocks: list[tuple[int, dict]], headers: int, summary: dict) -> tuple[dict | None, dict | None]:
    """(warm-up, measured) stats: the tool prints the warm-up line first, the measured one after it."""
    if headers and any(block for block, _ in blocks):
        warmups = [stats for block, stats in blocks if block == 1]
        measured = [stats for block, stats in blocks if block >= 2]
        return (warmups[-1] if warmups else None), (measured[-1] if measured else None)
    lines = [stats for _, stats in blocks]  # trimmed output without the "Running benchmark" headers
    if len(lines) >= 2:
        return lines[0], lines[-1]
    if not lines:
        return None, None
    only = _flat(lines[0])
    if _close(only.get("avg"), summary.get("warmup")) and not _close(only.get("avg"), summary.get("inference")):
        return only, None
    return None, only


def _memory(messages: list[str]) -> dict:
    """The memory lines (MB): footprint deltas since the tool started, the monitored peak, RSS at the end."""
    memory: dict = {
        "reported_as": None,
        "init_footprint_delta_mb": None,
        "overall_footprint_delta_mb": None,
        "overall_peak_mb": None,
        **dict.fromkeys(_MEM_END),
    }
    for message in messages:
        delta = _MEM_DELTA.search(message)
        if delta:
            memory["reported_as"] = f"{delta.group(1)} (MB)"
            memory["init_footprint_delta_mb"] = float(delta.group(2))
            memory["overall_footprint_delta_mb"] = float(delta.group(3))
        peak = _MEM_PEAK.search(message)
        if peak:
            memory["overall_peak_mb"] = float(peak.group(1))
        for key, pattern in _MEM_END.items():
            found = pattern.match(message)
            if found:
                memory[key] = float(found.group(1))
    return memory


def parse_benchmark_model(text: str, threads: int | None = None) -> dict:
    """benchmark_model's stdout or logcat text -> the report schema fragment (times in ms, memory in MB).

    Fields the output lacks are None. With several runs in the text the last complete one counts.
    `threads` names the latency entry when the caller knows it (the output says it only when it was set);
    the result's `threads` is the count the tool printed it used, else `threads`.
    Raises ValueError when there is no timing line at all (a failed run, or not benchmark_model output).
    """
    runs = [run for run in _runs([_message(line) for line in text.splitlines()]) if any(map(_is_timing, run))]
    if not runs:
        raise ValueError(NO_TIMINGS)
    complete = [run for run in runs if any(_SUMMARY.match(message) for message in run)]
    run = (complete or runs)[-1]

    headers = 0
    blocks: list[tuple[int, dict]] = []
    summary: dict = {}
    found: dict = {}
    for message in run:
        if _RUN_HEADER.match(message):
            headers += 1
            continue
        stats = _stats(message)
        if stats is not None:
            blocks.append((headers, stats))
            continue
        if _SUMMARY.match(message):
            for key, pattern in _SUMMARY_FIELDS.items():
                value = pattern.search(message)
                summary[key] = float(value.group(1)) if value else None
            continue
        for key, pattern in (
            ("init_session_ms", _INIT_SESSION),
            ("threads", _THREADS),
            ("cpu_threads", _CPU_THREADS),
            ("graph", _GRAPH),
            ("model_size_mb", _MODEL_SIZE),
            ("version", _VERSION),
        ):
            value = pattern.search(message)
            if value and key not in found:
                found[key] = value.group(1)

    warmup, measured = _split_stats(blocks, headers, summary)
    warmup = _flat(warmup) if warmup else {}
    said = found.get("threads", found.get("cpu_threads"))
    printed = int(said) if said is not None else None
    count = threads if threads is not None else printed
    entry = _latency(measured, summary.get("inference"))
    memory = _memory(run)
    init_us = summary.get("init")
    peak = _either(memory["overall_peak_mb"], memory["overall_footprint_delta_mb"])
    return {
        "load_ms": _ms(init_us) if init_us is not None else _float(found.get("init_session_ms")),
        "first_inference_ms": _ms(_either(summary.get("first"), warmup.get("first"))),
        "warmup_mean_ms": _ms(_either(summary.get("warmup"), warmup.get("avg"))),
        "warmup_runs": int(warmup["count"]) if warmup else None,
        "latency_ms": {} if entry is None else {str(count) if count is not None and count > 0 else "default": entry},
        "peak_rss_mb": peak,
        "memory": memory,
        "threads": printed if printed is not None else count,  # what the tool says it used, when it says
        "graph": found.get("graph"),
        "model_file_size_mb": _float(found.get("model_size_mb")),
        "benchmark_model": {"version": found.get("version")},
    }


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _either(value: float | None, fallback: float | None) -> float | None:
    return fallback if value is None else value
