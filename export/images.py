"""Reading photos: every PIL mode and file type the toolkit meets becomes an upright 8-bit RGB image."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_runtime.hostinfo import usable_cores
from export.errors import ToolkitError, one_line
from export.preprocess import Preprocess

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; high bit depths are scaled, transparency is flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or data.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(data.max(initial=0)), 1.0) if data.max(initial=0) > 1.0 else 1.0
        image = Image.fromarray(np.clip(data * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(path: str | Path) -> Image.Image:
    """Open a photo as upright RGB (EXIF orientation applied); a one-line ToolkitError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("image not found", path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            return _to_rgb(image)
    except Image.DecompressionBombError as exc:
        # Above PIL's limit (2 x Image.MAX_IMAGE_PIXELS): refused like any unreadable image, not decoded.
        raise ToolkitError(f"image too large to decode safely ({one_line(exc)})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ToolkitError(f"not a readable image ({one_line(exc)})", path) from None


@dataclass
class ImageListing:
    """What a folder holds: the images to use and what was passed over (reported, never silent)."""

    images: list[Path]
    skipped_non_images: list[Path] = field(default_factory=list)


def list_images(folder: str | Path, recursive: bool = True) -> ImageListing:
    """Image files under `folder` in a stable (sorted) order; other files are counted as skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise ToolkitError("folder not found", folder)
    if not folder.is_dir():
        raise ToolkitError("not a folder", folder)
    try:
        entries = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    except PermissionError as exc:
        raise ToolkitError(f"folder is not readable ({one_line(exc)})", folder) from None
    entries = [p for p in entries if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    images = [p for p in entries if is_image_name(p)]
    return ImageListing(images=images, skipped_non_images=[p for p in entries if not is_image_name(p)])


def preprocess_paths(
    paths: Sequence[Path], preprocess: Preprocess, errors: list[tuple[Path, str]] | None = None
) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield (path, tensor) per image, in order. With `errors` given, unreadable files are recorded and
    skipped; without it the first unreadable file raises. Decoding runs on every core (PIL releases the
    GIL while it decodes and resizes)."""

    def work(path: Path) -> np.ndarray | ToolkitError:
        try:
            return preprocess.apply(load_image(path))
        except ToolkitError as exc:
            return exc

    with ThreadPoolExecutor(usable_cores()) as pool:
        for path, result in zip(paths, pool.map(work, paths), strict=True):
            if isinstance(result, ToolkitError):
                if errors is None:
                    raise result
                errors.append((path, result.problem))  # the caller names the file
            else:
                yield path, result


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
