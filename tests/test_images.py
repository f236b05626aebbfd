"""Reading photos (every mode becomes upright RGB), listing folders, preprocessing and ground-truth labels.

Edge-case files are made in `tmp_path` from a real photo; nothing is synthesised from noise except the
deliberately unreadable files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.errors import ToolkitError
from export.images import list_images, load_image
from export.labels import LabelSet, imagenet_labels, label_for_image, read_label_file
from export.preprocess import BVLC_PREPROCESS, TORCHVISION_PREPROCESS, Preprocess
from export.sample_images import builtin_photos


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real colour photograph (scikit-image's `coffee.png`, 600x400, always installed)."""
    path = next(p for p in builtin_photos() if p.name == "coffee.png")
    with Image.open(path) as image:
        return image.convert("RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# -- load_image: every mode becomes RGB -------------------------------------------------------------
def test_rgb_photo_is_unchanged(photo: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    photo.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (600, 400)
    assert np.array_equal(np.asarray(loaded), np.asarray(photo))


def test_grayscale_becomes_rgb(photo: Image.Image, tmp_path: Path) -> None:
    gray = photo.convert("L")
    path = tmp_path / "gray.jpg"
    gray.save(path, quality=95)
    assert Image.open(path).mode == "L"
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == photo.size
    rgb = np.asarray(loaded)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(float) - np.asarray(gray, dtype=float)).mean() < 3


def test_cmyk_jpeg_becomes_rgb_with_the_same_colours(photo: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    photo.convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == photo.size
    assert mean_abs_diff(loaded, photo) < 6


def test_16_bit_png_is_scaled_to_8_bit(photo: Image.Image, tmp_path: Path) -> None:
    gray8 = np.asarray(photo.convert("L"), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(gray8 * 257).save(path)  # 0..255 -> 0..65535
    assert Image.open(path).mode == "I;16"
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == photo.size
    assert np.abs(np.asarray(loaded)[..., 0].astype(int) - gray8.astype(int)).max() <= 1


def test_rgba_is_flattened_onto_white(photo: Image.Image, tmp_path: Path) -> None:
    rgba = photo.convert("RGBA")
    alpha = np.full(photo.size[::-1], 255, np.uint8)
    alpha[:, :100] = 0  # left strip fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    path = tmp_path / "rgba.png"
    rgba.save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (400, 600, 3)
    assert (loaded[:, :100] == 255).all()
    assert np.array_equal(loaded[:, 100:], np.asarray(photo)[:, 100:])


def test_palette_png_becomes_rgb(photo: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "P"
        expected = opened.convert("RGB")
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), np.asarray(expected))
    assert mean_abs_diff(loaded, photo) < 12


def test_exif_orientation_is_applied(photo: Image.Image, tmp_path: Path) -> None:
    """Orientation 6 (camera turned clockwise): the stored 600x400 image is shown 400x600."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif, quality=95)
    assert Image.open(path).size == (600, 400)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (400, 600)
    upright = photo.transpose(Image.Transpose.ROTATE_270)
    wrong_way = photo.transpose(Image.Transpose.ROTATE_90)
    assert mean_abs_diff(loaded, upright) < 5
    assert mean_abs_diff(loaded, wrong_way) > 20


def test_truncated_jpeg_is_a_toolkit_error(photo: Image.Image, tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    photo.save(whole, quality=95)
    cut = tmp_path / "truncated.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ToolkitError, match=r"truncated\.jpg: not a readable image"):
        load_image(cut)


def test_corrupt_jpeg_is_a_toolkit_error(photo: Image.Image, tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    photo.save(whole, quality=95)
    data = bytearray(whole.read_bytes())
    data[2:600] = bytes(range(256)) * 2 + bytes(86)  # a JPEG start marker followed by broken headers
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ToolkitError, match=r"corrupt\.jpg: not a readable image"):
        load_image(corrupt)


def test_text_file_named_jpg_is_a_toolkit_error(tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is a shopping list, not a photo\n", encoding="utf-8")
    with pytest.raises(ToolkitError, match=r"notes\.jpg: not a readable image") as caught:
        load_image(fake)
    assert "\n" not in str(caught.value)


def test_missing_image_is_a_toolkit_error(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match=r"absent\.png"):
        load_image(tmp_path / "absent.png")


# -- list_images --------------------------------------------------------------------------------------
def test_list_images_is_sorted_recursive_and_reports_skipped_files(photo: Image.Image, tmp_path: Path) -> None:
    small = photo.resize((60, 40))
    made = ["b.jpg", "a.png", "sub/c.JPEG", "sub/deeper/d.bmp", "sub/A.jpeg", "z/e.png"]
    for name in made:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        small.save(tmp_path / name, format="BMP" if name.endswith(".bmp") else "PNG")
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "sub" / "labels.csv").write_text("a,b", encoding="utf-8")
    (tmp_path / ".cache").mkdir()
    small.save(tmp_path / ".cache" / "hidden.png")

    listing = list_images(tmp_path)
    assert listing.images == sorted(tmp_path / name for name in made)
    assert sorted(listing.skipped_non_images) == sorted([tmp_path / "notes.txt", tmp_path / "sub" / "labels.csv"])

    flat = list_images(tmp_path, recursive=False)
    assert flat.images == [tmp_path / "a.png", tmp_path / "b.jpg"]
    assert flat.skipped_non_images == [tmp_path / "notes.txt"]


def test_list_images_on_a_missing_folder_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ToolkitError, match=r"file\.txt"):
        list_images(tmp_path / "file.txt")


# -- Preprocess ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [BVLC_PREPROCESS, TORCHVISION_PREPROCESS], ids=["bvlc", "torchvision"])
def test_apply_gives_a_224_chw_float32_tensor(spec: Preprocess, photo: Image.Image) -> None:
    tensor = spec.apply(photo)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    assert spec.with_layout("NHWC").apply(photo).shape == (224, 224, 3)


def test_bvlc_is_bgr_minus_mean() -> None:
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    tensor = BVLC_PREPROCESS.apply(red)
    assert np.all(tensor[2] == 255 - 123)  # R is the last channel in BGR
    assert np.all(tensor[1] == -117)
    assert np.all(tensor[0] == -104)


def test_bvlc_channel_order_on_a_photo(photo: Image.Image) -> None:
    cropped = np.asarray(BVLC_PREPROCESS.resize_and_crop(photo), dtype=np.float32)
    tensor = BVLC_PREPROCESS.apply(photo)
    np.testing.assert_array_equal(tensor[0], cropped[..., 2] - 104)
    np.testing.assert_array_equal(tensor[1], cropped[..., 1] - 117)
    np.testing.assert_array_equal(tensor[2], cropped[..., 0] - 123)


def test_torchvision_is_rgb_normalised() -> None:
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    tensor = TORCHVISION_PREPROCESS.apply(red)
    np.testing.assert_allclose(tensor[0], (1 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(tensor[1], (0 - 0.456) / 0.224, rtol=1e-6)
    np.testing.assert_allclose(tensor[2], (0 - 0.406) / 0.225, rtol=1e-6)


def test_stretch_and_shorter_side_resize_differ_as_specified() -> None:
    """A 600x300 horizontal ramp: Caffe stretches to 256x256 (crop starts at 16/256 of the width),
    torchvision keeps the aspect (512x256, crop starts at 144/512)."""
    ramp = np.tile(np.linspace(0, 255, 600), (300, 1)).astype(np.uint8)
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    stretched = np.asarray(BVLC_PREPROCESS.resize_and_crop(image), dtype=float)
    shorter = np.asarray(TORCHVISION_PREPROCESS.resize_and_crop(image), dtype=float)
    assert stretched.shape == shorter.shape == (224, 224, 3)
    assert stretched[112, 0, 0] == pytest.approx(255 * 16.5 / 256, abs=2)
    assert shorter[112, 0, 0] == pytest.approx(255 * 144.5 / 512, abs=2)
    assert stretched[112, -1, 0] == pytest.approx(255 * 239.5 / 256, abs=2)


def test_small_image_is_upscaled_to_the_crop() -> None:
    tiny = Image.new("RGB", (100, 60), (10, 200, 30))
    for spec in (BVLC_PREPROCESS, TORCHVISION_PREPROCESS):
        assert spec.resize_and_crop(tiny).size == (224, 224)


@pytest.mark.parametrize("spec", [BVLC_PREPROCESS, TORCHVISION_PREPROCESS], ids=["bvlc", "torchvision"])
def test_preprocess_json_round_trip(spec: Preprocess) -> None:
    text = spec.to_json()
    data = json.loads(text)
    assert set(data) == {"color", "scale", "mean", "std", "resize", "resize_mode", "crop", "layout", "interpolation"}
    assert Preprocess.from_json(text) == spec
    assert Preprocess.from_dict(data) == spec


def test_invalid_preprocess_metadata_is_a_toolkit_error() -> None:
    with pytest.raises(ToolkitError, match="preprocess"):
        Preprocess.from_json("{not json")
    incomplete = json.loads(BVLC_PREPROCESS.to_json())
    del incomplete["mean"]
    with pytest.raises(ToolkitError, match="mean"):
        Preprocess.from_json(json.dumps(incomplete))


# -- labels -----------------------------------------------------------------------------------------
THREE = LabelSet(("tench", "goldfish", "great white shark"), ("n01440764", "n01443537", "n01484850"))


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("n01443537_goldfish.JPEG", 1),  # wnid file-name prefix
        ("n01484850_10029.JPEG", 2),
        ("sub/n01440764_1.jpg", 0),  # the prefix wins over an unknown folder
        ("n01484850/img_001.jpg", 2),  # wnid class folder
        ("goldfish/img_001.jpg", 1),  # class-name folder
        ("2/img_001.jpg", 2),  # class-index folder
        ("n09999999_unknown.jpg", None),  # a wnid that is not a class, no folder
        ("holiday.jpg", None),
        ("trout/img_001.jpg", None),
    ],
)
def test_label_for_image(relative: str, expected: int | None, tmp_path: Path) -> None:
    assert label_for_image(tmp_path / relative, tmp_path, THREE) == expected


def test_label_for_image_without_labels(tmp_path: Path) -> None:
    assert label_for_image(tmp_path / "n01440764_1.jpg", tmp_path, None) is None


def test_read_label_file_synset_and_plain(tmp_path: Path) -> None:
    synset = tmp_path / "synset.txt"
    synset.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n", encoding="utf-8")
    labels = read_label_file(synset)
    assert labels.names == ("tench", "goldfish") and labels.wnids == ("n01440764", "n01443537")
    plain = tmp_path / "plain.txt"
    plain.write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    assert read_label_file(plain) == LabelSet(("cat", "dog", "bird"))
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ToolkitError, match=r"empty\.txt"):
        read_label_file(tmp_path / "empty.txt")


def test_imagenet_sample_file_names_label_themselves(synset_words_file: Path, imagenet_sample_dir: Path) -> None:
    labels = imagenet_labels()
    assert labels is not None and len(labels) == 1000
    assert labels.names[0] == "tench" and labels.wnids is not None and labels.wnids[0] == "n01440764"
    images = list_images(imagenet_sample_dir).images
    assert len(images) == 500
    found = [label_for_image(p, imagenet_sample_dir, labels) for p in images]
    assert None not in found
    assert found[0] == labels.wnids.index(images[0].name[:9])
    assert sorted(found) == list(range(0, 1000, 2))  # one photo for every even class index
