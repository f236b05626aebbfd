"""The accuracy metrics and the file hash the host reports and the device runner share: one definition for both.

Part of the runtime core the device bundle ships: Python >= 3.9 and numpy only.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict | None:
    """Top-1/top-5 over the labelled rows (None when nothing is labelled)."""
    mask = labels >= 0
    if not mask.any():
        return None
    top5 = np.argsort(-logits[mask], axis=1, kind="stable")[:, :5]
    truth = labels[mask][:, None]
    return {
        "images": int(mask.sum()),
        "top1": float((top5[:, 0:1] == truth).mean()),
        "top5": float((top5 == truth).any(axis=1).mean()),
    }


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely `candidate` logits follow `reference` logits, image by image."""
    ref_top5 = np.argsort(-reference, axis=1, kind="stable")[:, :5]
    cand_top5 = np.argsort(-candidate, axis=1, kind="stable")[:, :5]
    overlap = [len(set(a) & set(b)) / 5.0 for a, b in zip(ref_top5, cand_top5)]
    p, q = softmax(reference), softmax(candidate)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(axis=1)
    ref64, cand64 = reference.astype(np.float64), candidate.astype(np.float64)
    cosine = (ref64 * cand64).sum(1) / (np.linalg.norm(ref64, axis=1) * np.linalg.norm(cand64, axis=1) + 1e-12)
    return {
        "top1_agreement": float((ref_top5[:, 0] == cand_top5[:, 0]).mean()),
        "top5_overlap": float(np.mean(overlap)),
        "kl_mean": float(kl.mean()),
        "cosine_mean": float(cosine.mean()),
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "max_abs_prob_diff": float(np.abs(p - q).max()),
        "logit_range": float(reference.max() - reference.min()),
    }


def round_floats(data: object, digits: int = 7) -> object:
    """Round floats to `digits` significant digits: stable, readable reports where a KL of 3e-9 keeps its meaning."""
    if isinstance(data, float):
        return float(f"{data:.{digits}g}") if math.isfinite(data) else data
    if isinstance(data, dict):
        return {k: round_floats(v, digits) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [round_floats(v, digits) for v in data]
    return data


def accuracy_block(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None, name: str | None) -> dict:
    """The report's `accuracy` entry: top-1/top-5 and, against the reference logits, agreement and drift."""
    block: dict = {"images": len(logits)}
    own = accuracy(logits, labels)
    if own:
        block.update(top1=own["top1"], top5=own["top5"], labelled=own["images"])
    if reference is not None:
        vs = fidelity(reference, logits)
        entry = {"reference": name, **{k: vs[k] for k in ("top1_agreement", "top5_overlap", "kl_mean", "cosine_mean")}}
        ref_acc = accuracy(reference, labels)
        if ref_acc and own:
            entry["top1_drop_pp"] = 100.0 * (ref_acc["top1"] - own["top1"])
            entry["top5_drop_pp"] = 100.0 * (ref_acc["top5"] - own["top5"])
        block["vs_reference"] = entry
    return block


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
