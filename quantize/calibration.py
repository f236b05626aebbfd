"""Calibration data behind one small protocol.

A `CalibrationSource` yields preprocessed batches and describes itself for the report. Folders of
photos, `.npy`/`.npz` arrays, any Python iterable of arrays and the built-in photographs all plug in;
`OrtCalibrationReader` adapts any of them to ONNX Runtime's `CalibrationDataReader.get_next()`, and
the TFLite converter's `representative_dataset` takes the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps

from export.errors import ToolkitError, one_line
from export.images import list_images, load_image, preprocess_paths
from export.preprocess import Preprocess
from export.sample_images import builtin_photos
from export.ui import progress
from quantize.presets import DEFAULT_CALIB_SIZE


@runtime_checkable
class CalibrationSource(Protocol):
    """Anything that yields batches [n, ...] float32 in the model's input layout."""

    def batches(self) -> Iterator[np.ndarray]: ...

    def describe(self) -> dict: ...


def _hash_names(names: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _batches(data: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of `size` images (the last may be shorter)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def check_finite(array: np.ndarray, what: str, path: str | Path | None) -> None:
    """NaN or infinity calibrates infinite ranges (an int8 model that agrees with nothing) or crashes
    the TFLite converter: refused here, in one line naming the file."""
    bad = array.size - int(np.isfinite(array).sum())
    if bad:
        raise ToolkitError(f"{what} contain {bad} NaN or infinite value{'s' if bad > 1 else ''}", path)


def _check_size(size: int) -> None:
    if size < 1:
        raise ToolkitError(f"--calib-size must be at least 1 (got {size})")


def select_stratified(paths: Sequence[Path], root: Path, size: int, seed: int) -> list[Path]:
    """A seeded sample of `size` paths, spread evenly over the first-level sub-folders (if any).

    Sub-folders get `size // k` images each (the remainder goes to the first folders in sorted order);
    within a folder the choice is a seeded permutation, so the same seed gives the same set.
    """
    groups: dict[str, list[Path]] = {}
    for path in paths:
        parts = path.relative_to(root).parts
        groups.setdefault(parts[0] if len(parts) > 1 else "", []).append(path)
    rng = np.random.default_rng(seed)
    shuffled = {key: [group[i] for i in rng.permutation(len(group))] for key, group in sorted(groups.items())}
    chosen: list[Path] = []
    # Round-robin over the folders until `size` is reached: even where folders are small.
    depth = 0
    while len(chosen) < size:
        added = False
        for group in shuffled.values():
            if depth < len(group) and len(chosen) < size:
                chosen.append(group[depth])
                added = True
        if not added:
            break
        depth += 1
    return sorted(chosen)


def folder_selection(images: Sequence[Path], folder: Path, size: int, seed: int) -> list[Path]:
    """The photos a `FolderSource` of `size` and `seed` calibrates on, out of `folder`'s `images`."""
    return list(images) if size >= len(images) else select_stratified(images, folder, size, seed)


def calibrated_on(record: dict, folder: Path) -> set[Path] | None:
    """The photos of `folder` an int8 model's sidecar `calibration` record says it was calibrated on: empty
    when it calibrated elsewhere, None when the folder changed since (its file list no longer matches)."""
    if record.get("kind") != "folder" or Path(record["path"]).resolve() != Path(folder).resolve():
        return set()
    images = list_images(Path(folder)).images
    chosen = folder_selection(images, Path(folder), int(record["requested"]), int(record["seed"]))
    names = (p.relative_to(folder).as_posix() for p in chosen)
    return {p.resolve() for p in chosen} if _hash_names(names) == record.get("file_list_sha256") else None


@dataclass
class FolderSource:
    """Photos under a folder (recursive), a seeded stratified sample of `size` of them.

    Non-image files are skipped and counted; images that fail to decode are skipped and named in the
    report. Asking for more images than the folder has uses them all (noted in the report).
    """

    folder: Path
    preprocess: Preprocess
    size: int = DEFAULT_CALIB_SIZE
    seed: int = 0
    batch_size: int = 1
    chosen: list[Path] = field(init=False)
    unused: list[Path] = field(init=False)
    skipped_non_images: list[Path] = field(init=False)
    unreadable: list[tuple[Path, str]] = field(default_factory=list, init=False)
    notes: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        _check_size(self.size)
        self.folder = Path(self.folder)
        listing = list_images(self.folder)
        if not listing.images:
            what = f"{len(listing.skipped_non_images)} other files" if listing.skipped_non_images else "nothing"
            raise ToolkitError(f"calibration folder has no images (.jpg/.jpeg/.png/.bmp); found {what}", self.folder)
        self.skipped_non_images = listing.skipped_non_images
        if self.size > len(listing.images):
            self.notes.append(
                f"--calib-size {self.size} > {len(listing.images)} images in {self.folder}: using all of them"
            )
        self.chosen = folder_selection(listing.images, self.folder, self.size, self.seed)
        chosen = set(self.chosen)
        self.unused = [p for p in listing.images if p not in chosen]
        self._cache: np.ndarray | None = None

    def arrays(self) -> np.ndarray:
        """All calibration images, preprocessed once (calibration and the report reuse them)."""
        if self._cache is None:
            loaded = preprocess_paths(self.chosen, self.preprocess, errors=self.unreadable)
            tensors = []
            for path, tensor in progress(loaded, "Loading calibration images", total=len(self.chosen)):
                check_finite(tensor, "decoded image's pixels", path)
                tensors.append(tensor)
            if not tensors:
                raise ToolkitError("no calibration image could be read", self.folder)
            self._cache = np.stack(tensors)
        return self._cache

    def batches(self) -> Iterator[np.ndarray]:
        return _batches(self.arrays(), self.batch_size)

    def describe(self) -> dict:
        self.arrays()
        return {
            "kind": "folder",
            "path": str(self.folder),
            "requested": self.size,
            "images": len(self.chosen) - len(self.unreadable),
            "seed": self.seed,
            "file_list_sha256": _hash_names(p.relative_to(self.folder).as_posix() for p in self.chosen),
            "skipped_non_images": len(self.skipped_non_images),
            "unreadable": [f"{p.relative_to(self.folder).as_posix()}: {msg}" for p, msg in self.unreadable],
            "notes": self.notes,
        }


@dataclass
class ArraySource:
    """Preprocessed arrays: an [N, ...] array, a list of arrays, or an `.npy`/`.npz` file."""

    data: np.ndarray | Sequence[np.ndarray] | Path | str
    input_shape: tuple[int, ...] | None = None
    batch_size: int = 1
    origin: str = "arrays"

    def __post_init__(self) -> None:
        if isinstance(self.data, str | Path):
            self.origin = str(self.data)
            self.data = _read_array_file(Path(self.data))
        array = np.asarray(self.data) if isinstance(self.data, np.ndarray) else _stack_images(list(self.data))
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or len(array) == 0:
            raise ToolkitError(f"calibration arrays must be [N, C, H, W] or [N, H, W, C]; got shape {array.shape}")
        if self.input_shape is not None and tuple(array.shape[1:]) != tuple(self.input_shape):
            raise ToolkitError(
                f"calibration arrays have shape {tuple(array.shape[1:])} per image; the model takes "
                f"{tuple(self.input_shape)}",
                self.origin if self.origin != "arrays" else None,
            )
        self.array = array.astype(np.float32, copy=False)
        check_finite(self.array, "calibration arrays", self.origin if self.origin != "arrays" else None)

    def batches(self) -> Iterator[np.ndarray]:
        return _batches(self.array, self.batch_size)

    def describe(self) -> dict:
        return {
            "kind": "arrays",
            "path": self.origin,
            "images": len(self.array),
            "data_sha256": hashlib.sha256(np.ascontiguousarray(self.array).tobytes()).hexdigest(),
        }


def _stack_images(items: list) -> np.ndarray:
    """A list of per-image (or per-batch) arrays as one array; differing shapes are the user's error."""
    arrays = [np.asarray(item) for item in items]
    if not arrays:
        raise ToolkitError("no calibration arrays given")
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ToolkitError(f"calibration arrays differ in shape ({', '.join(map(str, shapes[:3]))})")
    return np.stack(arrays)


def _read_array_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ToolkitError("calibration file not found", path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ToolkitError(f"cannot read calibration arrays ({one_line(exc)})", path) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if not loaded.files:
                raise ToolkitError("calibration .npz holds no arrays", path)
            try:
                return np.concatenate([loaded[name] for name in loaded.files])
            except ValueError as exc:  # arrays of different per-image shapes
                raise ToolkitError(f"calibration .npz arrays cannot be joined ({one_line(exc)})", path) from None
    return loaded


class IterableSource:
    """Any iterable of preprocessed arrays (one image [C,H,W] or a batch [n,C,H,W] per item)."""

    def __init__(self, items: Iterable[np.ndarray], name: str = "iterable") -> None:
        self._items = list(items)
        self.name = name
        if not self._items:
            raise ToolkitError("calibration iterable yielded no arrays")
        for item in self._items:
            check_finite(np.asarray(item, dtype=np.float32), "calibration arrays", name)

    def batches(self) -> Iterator[np.ndarray]:
        for item in self._items:
            array = np.asarray(item, dtype=np.float32)
            yield array[None] if array.ndim == 3 else array

    def describe(self) -> dict:
        return {"kind": "iterable", "path": self.name, "images": sum(len(b) for b in self.batches())}


@dataclass
class BuiltinPhotosSource:
    """The real photographs that ship with scikit-image, stretched to `size` by deterministic
    crops and mirror images. Always offline; a set drawn from the user's own data is better."""

    preprocess: Preprocess
    size: int = DEFAULT_CALIB_SIZE
    seed: int = 0
    batch_size: int = 1

    def __post_init__(self) -> None:
        _check_size(self.size)
        self.photos = builtin_photos()
        if not self.photos:
            raise ToolkitError("scikit-image's bundled photographs are missing; reinstall scikit-image")
        self._cache: np.ndarray | None = None

    def _variants(self) -> Iterator[Image.Image]:
        rng = np.random.default_rng(self.seed)
        originals = [load_image(p) for p in self.photos]
        for index in range(self.size):
            image = originals[index % len(originals)]
            round_ = index // len(originals)
            if round_ == 0:
                yield image
                continue
            width, height = image.size
            scale = 0.6 + 0.35 * rng.random()
            w, h = max(32, int(width * scale)), max(32, int(height * scale))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            crop = image.crop((left, top, left + w, top + h))
            yield ImageOps.mirror(crop) if round_ % 2 else crop

    def arrays(self) -> np.ndarray:
        if self._cache is None:
            images = progress(self._variants(), "Preparing built-in calibration photos", total=self.size)
            self._cache = np.stack([self.preprocess.apply(image) for image in images])
        return self._cache

    def batches(self) -> Iterator[np.ndarray]:
        return _batches(self.arrays(), self.batch_size)

    def describe(self) -> dict:
        return {
            "kind": "builtin-photos",
            "path": "scikit-image data",
            "images": self.size,
            "photos": len(self.photos),
            "seed": self.seed,
            "file_list_sha256": _hash_names([*(p.name for p in self.photos), f"size={self.size}", f"seed={self.seed}"]),
            "notes": ["built-in photographs; a calibration set drawn from your own data is more representative"],
        }


class OrtCalibrationReader:
    """ONNX Runtime's `CalibrationDataReader` over any `CalibrationSource` (re-iterable via rewind)."""

    def __init__(self, source: CalibrationSource, input_name: str) -> None:
        self.source, self.input_name = source, input_name
        self._iterator: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = iter(self.source.batches())
        batch = next(self._iterator, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iterator = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def calibration_source(calib: Path | None, preprocess: Preprocess, size: int, seed: int = 0) -> CalibrationSource:
    """The source `--calib` names: a folder of photos, a `.npy`/`.npz` file, or (None) the built-in photos."""
    _check_size(size)
    if calib is None:
        return BuiltinPhotosSource(preprocess, size=size, seed=seed)
    calib = Path(calib)
    if calib.is_dir():
        return FolderSource(calib, preprocess, size=size, seed=seed)
    if calib.suffix.lower() in (".npy", ".npz"):
        source = ArraySource(calib, input_shape=preprocess.input_shape)
        if size < len(source.array):
            source.array = source.array[:size]
        return source
    if not calib.exists():
        raise ToolkitError("calibration folder not found", calib)
    raise ToolkitError("--calib must be a folder of images or a .npy/.npz file", calib)
