"""Resize, centre-crop and normalize images into the engine's NCHW tensor (ResNet evaluation preprocessing).

The geometry is torchvision's ``Resize(resize)`` + ``CenterCrop(crop)``: the shorter side becomes ``resize`` (the
longer one ``int(resize * long / short)``), then a ``crop``×``crop`` square is cut at
``round((size - crop) / 2)``, as ``torchvision.transforms.functional.center_crop`` cuts it. Only the cropped
region is resampled (Pillow's ``resize(box=...)`` gives the same pixels as resizing the whole image and cropping,
since the filter still reads the pixels around the box). Pixels are scaled to [0, 1] and normalized with mean/std
in one multiply-add per channel, the channels taken in the recipe's order (``bgr``: the decoded RGB planes
reversed, a view, so it costs nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ipsbench.server.preprocess.recipe import CHANNEL_ORDERS, Recipe

RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
"""Pillow's filters by recipe name, antialiased when downscaling (as torchvision's PIL path uses them)."""


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) once the shorter side is ``shorter``, as torchvision's ``Resize(int)`` computes it."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def crop_offsets(width: int, height: int, crop: int) -> tuple[int, int]:
    """(left, top) of a centred ``crop`` square, as torchvision's ``center_crop``."""
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


@dataclass(frozen=True)
class Normalizer:
    """``(pixel / 255 - mean) / std`` per channel as ``pixel * scale + bias``; output channel ``c`` is input
    channel ``source_channels[c]`` of the RGB pixels (``mean``, ``std``, ``scale`` and ``bias`` are in output
    order)."""

    scale: np.ndarray
    bias: np.ndarray
    channel_order: str = "rgb"

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> Normalizer:
        return cls.from_mean_std(recipe.mean, recipe.std, recipe.channel_order)

    @classmethod
    def from_mean_std(cls, mean, std, channel_order: str = "rgb") -> Normalizer:
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1)
        bias = (-mean / std).astype(np.float32).reshape(3, 1, 1)
        return cls(scale, bias, channel_order)

    @property
    def source_channels(self) -> tuple[int, int, int]:
        """For each output channel, the RGB channel it is taken from."""
        return (2, 1, 0) if self.channel_order == "bgr" else (0, 1, 2)

    def hwc_to_chw(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """Normalize one HxWx3 uint8 RGB image into ``out`` (3xHxW, FP32 or FP16, in the channel order)."""
        chw = pixels.transpose(2, 0, 1)
        if self.channel_order == "bgr":
            chw = chw[::-1]
        if out.dtype == np.float32:
            np.multiply(chw, self.scale, out=out)
            out += self.bias
        else:
            out[...] = chw * self.scale + self.bias

    def nhwc_to_nchw(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """Normalize a batch of NxHxWx3 uint8 RGB images into ``out`` (Nx3xHxW, FP32 or FP16, in the channel
        order)."""
        for index in range(pixels.shape[0]):
            self.hwc_to_chw(pixels[index], out[index])


def center_crop_resized(
    image: Image.Image, resize: int, crop: int, original_size: tuple[int, int], interpolation: str = "bilinear"
) -> Image.Image:
    """The ``crop`` square of ``image`` resized so its shorter side is ``resize``, with the ``interpolation`` filter.

    ``original_size`` is the encoded image's (width, height): ``image`` may be smaller (downscaled while decoding),
    and the geometry is computed on the original so that every decoder cuts the same region.
    """
    width, height = original_size
    new_width, new_height = resized_size(width, height, resize)
    left, top = crop_offsets(new_width, new_height, crop)
    scale = decode_scale(image.size, original_size)
    scale_x = scale * width / new_width
    scale_y = scale * height / new_height
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return image.resize((crop, crop), RESAMPLING[interpolation], box=box)


def decode_scale(decoded_size: tuple[int, int], original_size: tuple[int, int]) -> float:
    """The factor a JPEG decoder scaled by: n/8 (libjpeg's DCT scaling), whose sizes are rounded up to whole pixels.

    Taken from the width ratio rounded to eighths, not from the ratio itself: the rounded-up size would shift the
    crop box by a fraction of a pixel, which shows at sharp edges.
    """
    if decoded_size == original_size:
        return 1.0
    width = original_size[0]
    eighths = round(decoded_size[0] * 8 / width)
    if width < 8 or eighths < 1:
        return decoded_size[0] / width
    return eighths / 8
