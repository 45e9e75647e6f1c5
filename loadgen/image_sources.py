"""Where a run's images come from: a folder (ImageNet's validation layout with synset folders gives labels, any
folder of JPEG/PNG gives unlabelled images), or synthetic ImageNet-style photos cached on disk.

A folder's files are decoded in full before the run, with the server's decoder and default limits, whatever the
payload mode: one that does not decode (truncated, not an image, too large) is skipped with its reason, so no
request carries an image the server must refuse.

The synthetic set depends only on the seed, so a cached file is reused as is; files are written atomically, so
processes sharing a cache never read half a file."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from ipsbench.loadgen.images import synthetic_image
from ipsbench.server.preprocess.decode import ImageDecodeError, ImageTooLargeError, decode_rgb
from ipsbench.server.preprocess.image import DEFAULT_LIMITS

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_IMAGE_PIXELS = DEFAULT_LIMITS.max_pixels
"""Decoding refuses images with more pixels (decompression bombs), as the server does by default."""


class ImageSourceError(ValueError):
    """The images cannot be read (empty folder, unreadable file)."""


@dataclass(frozen=True)
class SourceImage:
    """One encoded image as read from disk or generated, its size, and its label where the layout gives one."""

    encoded: bytes
    width: int
    height: int
    label: int | None = None
    name: str = ""

    def rgb(self) -> np.ndarray:
        """Decoded to an HxWx3 uint8 RGB array."""
        if self.encoded[:2] == b"\xff\xd8":
            return simplejpeg.decode_jpeg(self.encoded, colorspace="RGB")
        return decode_with_pillow(self.encoded)


def decode_with_pillow(encoded: bytes) -> np.ndarray:
    import io

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with Image.open(io.BytesIO(encoded), formats=["JPEG", "PNG"]) as image:
        return np.asarray(image.convert("RGB"))


def default_cache_dir(seed: int, count: int) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ipsbench" / "images" / f"{seed}-{count}"


def synthetic_source(seed: int, count: int, cache_dir: str | Path | None) -> list[SourceImage]:
    """The first ``count`` synthetic images of ``seed``, read from the cache or generated into it."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir(seed, count)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("image cache %s not usable (%s); generating in memory", folder, error.strerror)
        folder = None
    images = []
    for index in range(count):
        path = folder / f"{seed}-{index:05d}.jpg" if folder else None
        encoded = path.read_bytes() if path is not None and path.is_file() else None
        if encoded is None:
            encoded = synthetic_image(seed, index).jpeg
            if path is not None:
                _write_atomically(path, encoded)
        height, width = simplejpeg.decode_jpeg_header(encoded)[:2]
        images.append(SourceImage(encoded, width, height, None, f"synthetic-{seed}-{index}"))
    return images


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as error:
        logger.warning("could not cache %s: %s", path, error.strerror)


def image_files(folder: Path) -> tuple[list[tuple[Path, int | None]], int]:
    """The image files of ``folder`` in a stable order, with their labels, and the number of classes: with
    sub-folders (ImageNet's validation layout), label = the sub-folder's index in sorted order."""
    if not folder.is_dir():
        raise ImageSourceError(f"{folder} is not a folder")
    classes = sorted(entry for entry in folder.iterdir() if entry.is_dir())
    if classes:
        files = [(path, label) for label, sub in enumerate(classes) for path in sorted(sub.iterdir())
                 if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    else:
        files = [(path, None) for path in sorted(folder.iterdir())
                 if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not files:
        raise ImageSourceError(f"no JPEG or PNG images in {folder}")
    return files, len(classes)


@dataclass(frozen=True)
class FolderImages:
    """The usable images read from a folder (or generated), its class count, and the files skipped as unusable."""

    images: list[SourceImage]
    classes: int
    skipped: tuple[tuple[str, str], ...] = ()
    """(name relative to the folder, why), in the folder's order."""

    @property
    def read(self) -> int:
        """Files read: the usable ones and the skipped ones."""
        return len(self.images) + len(self.skipped)


def folder_source(folder: str | Path, count: int) -> FolderImages:
    """Up to ``count`` images of ``folder`` (spread over its classes in a stable order), each decoded in full within
    the server's decode limits: a file that does not decode (truncated, not an image, too large) is skipped with
    its reason. ImageSourceError when the folder has no image file at all."""
    folder = Path(folder)
    files, classes = image_files(folder)
    step = max(len(files) // count, 1)
    images, skipped = [], []
    for path, label in files[::step][:count]:
        name = str(path.relative_to(folder))
        try:
            encoded, width, height = _usable_image(path)
        except (ImageDecodeError, ImageTooLargeError) as error:
            skipped.append((name, str(error)))
            continue
        except OSError as error:
            skipped.append((name, f"cannot be read: {error.strerror or error}"))
            continue
        images.append(SourceImage(encoded, width, height, label, name))
    return FolderImages(images, classes, tuple(skipped))


def _usable_image(path: Path) -> tuple[bytes, int, int]:
    """The bytes, width and height of an image file that decodes completely within the server's default decode
    limits (downscaled while decoding, so a large JPEG costs little); the decoder's errors otherwise."""
    size = path.stat().st_size
    if size > DEFAULT_LIMITS.max_bytes:
        raise ImageTooLargeError(f"file is {size} bytes, over the limit of {DEFAULT_LIMITS.max_bytes} bytes")
    encoded = path.read_bytes()
    width, height = decode_rgb(encoded, DEFAULT_LIMITS, shorter_side=1).original_size
    return encoded, width, height


def describe_sizes(sizes: Iterable[tuple[int, int]]) -> dict[str, int]:
    """How many images have each ``WxH`` size, given (width, height) pairs; the most common size first."""
    counts = Counter(f"{width}x{height}" for width, height in sizes)
    return dict(counts.most_common())
