"""`python -m benchmarks compare old.json new.json`: what got better or worse between two reports."""

from __future__ import annotations

from dataclasses import dataclass

# (label, how to read it from an artifact, True when higher is better, relative tolerance that counts as "same")
METRICS: tuple[tuple[str, str, bool, float], ...] = (
    ("size MB", "size_mb", False, 0.0),
    ("MACs", "macs", False, 0.0),
    ("top-1", "top1", True, 0.0),
    ("top-1 drop pp", "top1_drop_pp", False, 0.0),
    ("agreement", "top1_agreement", True, 0.0),
    ("ms p50 (best threads)", "latency_median", False, 0.05),
    ("peak RSS MB", "peak_rss_mb", False, 0.05),
    ("activation MB", "activation_mb", False, 0.0),
)


@dataclass
class Change:
    artifact: str
    device: str
    metric: str
    old: float | None
    new: float | None
    verdict: str  # "better", "worse", "same", "added", "removed"


def _values(artifact: dict) -> dict[str, float | None]:
    acc = artifact.get("accuracy") or {}
    view = acc.get("emulated") or acc  # int8 ONNX: the target-independent figures, as the gate
    vs = view.get("vs_reference") or {}
    best = str((artifact.get("throughput") or {}).get("threads", ""))
    latency = (artifact.get("latency_ms") or {}).get(best) or {}
    return {
        "size_mb": artifact["size_bytes"] / 1e6,
        "macs": artifact.get("macs"),
        "top1": view.get("top1"),
        "top1_drop_pp": vs.get("top1_drop_pp"),
        "top1_agreement": vs.get("top1_agreement"),
        "latency_median": latency.get("median"),
        "peak_rss_mb": artifact.get("peak_rss_mb"),
        "activation_mb": artifact["activation_bytes"] / 1e6 if artifact.get("activation_bytes") else None,
    }


def _verdict(old: float | None, new: float | None, higher_better: bool, tolerance: float) -> str:
    if old is None and new is None:
        return "same"
    if old is None:
        return "added"
    if new is None:
        return "removed"
    if abs(new - old) <= tolerance * abs(old) or new == old:
        return "same"
    return "better" if (new > old) == higher_better else "worse"


def compare(old: dict, new: dict) -> list[Change]:
    """Every metric of every artifact (matched by name and device) that both reports or either one has."""
    key = lambda a: (a["name"], a["device"])  # noqa: E731
    before = {key(a): a for a in old["artifacts"]}
    after = {key(a): a for a in new["artifacts"]}
    changes = []
    for name, device in list(dict.fromkeys([*before, *after])):
        if (name, device) not in after:
            changes.append(Change(name, device, "artifact", None, None, "removed"))
            continue
        if (name, device) not in before:
            changes.append(Change(name, device, "artifact", None, None, "added"))
            continue
        old_values, new_values = _values(before[(name, device)]), _values(after[(name, device)])
        for label, field_name, higher_better, tolerance in METRICS:
            a, b = old_values[field_name], new_values[field_name]
            changes.append(Change(name, device, label, a, b, _verdict(a, b, higher_better, tolerance)))
    return changes
