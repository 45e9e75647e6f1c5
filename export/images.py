"""Preprocessed image batches for verification (top-1 agreement) and INT8 calibration.

From a folder of JPEG/PNG files, preprocessed by the network's recipe through the one implementation the server's
fronts and the load generator use (:mod:`ipsbench.server.preprocess.image`), or synthetic images when no folder is
given: smooth random colour fields with a few shapes, so that activations look more like a photo's than Gaussian
noise does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ipsbench.export.errors import ExportError
from ipsbench.export.models import NetworkSpec
from ipsbench.server.preprocess.decode import ImageDecodeError, ImageTooLargeError
from ipsbench.server.preprocess.image import image_tensor
from ipsbench.server.preprocess.transform import Normalizer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(folder: Path) -> list[Path]:
    """The images in ``folder`` (not recursive), sorted by name; an error when there are none."""
    if not folder.is_dir():
        raise ExportError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def preprocess(path: Path, spec: NetworkSpec) -> np.ndarray:
    """One image file → normalized CHW FP32 at the network's crop size, by its recipe."""
    try:
        return image_tensor(path.read_bytes(), spec.recipe)
    except (OSError, ImageDecodeError, ImageTooLargeError) as error:
        raise ExportError(f"image {path}: {error}") from None


def normalize(pixels_hwc: np.ndarray, spec: NetworkSpec) -> np.ndarray:
    """HWC values in [0, 1] → CHW normalized with the recipe's mean and std (synthetic images, already at the
    crop size)."""
    out = np.empty((3, *pixels_hwc.shape[:2]), dtype=np.float32)
    Normalizer.for_recipe(spec.recipe).hwc_to_chw(pixels_hwc * np.float32(255.0), out)
    return out


def synthetic(spec: NetworkSpec, count: int, seed: int = 0) -> np.ndarray:
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


def from_folder(folder: Path, spec: NetworkSpec, limit: int) -> np.ndarray:
    """Up to ``limit`` images of ``folder``, preprocessed, as one NCHW batch."""
    return np.stack([preprocess(path, spec) for path in image_files(folder)[:limit]])
