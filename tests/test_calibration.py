"""Calibration sources and target presets: what goes into the int8 calibration, and what says what it was.

No model is needed here: folders of real photos (crops of the shared photos or scikit-image's photographs,
written to `tmp_path`), arrays made from them, the built-in photographs, and ONNX Runtime's reader protocol.
Only the deliberately unreadable files are not real photos.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import numpy as np
import pytest
from conftest import write_png16_rgb
from PIL import Image

from export.errors import ToolkitError
from export.evaluation import load_eval_folder
from export.formats import OPTIONS
from export.images import load_image
from export.preprocess import BVLC_PREPROCESS
from export.sample_images import builtin_photos
from quantize import (
    PRESETS,
    ArraySource,
    BuiltinPhotosSource,
    CalibrationSource,
    FolderSource,
    IterableSource,
    OrtCalibrationReader,
    QuantizationConfig,
    calibration_source,
    preset,
)
from quantize.presets import CALIBRATION_METHODS, DEFAULT_CALIBRATION, DEFAULT_TARGET, HOST_TARGET

PRE = BVLC_PREPROCESS
INPUT_SHAPE = PRE.input_shape  # (3, 224, 224)


# -- real photos on disk --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb_photos(shared_photos: list[Path]) -> list[Image.Image]:
    """The real photos as RGB images (shared `data/photos`, else scikit-image's photographs)."""
    return [load_image(p) for p in shared_photos]


def write_crops(folder: Path, photos: list[Image.Image], count: int, start: int = 0, prefix: str = "img") -> list[Path]:
    """`count` distinct small JPEG crops of the real photos (different photo and offset per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(start, start + count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        side = min(width, height) // 2
        step = index // len(photos)
        left = (step * 37) % max(1, width - side)
        top = (step * 23) % max(1, height - side)
        path = folder / f"{prefix}{index:03d}.jpg"
        photo.crop((left, top, left + side, top + side)).resize((96, 96)).save(path, quality=90)
        written.append(path)
    return written


def write_truncated_jpeg(path: Path, photo: Image.Image) -> None:
    """A real JPEG cut off after a third of its bytes (a half-downloaded photo)."""
    full = path.with_name("full-" + path.name)
    photo.save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture
def three_subfolders(tmp_path: Path, rgb_photos: list[Image.Image]) -> Path:
    """calib/a, calib/b, calib/c with 5 real photo crops each."""
    root = tmp_path / "calib"
    for offset, name in enumerate("abc"):
        write_crops(root / name, rgb_photos, 5, start=offset * 5)
    return root


def relative_names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


# -- FolderSource: sampling ------------------------------------------------------------------------------
def test_folder_source_is_stratified_by_subfolder(three_subfolders: Path) -> None:
    source = FolderSource(three_subfolders, PRE, size=6, seed=0)
    per_folder = sorted(p.relative_to(three_subfolders).parts[0] for p in source.chosen)
    assert per_folder == ["a", "a", "b", "b", "c", "c"]


def test_folder_source_remainder_goes_to_the_first_folders(three_subfolders: Path) -> None:
    source = FolderSource(three_subfolders, PRE, size=7, seed=0)
    counts = {name: sum(p.parent.name == name for p in source.chosen) for name in "abc"}
    assert counts == {"a": 3, "b": 2, "c": 2}


def test_folder_source_is_recursive(tmp_path: Path, rgb_photos: list[Image.Image]) -> None:
    root = tmp_path / "calib"
    deep = write_crops(root / "a" / "x" / "y", rgb_photos, 2)
    top = write_crops(root, rgb_photos, 1, start=5, prefix="top")
    source = FolderSource(root, PRE, size=10)
    assert sorted(source.chosen) == sorted(deep + top)
    assert source.describe()["images"] == 3


def test_folder_source_same_seed_same_set_other_seed_other_set(three_subfolders: Path) -> None:
    first = FolderSource(three_subfolders, PRE, size=6, seed=0).chosen
    again = FolderSource(three_subfolders, PRE, size=6, seed=0).chosen
    other = FolderSource(three_subfolders, PRE, size=6, seed=1).chosen
    assert first == again
    assert set(first) != set(other)
    # A different seed is still stratified.
    assert sorted(p.parent.name for p in other) == ["a", "a", "b", "b", "c", "c"]


def test_folder_source_unused_is_the_rest(three_subfolders: Path) -> None:
    source = FolderSource(three_subfolders, PRE, size=6, seed=3)
    everything = sorted(three_subfolders.rglob("*.jpg"))
    assert len(source.chosen) == 6 and len(source.unused) == 9
    assert not set(source.chosen) & set(source.unused)
    assert sorted(source.chosen + source.unused) == everything


def test_file_list_fingerprint_identifies_the_set(three_subfolders: Path) -> None:
    def fingerprint(**kwargs) -> str:
        return FolderSource(three_subfolders, PRE, **kwargs).describe()["file_list_sha256"]

    base = fingerprint(size=6, seed=0)
    assert len(base) == 64 and int(base, 16) >= 0
    assert fingerprint(size=6, seed=0) == base
    assert fingerprint(size=6, seed=1) != base
    assert fingerprint(size=5, seed=0) != base
    # The same selection read through a differently spelled path is the same set.
    relative = Path(os.path.relpath(three_subfolders))
    assert FolderSource(relative, PRE, size=6, seed=0).describe()["file_list_sha256"] == base


def test_folder_source_describe_reports_the_set(three_subfolders: Path) -> None:
    (three_subfolders / "README.txt").write_text("not a photo\n", encoding="utf-8")
    source = FolderSource(three_subfolders, PRE, size=4, seed=2)
    info = source.describe()
    assert info["kind"] == "folder"
    assert info["requested"] == 4 and info["images"] == 4 and info["seed"] == 2
    assert info["skipped_non_images"] == 1
    assert info["unreadable"] == [] and info["notes"] == []


# -- FolderSource: what it feeds the calibrator ----------------------------------------------------------
def test_folder_source_batches_are_the_preprocessed_photos(three_subfolders: Path) -> None:
    source = FolderSource(three_subfolders, PRE, size=3, seed=0)
    batches = list(source.batches())
    assert [b.shape for b in batches] == [(1, *INPUT_SHAPE)] * 3
    assert all(b.dtype == np.float32 for b in batches)
    expected = np.stack([PRE.apply(load_image(p)) for p in source.chosen])
    np.testing.assert_array_equal(np.concatenate(batches), expected)


def test_folder_source_batch_size(three_subfolders: Path) -> None:
    source = FolderSource(three_subfolders, PRE, size=5, seed=0, batch_size=2)
    assert [len(b) for b in source.batches()] == [2, 2, 1]


# -- FolderSource: bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -3])
def test_calib_size_below_one_is_an_error(three_subfolders: Path, size: int) -> None:
    with pytest.raises(ToolkitError, match=r"--calib-size must be at least 1"):
        FolderSource(three_subfolders, PRE, size=size)
    with pytest.raises(ToolkitError, match=r"--calib-size must be at least 1"):
        BuiltinPhotosSource(PRE, size=size)
    with pytest.raises(ToolkitError, match=r"--calib-size must be at least 1"):
        calibration_source(three_subfolders, PRE, size)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolkitError, match=r"no images.*found nothing") as caught:
        FolderSource(tmp_path / "empty", PRE, size=4)
    assert "\n" not in str(caught.value)


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "labels.csv"):
        (folder / name).write_text("not a photo\n", encoding="utf-8")
    with pytest.raises(ToolkitError, match=r"no images.*found 3 other files"):
        FolderSource(folder, PRE, size=4)


def test_calib_size_larger_than_the_folder_uses_all_with_a_note(tmp_path: Path, rgb_photos) -> None:
    written = write_crops(tmp_path / "few", rgb_photos, 4)
    source = FolderSource(tmp_path / "few", PRE, size=50)
    assert sorted(source.chosen) == sorted(written)
    assert source.unused == []
    info = source.describe()
    assert info["images"] == 4 and info["requested"] == 50
    assert len(info["notes"]) == 1 and "50" in info["notes"][0] and "4 images" in info["notes"][0]


def test_calib_size_equal_to_the_folder_has_no_note(tmp_path: Path, rgb_photos) -> None:
    write_crops(tmp_path / "exact", rgb_photos, 4)
    assert FolderSource(tmp_path / "exact", PRE, size=4).describe()["notes"] == []


def test_corrupt_jpeg_in_the_middle_is_skipped_and_named(tmp_path: Path, rgb_photos) -> None:
    folder = tmp_path / "calib"
    good = write_crops(folder, rgb_photos, 4) + write_crops(folder, rgb_photos, 2, start=4, prefix="z")
    write_truncated_jpeg(folder / "m_truncated.jpg", rgb_photos[0])
    (folder / "n_garbage.jpg").write_bytes(b"this is not a JPEG\n" * 20)
    source = FolderSource(folder, PRE, size=8)
    names = relative_names(source.chosen, folder)
    assert "m_truncated.jpg" in names[1:-1] and "n_garbage.jpg" in names[1:-1]  # really in the middle
    data = np.concatenate(list(source.batches()))
    np.testing.assert_array_equal(data, np.stack([PRE.apply(load_image(p)) for p in sorted(good)]))
    info = source.describe()
    assert info["images"] == 6
    unreadable = info["unreadable"]
    assert len(unreadable) == 2
    assert unreadable[0].startswith("m_truncated.jpg: ") and unreadable[1].startswith("n_garbage.jpg: ")
    assert all("\n" not in entry for entry in unreadable)


def test_folder_of_only_unreadable_images_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"\x00" * 64)
    source = FolderSource(folder, PRE, size=2)
    with pytest.raises(ToolkitError, match="no calibration image could be read"):
        source.describe()


def test_grayscale_cmyk_and_16_bit_images_become_rgb(tmp_path: Path, rgb_photos) -> None:
    folder = tmp_path / "modes"
    folder.mkdir()
    photo = rgb_photos[-1]
    photo.save(folder / "a_rgb.png")
    gray = photo.convert("L")
    gray.save(folder / "b_gray.jpg", quality=95)
    gray.save(folder / "c_gray.png")
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(folder / "d_gray16.png")
    photo.convert("CMYK").save(folder / "e_cmyk.jpg", quality=95)
    write_png16_rgb(folder / "f_rgb16.png", np.asarray(photo, dtype=np.uint16) * 257)
    assert Image.open(folder / "d_gray16.png").mode == "I;16"
    assert Image.open(folder / "e_cmyk.jpg").mode == "CMYK"

    source = FolderSource(folder, PRE, size=10)
    data = dict(zip(relative_names(source.chosen, folder), source.arrays(), strict=True))
    assert source.describe()["unreadable"] == [] and len(data) == 6
    rgb = data["a_rgb.png"]
    # Grey images: R = G = B before the per-channel mean is subtracted.
    for name in ("b_gray.jpg", "c_gray.png", "d_gray16.png"):
        pixels = data[name] + np.asarray(PRE.mean, np.float32)[:, None, None]
        np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-4)
        np.testing.assert_allclose(pixels[1], pixels[2], atol=1e-4)
    # 16-bit scaled to 8 bits: the same picture as its 8-bit original.
    np.testing.assert_allclose(data["d_gray16.png"], data["c_gray.png"], atol=1.0)
    np.testing.assert_allclose(data["f_rgb16.png"], rgb, atol=1.0)
    # CMYK converted back to RGB: close to the original colour photo (JPEG loss only).
    assert float(np.abs(data["e_cmyk.jpg"] - rgb).mean()) < 3.0


# -- ArraySource ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_tensors(rgb_photos: list[Image.Image]) -> np.ndarray:
    """Preprocessed real photos [N, 3, 224, 224]."""
    return np.stack([PRE.apply(p) for p in rgb_photos[:4]])


def test_array_source_from_npy(tmp_path: Path, photo_tensors: np.ndarray) -> None:
    path = tmp_path / "calib.npy"
    np.save(path, photo_tensors)
    source = ArraySource(path, input_shape=INPUT_SHAPE)
    batches = list(source.batches())
    assert len(batches) == len(photo_tensors) and batches[0].shape == (1, *INPUT_SHAPE)
    np.testing.assert_array_equal(np.concatenate(batches), photo_tensors)
    info = source.describe()
    assert info["kind"] == "arrays" and info["images"] == len(photo_tensors) and info["path"] == str(path)
    assert info["data_sha256"] == hashlib.sha256(photo_tensors.astype(np.float32).tobytes()).hexdigest()


def test_array_source_from_npz_concatenates_its_arrays(tmp_path: Path, photo_tensors: np.ndarray) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, first=photo_tensors[:3], second=photo_tensors[3:])
    source = ArraySource(path, input_shape=INPUT_SHAPE)
    np.testing.assert_array_equal(source.array, photo_tensors)
    assert source.describe()["images"] == len(photo_tensors)


def test_array_source_from_a_list_of_arrays(photo_tensors: np.ndarray) -> None:
    source = ArraySource(list(photo_tensors), input_shape=INPUT_SHAPE, batch_size=3)
    assert [len(b) for b in source.batches()] == [3, 1]
    np.testing.assert_array_equal(source.array, photo_tensors)


def test_array_source_one_image_and_other_dtypes(photo_tensors: np.ndarray) -> None:
    single = ArraySource(photo_tensors[0], input_shape=INPUT_SHAPE)
    assert single.array.shape == (1, *INPUT_SHAPE)
    as_float64 = ArraySource(photo_tensors.astype(np.float64))
    assert as_float64.array.dtype == np.float32
    np.testing.assert_array_equal(as_float64.array, photo_tensors)


def test_array_source_fingerprint_changes_with_the_data(photo_tensors: np.ndarray) -> None:
    first = ArraySource(photo_tensors).describe()["data_sha256"]
    assert ArraySource(photo_tensors.copy()).describe()["data_sha256"] == first
    assert ArraySource(photo_tensors[:3]).describe()["data_sha256"] != first


def test_array_source_wrong_per_image_shape_is_an_error(tmp_path: Path, photo_tensors: np.ndarray) -> None:
    nhwc = np.ascontiguousarray(photo_tensors.transpose(0, 2, 3, 1))
    with pytest.raises(ToolkitError, match=r"\(224, 224, 3\) per image; the model takes \(3, 224, 224\)"):
        ArraySource(nhwc, input_shape=INPUT_SHAPE)
    with pytest.raises(ToolkitError, match="per image"):
        ArraySource([t[:, :200, :200] for t in photo_tensors], input_shape=INPUT_SHAPE)
    path = tmp_path / "small.npy"
    np.save(path, photo_tensors[:, :, :100, :100])
    with pytest.raises(ToolkitError, match="per image") as caught:
        ArraySource(path, input_shape=INPUT_SHAPE)
    assert str(path) in str(caught.value)
    with pytest.raises(ToolkitError, match=r"\[N, C, H, W\]"):
        ArraySource(photo_tensors[0, 0])  # a 2-D array is no image batch


def test_array_source_list_of_mixed_shapes_is_an_error(photo_tensors: np.ndarray) -> None:
    """Arrays of different sizes in one list are a user error (one line), not a numpy traceback."""
    with pytest.raises(ToolkitError):
        ArraySource([photo_tensors[0], photo_tensors[1][:, :200, :200]], input_shape=INPUT_SHAPE)


def test_array_source_npz_of_mixed_shapes_is_an_error(tmp_path: Path, photo_tensors: np.ndarray) -> None:
    path = tmp_path / "mixed.npz"
    np.savez(path, big=photo_tensors[:2], small=photo_tensors[2:, :, :100, :100])
    with pytest.raises(ToolkitError) as caught:
        ArraySource(path, input_shape=INPUT_SHAPE)
    assert str(path) in str(caught.value)


def test_array_source_empty_list_is_an_error() -> None:
    with pytest.raises(ToolkitError):
        ArraySource([], input_shape=INPUT_SHAPE)


def test_array_source_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="not found"):
        ArraySource(tmp_path / "missing.npy")
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy at all" * 8)
    with pytest.raises(ToolkitError, match="cannot read calibration arrays"):
        ArraySource(garbage)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ToolkitError, match="cannot read calibration arrays"):
        ArraySource(pickled)
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ToolkitError, match="holds no arrays"):
        ArraySource(empty)


# -- IterableSource ---------------------------------------------------------------------------------------
def test_iterable_source_takes_images_and_batches_and_is_reiterable(photo_tensors: np.ndarray) -> None:
    items = (x for x in [photo_tensors[0], photo_tensors[1:3], photo_tensors[3].astype(np.float64)])
    source = IterableSource(items, name="my photos")
    first = list(source.batches())
    second = list(source.batches())  # the generator is spent, the source is not
    assert [b.shape[0] for b in first] == [1, 2, 1]
    assert all(b.dtype == np.float32 for b in first)
    np.testing.assert_array_equal(np.concatenate(first), photo_tensors)
    np.testing.assert_array_equal(np.concatenate(second), photo_tensors)
    assert source.describe() == {"kind": "iterable", "path": "my photos", "images": 4}


def test_iterable_source_that_yields_nothing_is_an_error() -> None:
    with pytest.raises(ToolkitError, match="yielded no arrays"):
        IterableSource(iter([]))


# -- BuiltinPhotosSource ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builtin_twenty() -> BuiltinPhotosSource:
    return BuiltinPhotosSource(PRE, size=20, seed=0)


def test_builtin_photos_give_distinct_real_photo_tensors(builtin_twenty: BuiltinPhotosSource) -> None:
    data = builtin_twenty.arrays()
    assert data.shape == (20, *INPUT_SHAPE) and data.dtype == np.float32
    flat = data.reshape(len(data), -1)
    assert len({row.tobytes() for row in flat}) == 20  # 20 different tensors
    assert float(flat.std(axis=1).min()) > 5.0  # photographs, not blank frames
    # The first round is the photographs themselves, preprocessed as any photo is.
    photos = builtin_photos()
    for index, path in enumerate(photos[: min(len(photos), 20)]):
        np.testing.assert_array_equal(data[index], PRE.apply(load_image(path)))
    info = builtin_twenty.describe()
    assert info["kind"] == "builtin-photos" and info["images"] == 20 and info["photos"] == len(photos)
    assert len(info["file_list_sha256"]) == 64 and info["notes"]


def test_builtin_photos_are_deterministic(builtin_twenty: BuiltinPhotosSource) -> None:
    np.testing.assert_array_equal(BuiltinPhotosSource(PRE, size=20, seed=0).arrays(), builtin_twenty.arrays())
    other = BuiltinPhotosSource(PRE, size=20, seed=1).arrays()
    assert not np.array_equal(other, builtin_twenty.arrays())  # the extra crops follow the seed


def test_builtin_photos_batches(builtin_twenty: BuiltinPhotosSource) -> None:
    batches = list(builtin_twenty.batches())
    assert len(batches) == 20 and all(b.shape == (1, *INPUT_SHAPE) for b in batches)


# -- ONNX Runtime's reader protocol ---------------------------------------------------------------------
def test_every_source_satisfies_the_protocol(three_subfolders: Path, photo_tensors: np.ndarray) -> None:
    sources = [
        FolderSource(three_subfolders, PRE, size=2),
        ArraySource(photo_tensors),
        IterableSource(list(photo_tensors)),
        BuiltinPhotosSource(PRE, size=2),
    ]
    for source in sources:
        assert isinstance(source, CalibrationSource)


def test_ort_reader_returns_dicts_until_none_and_rewinds(photo_tensors: np.ndarray) -> None:
    reader = OrtCalibrationReader(ArraySource(photo_tensors), "input")
    seen = []
    while (item := reader.get_next()) is not None:
        assert list(item) == ["input"] and item["input"].shape == (1, *INPUT_SHAPE)
        seen.append(item["input"])
    assert len(seen) == len(photo_tensors)
    assert reader.get_next() is None  # stays exhausted until rewound
    np.testing.assert_array_equal(np.concatenate(seen), photo_tensors)
    reader.rewind()
    again = [reader.get_next() for _ in range(len(photo_tensors))]
    assert all(item is not None for item in again) and reader.get_next() is None
    np.testing.assert_array_equal(np.concatenate([item["input"] for item in again]), photo_tensors)
    # Iterating starts over each time.
    assert len(list(reader)) == len(list(reader)) == len(photo_tensors)


def test_ort_reader_over_a_folder(three_subfolders: Path) -> None:
    source = FolderSource(three_subfolders, PRE, size=3, seed=0)
    items = list(OrtCalibrationReader(source, "data"))
    assert len(items) == 3 and all(set(item) == {"data"} for item in items)


# -- calibration_source: what --calib names ------------------------------------------------------------
def test_calibration_source_dispatch(three_subfolders: Path, tmp_path: Path, photo_tensors: np.ndarray) -> None:
    folder = calibration_source(three_subfolders, PRE, 4, seed=1)
    assert isinstance(folder, FolderSource) and len(folder.chosen) == 4 and folder.seed == 1
    npy = tmp_path / "calib.npy"
    np.save(npy, photo_tensors)
    arrays = calibration_source(npy, PRE, 2)
    assert isinstance(arrays, ArraySource) and arrays.describe()["images"] == 2  # --calib-size applies
    np.testing.assert_array_equal(arrays.array, photo_tensors[:2])
    assert calibration_source(npy, PRE, 100).describe()["images"] == len(photo_tensors)
    builtin = calibration_source(None, PRE, 3)
    assert isinstance(builtin, BuiltinPhotosSource) and builtin.size == 3


def test_calibration_source_rejects_what_it_cannot_use(tmp_path: Path, rgb_photos, photo_tensors) -> None:
    photo = tmp_path / "one.jpg"
    rgb_photos[0].save(photo)
    with pytest.raises(ToolkitError, match=r"must be a folder of images or a \.npy/\.npz file"):
        calibration_source(photo, PRE, 4)
    with pytest.raises(ToolkitError, match="not found"):
        calibration_source(tmp_path / "nowhere", PRE, 4)
    nhwc = tmp_path / "nhwc.npy"
    np.save(nhwc, np.ascontiguousarray(photo_tensors.transpose(0, 2, 3, 1)))
    with pytest.raises(ToolkitError, match="per image"):
        calibration_source(nhwc, PRE, 4)


# -- calibration images are never evaluated on --------------------------------------------------------------
def test_eval_folder_excludes_calibration_images_however_the_path_is_spelled(three_subfolders: Path) -> None:
    """`--calib ../x --eval /abs/x`: the calibration images must still be left out of the evaluation."""
    relative = Path(os.path.relpath(three_subfolders))
    source = FolderSource(relative, PRE, size=6, seed=0)
    same = load_eval_folder(relative, PRE, None, exclude=set(source.chosen))
    assert len(same) == 9
    absolute = load_eval_folder(three_subfolders.resolve(), PRE, None, exclude=set(source.chosen))
    assert len(absolute) == 9
    chosen = {p.resolve() for p in source.chosen}
    assert not chosen & {p.resolve() for p in absolute.paths}


# -- target presets ----------------------------------------------------------------------------------------
def test_arm64_preset() -> None:
    config = QuantizationConfig.arm64()
    assert (config.target, config.activation_type, config.reduce_range) == ("arm64", "int8", False)
    assert config.per_channel and config.calibration == "minmax" and config.exclude == ()


def test_x86_avx2_preset() -> None:
    config = QuantizationConfig.x86_avx2()
    assert (config.target, config.activation_type, config.reduce_range) == ("x86-avx2", "uint8", True)
    assert config.per_channel


def test_x86_vnni_preset() -> None:
    config = QuantizationConfig.x86_vnni()
    assert (config.target, config.activation_type, config.reduce_range) == ("x86-vnni", "uint8", False)
    assert config.per_channel


def test_presets_by_name_and_overrides() -> None:
    assert set(PRESETS) == {"arm64", "x86-avx2", "x86-vnni"}
    assert (*PRESETS, HOST_TARGET) == OPTIONS["target"].kwargs["choices"]  # the CLI offers exactly these
    expected_host = "arm64" if platform.machine() in ("aarch64", "arm64") else ("x86-vnni", "x86-avx2")
    assert preset(HOST_TARGET).target in expected_host  # `--target host`: a real preset, chosen by the ISA
    assert set(CALIBRATION_METHODS) == set(OPTIONS["calibration"].kwargs["choices"])
    assert DEFAULT_TARGET == OPTIONS["target"].kwargs["default"] == "arm64"
    assert DEFAULT_CALIBRATION in CALIBRATION_METHODS
    for name, factory in PRESETS.items():
        assert preset(name) == factory() and preset(name).target == name
    tuned = preset("x86-avx2", calibration="entropy", exclude=("fc",))
    assert (tuned.calibration, tuned.exclude, tuned.reduce_range) == ("entropy", ("fc",), True)


def test_unknown_preset_or_calibration_is_an_error() -> None:
    with pytest.raises(ToolkitError, match="unknown --target 'nope'"):
        preset("nope")
    with pytest.raises(ToolkitError, match="unknown --calibration 'nope'"):
        preset("arm64", calibration="nope")


def test_preset_to_dict_names_everything_the_report_needs() -> None:
    data = QuantizationConfig.x86_avx2(exclude=("fc", "pool5")).to_dict()
    assert data["target"] == "x86-avx2" and data["activation_type"] == "uint8" and data["reduce_range"] is True
    assert data["exclude"] == ["fc", "pool5"]
    assert (data["weight_type"], data["weight_symmetric"], data["bias_type"], data["format"]) == (
        "int8",
        True,
        "int32",
        "QDQ",
    )
    assert data["calibration"] == "minmax" and data["why"]


def test_evaluation_leaves_out_the_photos_a_sidecar_says_were_calibrated_on(imagenet_sample_dir, tmp_path) -> None:
    """`benchmarks bundle/run --eval` on the calibration folder: draw 0's photos never score its own model."""
    from benchmarks.run import eval_paths
    from quantize.calibration import calibrated_on

    source = FolderSource(imagenet_sample_dir, BVLC_PREPROCESS, size=12, seed=0)
    record = source.describe()
    chosen = {p.resolve() for p in source.chosen}
    assert calibrated_on(record, imagenet_sample_dir) == chosen
    assert calibrated_on(record, tmp_path) == set()  # calibrated elsewhere: nothing to leave out
    picked = eval_paths(imagenet_sample_dir, 12, 0, exclude=chosen)
    assert len(picked) == 12 and not chosen & {p.resolve() for p in picked}
    assert chosen <= {p.resolve() for p in eval_paths(imagenet_sample_dir, 12, 0)}  # the same seed, before
    assert calibrated_on({**record, "file_list_sha256": "0" * 64}, imagenet_sample_dir) is None  # folder changed
