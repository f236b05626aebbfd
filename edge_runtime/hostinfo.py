"""Facts about the machine that change performance and int8 numerics, for every report header: the same code on
the host, in the device bundle and in its Android tool (Python >= 3.9, standard library only), so host and device
reports match."""

from __future__ import annotations

import os
import platform
import socket
import struct
from functools import cache
from pathlib import Path

# ISA features that decide which int8/fp kernels a runtime can use (cpuinfo flag -> reported name).
ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8",
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "sve": "sve",
}


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask (`taskset`, a container's cpuset, a pinned test
    worker), not the machine's count, so parallel work never starts more threads than it has cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return os.cpu_count() or 1


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _field(text: str, *names: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names and value.strip():
            return value.strip()
    return None


# Arm Ltd. (implementer 0x41) CPU part numbers of common boards and phones: a Pi's cpuinfo has no model name.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2",
}  # fmt: skip


def _cpu_name(text: str) -> str:
    named = _field(text, "model name", "Hardware", "Processor")
    if named:
        return named
    if _field(text, "CPU implementer") == "0x41":
        part = (_field(text, "CPU part") or "").lower()
        return ARM_PARTS.get(part, f"Arm CPU part {part}")
    return platform.processor() or "unknown"


def device_model() -> str | None:
    """Board name on a Raspberry Pi and other device-tree machines."""
    try:
        return Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace") or None
    except OSError:
        return None


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# aarch64 hwcap bits (linux/arch/arm64/include/uapi/asm/hwcap.h): AT_HWCAP = 16, AT_HWCAP2 = 26.
_HWCAP_BITS = {(16, 1): "neon", (16, 20): "dotprod", (16, 22): "sve", (26, 13): "i8mm"}


def aarch64_hwcaps() -> set | None:
    """The ISA names the kernel grants this process on aarch64 (from /proc/self/auxv), or None elsewhere.

    Truer than /proc/cpuinfo, which a container or an emulator may fake: the runtimes choose their int8
    kernels (dot-product, i8mm) from these very bits."""
    if platform.machine() not in ("aarch64", "arm64"):
        return None
    try:
        raw = Path("/proc/self/auxv").read_bytes()
    except OSError:
        return None
    values = dict(struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]))
    return {name for (key, bit), name in _HWCAP_BITS.items() if values.get(key, 0) >> bit & 1}


def emulator() -> dict | None:
    """Set by `python -m benchmarks emulate` for a run under QEMU user-mode emulation (its CPU model)."""
    cpu = os.environ.get("QEMU_CPU")
    return {"qemu_cpu": cpu, "emulator": os.environ.get("GOOGLENET_EDGE_EMULATOR", "qemu-user")} if cpu else None


def read_host_facts() -> dict:
    """CPU, cores, the ISA flags that decide int8 kernels, OS and runtime versions."""
    text = _cpuinfo()
    raw_flags = set((_field(text, "flags", "Features") or "").split())
    isa = sorted({name for flag, name in ISA_FLAGS.items() if flag in raw_flags})
    hwcaps = aarch64_hwcaps()
    if hwcaps is not None:
        isa = sorted(hwcaps | {"neon"})  # NEON is mandatory on ARMv8-A
    facts = {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_name(text),
        "device": device_model(),
        "cores": os.cpu_count(),
        "isa": sorted(isa),
        "python": platform.python_version(),
        "runtimes": {name: _version(name) for name in ("onnxruntime", "ai-edge-litert", "tflite-runtime", "numpy")},
    }
    emulation = emulator()
    if emulation:
        facts["emulation"] = emulation
    return facts


@cache
def host_facts() -> dict:
    """This machine's facts, computed once."""
    return read_host_facts()


def has_vnni(facts: dict | None = None) -> bool:
    isa = (facts or host_facts())["isa"]
    return "avx512_vnni" in isa or "avx_vnni" in isa or "amx_int8" in isa


def int8_host_caveat(facts: dict | None = None) -> str | None:
    """Why int8 accuracy measured here may not be the device's, or None when it should match."""
    facts = facts or host_facts()
    if facts["machine"] in ("x86_64", "AMD64", "i686") and not has_vnni(facts):
        return (
            "this x86 CPU has no VNNI: ONNX Runtime's u8s8 int8 kernels can saturate here, so int8 accuracy "
            "measured on this host can be lower than on ARM or VNNI devices; the emulated figures are the "
            "target-independent ones"
        )
    return None
