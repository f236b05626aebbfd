"""Preprocessing specs that travel with every artifact, and the one code path that applies them.

Validation, calibration, evaluation and the device bundle all call `Preprocess.apply`, so a model is
always fed exactly what its metadata says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image

from export.errors import ToolkitError

IO_TYPES = ("float32", "int8", "uint8")  # a TFLite model's input/output type; uint8 takes raw RGB camera pixels


def check_io(io: str, quantize: str | None) -> None:
    """The `--io` rule: a known type, and integer I/O only on an int8 model."""
    if io not in IO_TYPES:
        raise ToolkitError(f"unknown --io {io!r} (choose from {', '.join(IO_TYPES)})")
    if io != "float32" and quantize != "int8":
        raise ToolkitError(f"--io {io} needs --quantize int8")


ResizeMode = Literal["stretch", "shorter"]


@dataclass(frozen=True)
class Preprocess:
    """How an RGB photo becomes the model's input tensor.

    `color` is the channel order the model expects; `scale` multiplies 0-255 pixels before `mean` is
    subtracted and the result divided by `std` (both in the model's channel order). `resize` is
    `[h, w]` for "stretch" (whole image, aspect ignored, as Caffe) or the shorter side for "shorter"
    (aspect kept, as torchvision); then a centre `crop`.
    """

    color: Literal["RGB", "BGR"]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: tuple[int, int] | int
    resize_mode: ResizeMode
    crop: int
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    # -- (de)serialisation: the `preprocess` metadata key -------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        try:
            resize = data["resize"]
            return cls(
                color=data["color"],
                scale=float(data["scale"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                resize=tuple(int(v) for v in resize) if isinstance(resize, list | tuple) else int(resize),
                resize_mode=data["resize_mode"],
                crop=int(data["crop"]),
                layout=data.get("layout", "NCHW"),
                interpolation=data.get("interpolation", "bilinear"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ToolkitError(f"invalid preprocess metadata ({exc})") from None

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ToolkitError(f"invalid preprocess metadata ({exc})") from None

    def with_layout(self, layout: Literal["NCHW", "NHWC"]) -> Preprocess:
        return replace(self, layout=layout)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image (no batch axis)."""
        return (3, self.crop, self.crop) if self.layout == "NCHW" else (self.crop, self.crop, 3)

    # -- application --------------------------------------------------------------------------------
    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometric part: resize, then centre crop to `crop` x `crop` (RGB in, RGB out)."""
        resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
        width, height = image.size
        if self.resize_mode == "stretch":
            target_h, target_w = self.resize if isinstance(self.resize, tuple) else (self.resize, self.resize)
        else:
            short = self.resize if isinstance(self.resize, int) else min(self.resize)
            if width <= height:
                target_w, target_h = short, max(1, round(height * short / width))
            else:
                target_w, target_h = max(1, round(width * short / height)), short
        if (width, height) != (target_w, target_h):
            image = image.resize((target_w, target_h), resample)
        if target_w < self.crop or target_h < self.crop:
            image = image.resize((max(self.crop, target_w), max(self.crop, target_h)), resample)
            target_w, target_h = image.size
        left = (target_w - self.crop) // 2
        top = (target_h - self.crop) // 2
        return image.crop((left, top, left + self.crop, top + self.crop))

    def apply(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 array in the model's layout (no batch axis)."""
        pixels = np.asarray(self.resize_and_crop(image), dtype=np.float32)  # HWC, RGB, 0-255
        if self.color == "BGR":
            pixels = pixels[..., ::-1]
        pixels = (pixels * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(
            self.std, np.float32
        )
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)


# Caffe's BVLC evaluation: BGR, 0-255, minus the per-channel mean, whole image to 256x256, centre 224.
BVLC_PREPROCESS = Preprocess(
    color="BGR",
    scale=1.0,
    mean=(104.0, 117.0, 123.0),
    std=(1.0, 1.0, 1.0),
    resize=(256, 256),
    resize_mode="stretch",
    crop=224,
)

# torchvision's ImageNet weights: RGB, /255, ImageNet mean/std, shorter side 256, centre 224.
TORCHVISION_PREPROCESS = Preprocess(
    color="RGB",
    scale=1.0 / 255.0,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize=256,
    resize_mode="shorter",
    crop=224,
)
