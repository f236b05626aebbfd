"""The validation views the studies measure on, so that each study splits a draw the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.int8_fidelity import _validation_split
from quantize.calibration import ArraySource, FolderSource


def validation_views(loaded, calib: Path, seed: int, count: int = 30) -> tuple[ArraySource, np.ndarray]:
    """Calibration draw `seed` (100 photos) split as `benchmarks.int8_fidelity --validation 30` splits it: the
    photos to fit on, and the `count` held-out ones followed by their mirror images (NCHW). The evaluation
    photos are never read."""
    draw = FolderSource(calib, loaded.preprocess, size=100, seed=seed)
    fit, held = _validation_split(draw, loaded, calib, count, seed)
    return fit, np.concatenate([held.inputs, held.inputs[..., ::-1]]).copy()
