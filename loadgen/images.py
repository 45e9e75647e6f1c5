"""Synthetic photo-like JPEGs with the image sizes of the ImageNet (ILSVRC2012) validation set.

Each image is a smooth colour field with blurred shapes and sensor-like noise, so it compresses like a photo
(tens of KB at quality 90) rather than like a flat test card. Output depends only on the seed and the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw, ImageFilter

JPEG_QUALITY = 90

# (width, height, share): approximate proportions of the ImageNet validation images, which are mostly
# 500 px on the longest side, landscape 4:3 being the most common.
IMAGENET_VAL_SIZES: tuple[tuple[int, int, float], ...] = (
    (500, 375, 0.42),
    (375, 500, 0.12),
    (500, 333, 0.14),
    (500, 334, 0.05),
    (333, 500, 0.04),
    (500, 500, 0.04),
    (500, 400, 0.03),
    (400, 500, 0.02),
    (500, 332, 0.02),
    (500, 281, 0.02),
    (500, 358, 0.02),
    (500, 366, 0.02),
    (500, 353, 0.02),
    (500, 340, 0.02),
    (340, 500, 0.02),
)


@dataclass(frozen=True)
class SyntheticImage:
    """One encoded image and its size."""

    index: int
    width: int
    height: int
    jpeg: bytes


def _size_for(rng: np.random.Generator) -> tuple[int, int]:
    shares = np.array([share for _, _, share in IMAGENET_VAL_SIZES])
    row = rng.choice(len(IMAGENET_VAL_SIZES), p=shares / shares.sum())
    width, height, _ = IMAGENET_VAL_SIZES[row]
    return width, height


def _photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An RGB uint8 array: low-frequency colour field, a few soft objects, fine noise."""
    grid = rng.integers(0, 256, size=(rng.integers(2, 5), rng.integers(2, 5), 3), dtype=np.uint8)
    image = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 8, y1 + 8), fill=colour)
        else:
            draw.rectangle((x0, y0, x1 + 8, y1 + 8), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 4.0))))
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.normal(0.0, float(rng.uniform(8.0, 16.0)), size=pixels.shape)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def synthetic_image(seed: int, index: int, quality: int = JPEG_QUALITY) -> SyntheticImage:
    """Image number ``index`` of the synthetic set for ``seed`` (independent of how many are made)."""
    rng = np.random.default_rng([seed, index])
    width, height = _size_for(rng)
    pixels = _photo_like(rng, width, height)
    jpeg = simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")
    return SyntheticImage(index=index, width=width, height=height, jpeg=jpeg)


def synthetic_images(count: int, seed: int, quality: int = JPEG_QUALITY) -> list[SyntheticImage]:
    """The first ``count`` images of the synthetic set for ``seed``."""
    return [synthetic_image(seed, index, quality) for index in range(count)]


def decode_rgb(jpeg: bytes) -> np.ndarray:
    """Decode a JPEG to an HxWx3 uint8 RGB array."""
    return simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
