"""One image → a model's input: decode, resize the shorter side, cut the centre square, normalize.

The single implementation of the recipe (:mod:`ipsbench.server.preprocess.recipe`): the server's fronts, the load
generator's fp32 and uint8 payloads and the exporter's verification and calibration images all call these, so one
JPEG gives one tensor, byte for byte, in every role. Decoding is :mod:`~ipsbench.server.preprocess.decode`'s (a JPEG
downscaled while decoding as far as the resize allows), the geometry and normalization
:mod:`~ipsbench.server.preprocess.transform`'s.
"""

from __future__ import annotations

import numpy as np

from ipsbench.server.preprocess.decode import DecodeLimits, decode_rgb
from ipsbench.server.preprocess.recipe import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, Recipe
from ipsbench.server.preprocess.transform import Normalizer, center_crop_resized

DEFAULT_LIMITS = DecodeLimits(DEFAULT_MAX_PIXELS, DEFAULT_MAX_IMAGE_BYTES)


def cropped_pixels(
    data: bytes, recipe: Recipe, limits: DecodeLimits = DEFAULT_LIMITS, decoder: str | None = None
) -> np.ndarray:
    """The recipe's ``crop``×``crop`` square of an encoded JPEG or PNG image, as HxWx3 uint8 RGB.

    Raises :class:`~ipsbench.server.preprocess.decode.ImageDecodeError` or ``ImageTooLargeError`` for bytes that
    are not a complete image within ``limits``."""
    decoded = decode_rgb(data, limits, recipe.resize, decoder)
    image = center_crop_resized(decoded.image, recipe.resize, recipe.crop, decoded.original_size, recipe.interpolation)
    return np.asarray(image)


def normalized(pixels: np.ndarray, recipe: Recipe, dtype=np.float32) -> np.ndarray:
    """HxWx3 uint8 pixels → the normalized 3xHxW tensor (``dtype`` FP32 or FP16)."""
    out = np.empty((3, *pixels.shape[:2]), dtype=dtype)
    Normalizer.for_recipe(recipe).hwc_to_chw(pixels, out)
    return out


def image_tensor(
    data: bytes, recipe: Recipe, limits: DecodeLimits = DEFAULT_LIMITS, decoder: str | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """An encoded image → the model's 3xHxW input tensor, as the recipe says."""
    return normalized(cropped_pixels(data, recipe, limits, decoder), recipe, dtype)
