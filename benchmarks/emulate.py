"""`python -m benchmarks emulate`: run the device bundle on ARM's own int8 kernels, under QEMU user-mode emulation.

A CI runner is x86, and the same int8 model is a different program on ARM: ONNX Runtime fuses other kernels
(every convolution becomes an int8 QLinearConv on aarch64, about half on x86), and LiteRT picks its kernels by
the CPU's dot-product and i8mm features. This module builds, once, a Debian arm64 root filesystem with a venv
holding the very runtime versions this project pins (`emulation_env.py`), then runs the bundle's own `run.py`
inside it, exactly as on a Raspberry Pi, for each emulated CPU model. Timings under an emulator are not device
timings, so the runner measures accuracy only (`--accuracy-only`); the report says so per artifact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.emulation_env import PRIVATE_MOUNTS, EmulationEnv, in_namespace_script
from edge_runtime import device_runner
from edge_runtime.formats import BY_NAME
from edge_runtime.hostinfo import usable_cores
from export import ui
from export.errors import ToolkitError


@dataclass(frozen=True)
class ArmCpu:
    """A QEMU CPU model and the /proc/cpuinfo a kernel would show for it (LiteRT's and ONNX Runtime's CPU
    detection reads it; the runtimes choose kernels from the hwcaps QEMU reports for the same model)."""

    name: str
    part: str
    features: str
    like: str


_BASE = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = f"{_BASE} atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
ARM_CPUS: dict[str, ArmCpu] = {
    cpu.name: cpu
    for cpu in (
        ArmCpu("cortex-a72", "0xd08", _BASE, "Raspberry Pi 4: NEON, no dot product"),
        ArmCpu("neoverse-n1", "0xd0c", f"{_V82} ssbs", "Raspberry Pi 5 (Cortex-A76) class: NEON + dot product"),
        ArmCpu("max", "0xd4f", f"{_V82} ssbs sve i8mm bf16 svei8mm", "recent phones: dot product + i8mm + SVE"),
    )
}
DEFAULT_CPUS = ("cortex-a72", "neoverse-n1")


def device_name(cpu: str) -> str:
    return f"aarch64-qemu ({cpu})"


def cpuinfo_text(cpu: ArmCpu, cores: int) -> str:
    block = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n"
    )
    return "".join(block.format(i=i, features=cpu.features, part=cpu.part) for i in range(cores))


def parse_cpus(text: str) -> list[str]:
    """`--cpu cortex-a72,neoverse-n1` (argparse type)."""
    import argparse

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARM_CPUS]
    if not names or unknown:
        choices = ", ".join(ARM_CPUS)
        raise argparse.ArgumentTypeError(f"unknown CPU {unknown[0] if unknown else text!r} (choose from {choices})")
    return list(dict.fromkeys(names))


@contextmanager
def unpacked_bundle(bundle: Path) -> Iterator[Path]:
    """The bundle's root folder (`googlenet-bench/`), unpacked into a temporary folder when it is a tarball,
    after checking every file against its manifest (one line for a corrupted or foreign bundle)."""
    if bundle.is_dir():
        root = bundle if (bundle / device_runner.MANIFEST).is_file() else bundle / "googlenet-bench"
        _verify(root)
        yield root
        return
    if not bundle.is_file():
        raise ToolkitError("bundle not found (make one with `python -m benchmarks bundle`)", bundle)
    with tempfile.TemporaryDirectory(prefix="googlenet-emulate-") as tmp:
        try:
            with tarfile.open(bundle) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ToolkitError(f"not a readable bundle tarball ({exc})", bundle) from None
        roots = [p.parent for p in Path(tmp).glob(f"*/{device_runner.MANIFEST}")]
        if len(roots) != 1:
            raise ToolkitError("not a benchmark bundle (no manifest.json inside)", bundle)
        _verify(roots[0])
        yield roots[0]


def _verify(root: Path) -> None:
    try:
        device_runner.verify_bundle(root)
    except device_runner.RunnerError as exc:
        raise ToolkitError(str(exc)) from None


_PROGRESS = re.compile(r"^progress (\S+) (\d+)/(\d+)$")


def run_on_cpu(env: EmulationEnv, bundle_root: Path, cpu: ArmCpu, only: list[str], threads: int, cores: int) -> dict:
    """The bundle's `run.py` on one emulated CPU; its results JSON, checked to come from aarch64 with XNNPACK."""
    with tempfile.TemporaryDirectory(prefix="googlenet-emulate-run-") as tmp:
        work = Path(tmp)
        (work / "cpuinfo").write_text(cpuinfo_text(cpu, cores), encoding="utf-8")
        (work / "out").mkdir()
        runner = ["/opt/venv/bin/python", "/mnt/bundle/run.py", "--accuracy-only", "--eval-threads", str(threads)]
        runner += ["--device", device_name(cpu.name), "--out", "/mnt/out/results.json"]
        for name in only:
            runner += ["--only", name]
        script = in_namespace_script(
            env.rootfs,
            runner,
            binds={"/mnt/bundle": bundle_root, "/mnt/out": work / "out"},
            cpuinfo=work / "cpuinfo",
            cores=cores,
        )
        process_env = {**env.process_env(), "QEMU_CPU": cpu.name, "GOOGLENET_EDGE_EMULATOR": env.qemu_version()}
        lines = _stream([*PRIVATE_MOUNTS, "sh", "-ec", script], process_env, cpu)
        results = work / "out" / "results.json"
        if not results.is_file():
            last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise ToolkitError(f"the emulated run on {cpu.name} failed: {last.strip()[:300]}")
        report = json.loads(results.read_text(encoding="utf-8"))
    _check_emulated(report, cpu)
    return report


