"""Where the shared, never-committed assets (weights, photos, labels) live."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "GOOGLENET_SHARED"
WEIGHTS_ENV = "GOOGLENET_WEIGHTS"
DEFAULT_OUT = Path("artifacts")
MODEL_STEM = "googlenet"  # googlenet.onnx, googlenet.int8.tflite, ...


def shared_dir() -> Path:
    """`$GOOGLENET_SHARED`, else `../shared` beside the project (the layout CI clones into)."""
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else (PROJECT_ROOT.parent / "shared")


def shared_path(*parts: str) -> Path | None:
    """A path under the shared folder, or None when it is not there."""
    path = shared_dir().joinpath(*parts)
    return path if path.exists() else None


def bvlc_onnx() -> Path | None:
    return shared_path("weights", "bvlc_googlenet.onnx")


def imagenet_sample() -> Path | None:
    return shared_path("data", "imagenet-sample")


def synset_words() -> Path | None:
    return shared_path("data", "synset_words.txt")


def sample_photos() -> Path | None:
    return shared_path("data", "photos")
