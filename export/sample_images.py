"""Real photographs that are always available offline: the shared photos when present, else the
photographs that ship inside scikit-image (a core dependency). Never random noise."""

from __future__ import annotations

from pathlib import Path

from export import paths
from export.images import list_images

# Natural photographs bundled with scikit-image (scikit-image's own data folder, BSD-licensed).
BUILTIN_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
    "clock_motion.png",
    "moon.png",
    "hubble_deep_field.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
)


def builtin_photos() -> list[Path]:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in BUILTIN_PHOTOS if (folder / name).is_file()]


def validation_photos(limit: int = 8) -> list[Path]:
    """A small batch of real photos for checking an export against PyTorch."""
    shared = paths.sample_photos()
    chosen = list_images(shared).images if shared else []
    return (chosen or builtin_photos())[:limit]
