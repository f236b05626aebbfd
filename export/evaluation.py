"""Accuracy and FP32-vs-other fidelity on real images: the numbers every report in the toolkit shares.

The metric functions live in `edge_runtime.device_runner` (standalone, so a device computes exactly the same
figures) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.metrics import accuracy, fidelity, round_floats, softmax
from edge_runtime.sessions import Runner
from export.errors import ToolkitError
from export.images import list_images, preprocess_paths
from export.labels import LabelSet, label_for_image
from export.preprocess import Preprocess
from export.ui import progress


@dataclass
class EvalSet:
    """Preprocessed images with their labels (-1 where unknown), in a stable order."""

    paths: list[Path]
    inputs: np.ndarray  # [N, ...] float32 in the model's layout
    labels: np.ndarray  # [N] int64, -1 = unlabelled
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    skipped_non_images: int = 0

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())

    def __len__(self) -> int:
        return len(self.paths)


def load_eval_set(
    paths: Sequence[Path],
    root: Path | None,
    preprocess: Preprocess,
    labels: LabelSet | None,
    description: str = "Loading images",
) -> EvalSet:
    """Preprocess `paths`; unreadable images are recorded by name and left out, never fatal."""
    errors: list[tuple[Path, str]] = []
    kept: list[Path] = []
    tensors: list[np.ndarray] = []
    for path, tensor in progress(preprocess_paths(paths, preprocess, errors), description, total=len(paths)):
        kept.append(path)
        tensors.append(tensor)
    inputs = np.stack(tensors) if tensors else np.zeros((0, *preprocess.input_shape), np.float32)
    return EvalSet(kept, inputs, labels_of(kept, root, labels), errors)


def labels_of(paths: Sequence[Path], root: Path | None, labels: LabelSet | None) -> np.ndarray:
    """Class index of each image (from its wnid file-name prefix or class sub-folder under `root`), -1 if unknown."""
    found = [label_for_image(p, root, labels) if root is not None else None for p in paths]
    return np.array([-1 if label is None else int(label) for label in found], dtype=np.int64)


def load_eval_folder(
    folder: Path, preprocess: Preprocess, labels: LabelSet | None, exclude: set[Path] | None = None
) -> EvalSet:
    listing = list_images(folder)
    # Compare resolved paths: `--calib ../data` and `--eval /abs/data` name the same files.
    excluded = {Path(p).resolve() for p in exclude or ()}
    chosen = [p for p in listing.images if not excluded or p.resolve() not in excluded]
    if not chosen:
        raise ToolkitError("no images to evaluate on", folder)
    result = load_eval_set(chosen, folder, preprocess, labels, "Loading eval images")
    result.skipped_non_images = len(listing.skipped_non_images)
    return result


def predict(runner: Runner, inputs: np.ndarray, description: str, batch_size: int = 16) -> np.ndarray:
    """Logits for all inputs, with a progress bar."""
    starts = range(0, len(inputs), batch_size)
    workers = getattr(runner, "workers", 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(lambda i: runner(inputs[i : i + batch_size]), starts)
            chunks = list(progress(results, description, total=len(starts)))
    else:
        chunks = [runner(inputs[i : i + batch_size]) for i in progress(starts, description, total=len(starts))]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)


def check_logits_match(expected: np.ndarray, got: np.ndarray, relative: float, what: str, path: Path) -> dict:
    """Max |expected - got| on logits must stay within `relative` x the logit range, else a ToolkitError
    naming `what` disagreed; returns the figures for the artifact's `validation` record."""
    logit_range = float(expected.max() - expected.min())
    max_err = float(np.abs(expected - got).max())
    limit = relative * max(logit_range, 1e-6)
    if max_err > limit:
        raise ToolkitError(
            f"{what}: max logit error {max_err:.3g} > {limit:.3g} ({relative:g} x logit range {logit_range:.3g})",
            path,
        )
    return {
        "images": len(expected),
        "max_abs_logit_diff": max_err,
        "logit_range": logit_range,
        "tolerance": limit,
        "passed": True,
    }


def measure_drift(runner: Runner, eval_set: EvalSet, fp32_logits: np.ndarray, description: str) -> dict:
    """Accuracy of `runner` on the eval set and its fidelity to the FP32 logits on the same images (the drift
    report of every artifact, FP32 TFLite included, so it lives below the quantizers)."""
    logits = predict(runner, eval_set.inputs, description)
    result: dict = {"fidelity": fidelity(fp32_logits, logits), "accuracy": accuracy(logits, eval_set.labels)}
    reference = accuracy(fp32_logits, eval_set.labels)
    if reference and result["accuracy"]:
        result["top1_drop_pp"] = 100.0 * (reference["top1"] - result["accuracy"]["top1"])
        result["top5_drop_pp"] = 100.0 * (reference["top5"] - result["accuracy"]["top5"])
    return result


__all__ = ["EvalSet", "accuracy", "check_logits_match", "fidelity", "labels_of", "load_eval_folder", "load_eval_set"]
__all__ += ["predict"]
__all__ += ["measure_drift", "round_floats", "softmax"]
