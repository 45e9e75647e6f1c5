"""Preprocessed image batches for verification (top-1 agreement) and INT8 calibration.

From a folder of JPEG/PNG files, preprocessed as the model's weights recipe says (resize the shorter side with the
recipe's filter, center-crop, scale to [0, 1], normalize), or synthetic images when no folder is given: smooth random
colour fields with a few shapes, so that activations look more like a photo's than Gaussian noise does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ipsbench.export.models import ModelSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_IMAGE_PIXELS = 40_000_000
"""Images larger than this are refused rather than decoded (decompression-bomb guard)."""


def image_files(folder: Path) -> list[Path]:
    """The images in ``folder`` (not recursive), sorted by name; an error when there are none."""
    if not folder.is_dir():
        raise SystemExit(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def preprocess(path: Path, spec: ModelSpec) -> np.ndarray:
    """One image file → normalized CHW FP32 at the model's crop size."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    resample = Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR
    with Image.open(path, formats=["JPEG", "PNG", "WEBP"]) as image:
        image = image.convert("RGB")
        scale = spec.resize_size / min(image.size)
        size = (max(spec.crop_size, round(image.width * scale)), max(spec.crop_size, round(image.height * scale)))
        image = image.resize(size, resample)
        left, top = (size[0] - spec.crop_size) // 2, (size[1] - spec.crop_size) // 2
        image = image.crop((left, top, left + spec.crop_size, top + spec.crop_size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return normalize(pixels, spec)


def normalize(pixels_hwc: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """HWC values in [0, 1] → CHW normalized with the spec's mean and std."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels_hwc - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def synthetic(spec: ModelSpec, count: int, seed: int = 0) -> np.ndarray:
    """``count`` synthetic images (NCHW FP32, normalized), the same for the same seed."""
    rng = np.random.default_rng(seed)
    side = spec.crop_size
    grid = np.linspace(0.0, 1.0, side, dtype=np.float32)
    images = []
    for _ in range(count):
        coarse = rng.random((4, 4, 3), dtype=np.float32)
        # Bilinear upsampling of a 4x4 colour grid: a smooth background.
        position = np.interp(grid, np.linspace(0, 1, 4), np.arange(4)).astype(np.float32)
        index = np.floor(position).astype(int).clip(0, 2)
        weight = position - index
        band = coarse[index] * (1 - weight)[:, None, None] + coarse[index + 1] * weight[:, None, None]  # rows
        pixels = band[:, index] * (1 - weight)[None, :, None] + band[:, index + 1] * weight[None, :, None]
        for _ in range(3):  # a few solid discs
            cy, cx, radius = rng.random(3) * [side, side, side / 4]
            yy, xx = np.ogrid[:side, :side]
            pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.random(3, dtype=np.float32)
        images.append(normalize(pixels, spec))
    return np.stack(images)


def from_folder(folder: Path, spec: ModelSpec, limit: int) -> np.ndarray:
    """Up to ``limit`` images of ``folder``, preprocessed, as one NCHW batch."""
    return np.stack([preprocess(path, spec) for path in image_files(folder)[:limit]])
