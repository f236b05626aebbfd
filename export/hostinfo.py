"""Facts about the machine that change performance and int8 numerics, for every report header."""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

# ISA features that decide which int8/fp kernels a runtime can use.
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


def device_model() -> str | None:
    """Board name on a Raspberry Pi and other device-tree machines."""
    try:
        return Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace") or None
    except OSError:
        return None


@cache
def host_facts() -> dict:
    text = _cpuinfo()
    raw_flags = set((_field(text, "flags", "Features") or "").split())
    isa = sorted({name for flag, name in ISA_FLAGS.items() if flag in raw_flags})
    if platform.machine() in ("aarch64", "arm64") and "neon" not in isa:
        isa.append("neon")  # mandatory on ARMv8-A even where cpuinfo says nothing
    return {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu": _field(text, "model name", "Hardware", "Processor") or platform.processor() or "unknown",
        "device": device_model(),
        "cores": os.cpu_count(),
        "isa": sorted(isa),
        "python": platform.python_version(),
        "runtimes": {name: _version(name) for name in ("onnxruntime", "ai-edge-litert", "numpy")},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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