def _stream(command: list[str], env: dict[str, str], cpu: ArmCpu) -> list[str]:
    """Run `command`, turning the runner's `progress` lines into one bar per model; the other lines are kept."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    kept: list[str] = []
    bar = Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=ui.err_console, disable=not ui.err_console.is_terminal,
    )  # fmt: skip
    tasks: dict[str, int] = {}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        with bar:
            assert process.stdout is not None
            for line in process.stdout:
                match = _PROGRESS.match(line.strip())
                if not match:
                    kept.append(line)
                    continue
                name, done, total = match.group(1), int(match.group(2)), int(match.group(3))
                if name not in tasks:
                    tasks[name] = bar.add_task(f"{name} on {cpu.name} (emulated)", total=total)
                bar.update(tasks[name], completed=done)
                if done == total and not ui.err_console.is_terminal:
                    ui.step(f"{name} on {cpu.name} (emulated): {total}/{total} images")
        process.wait()
    finally:
        if process.poll() is None:  # we were interrupted: the emulated runner goes too
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return kept


def _check_emulated(report: dict, cpu: ArmCpu) -> None:
    """Refuse results that do not stand for the device: not aarch64, or LiteRT without XNNPACK."""
    machine = report["host"].get("machine")
    if machine != "aarch64":
        raise ToolkitError(f"the emulated run on {cpu.name} reported platform {machine!r}, not aarch64")
    for artifact in report["artifacts"]:
        runtime = artifact.get("runtime") or {}
        delegate = BY_NAME[artifact["format"]].delegate
        if delegate and not runtime.get(delegate):
            raise ToolkitError(
                f"{artifact['name']} ran without {delegate.upper()} on {cpu.name}: a device would use it, so these "
                "int8 results would not be the device's (the emulated CPU topology is incomplete; --rebuild)"
            )


def results_path(out_dir: Path, cpu: str) -> Path:
    return out_dir / f"results-qemu-{cpu}.json"


def emulate(
    bundle: Path,
    cpus: list[str],
    out_dir: Path,
    env: EmulationEnv,
    only: list[str] | None = None,
    threads: int | None = None,
) -> list[Path]:
    """Run the bundle on each emulated CPU; write `results-qemu-<cpu>.json` files (report schema) for `merge`."""
    from benchmarks.report import validate_report
    from export.artifacts import write_json

    cores = usable_cores()
    threads = threads or cores
    written = []
    with unpacked_bundle(bundle) as root:
        manifest = json.loads((root / device_runner.MANIFEST).read_text(encoding="utf-8"))
        names = [m["name"] for m in manifest["models"]]
        missing = [n for n in only or () if n not in names]
        if missing:
            raise ToolkitError(f"--only {missing[0]}: not in this bundle ({', '.join(names)})", bundle)
        for name in cpus:
            cpu = ARM_CPUS[name]
            ui.step(f"running the bundle on an emulated {cpu.name} ({cpu.like}); accuracy only, not timed")
            report = run_on_cpu(env, root, cpu, list(only or ()), threads, cores)
            target = results_path(out_dir, name)
            write_json(target, validate_report(report, target))
            written.append(target)
    return written
