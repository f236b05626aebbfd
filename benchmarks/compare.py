"""`python -m benchmarks compare old.json new.json`: what got better or worse between two reports."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.metrics import METRICS, Metric


@dataclass
class Change:
    artifact: str
    device: str
    metric: str
    old: float | None
    new: float | None
    verdict: str  # "better", "worse", "same", "added", "removed"


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


def compare(old: dict, new: dict, metrics: tuple[Metric, ...] = METRICS) -> list[Change]:
    """Every metric of every artifact (matched by name and device) that both reports or either one has.
    int8 ONNX accuracy: the target-independent (emulated) figures, as the gate judges them."""
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
        for metric in metrics:
            a, b = metric.read(before[(name, device)]), metric.read(after[(name, device)])
            changes.append(
                Change(name, device, metric.label, a, b, _verdict(a, b, metric.higher_better, metric.tolerance))
            )
    return changes
