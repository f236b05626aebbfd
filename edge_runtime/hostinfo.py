"""Facts about the machine that change performance and int8 numerics, for every report header."""

from __future__ import annotations

from functools import cache

from edge_runtime import device_runner


@cache
def host_facts() -> dict:
    """This machine's facts (computed once): the device runner's, so host and device reports match."""
    return device_runner.host_facts()


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
