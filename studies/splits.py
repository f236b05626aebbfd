"""The validation views the studies measure on, so that each study splits a draw the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.int8_fidelity import _validation_split
from quantize.calibration import ArraySource, FolderSource


def split_study_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of every study on validation splits: weights, photos, draw seeds, the JSON to write."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    return parser


def validation_views(loaded, calib: Path, seed: int, count: int = 30) -> tuple[ArraySource, np.ndarray]:
    """Calibration draw `seed` (100 photos) split as `benchmarks.int8_fidelity --validation 30` splits it: the
    photos to fit on, and the `count` held-out ones followed by their mirror images (NCHW). The evaluation
    photos are never read."""
    draw = FolderSource(calib, loaded.preprocess, size=100, seed=seed)
    fit, held = _validation_split(draw, loaded, calib, count, seed)
    return fit, np.concatenate([held.inputs, held.inputs[..., ::-1]]).copy()
