"""Decode one encoded image (JPEG or PNG) into RGB, within explicit limits, as small as its later resize allows.

JPEG goes through simplejpeg (libjpeg-turbo) when it is installed, downscaled while decoding (in the DCT domain) by
2, 4 or 8 when the image stays at least as large as its resize target: the decoder skips detail the resize would
throw away. libjpeg-turbo's other n/8 scales decode slower than the full size, so they are not used. Pillow decodes
PNG, JPEGs that simplejpeg cannot convert to RGB (CMYK/YCCK), and every JPEG when simplejpeg is absent, using
``draft()`` for the same downscale. The image size is read from the header first: an image with more pixels than
the limit is refused before any pixel is decoded (a decompression bomb is a small file that claims a huge image).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ipsbench.server.preprocess.transform import resized_size

try:
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg ships with the server extra
    simplejpeg = None

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DECODERS = ("simplejpeg", "pillow")
_SIMPLEJPEG_COLORSPACES = frozenset({"RGB", "YCbCr", "Gray"})
"""Header colour spaces that simplejpeg converts to RGB; others (CMYK, YCCK) go to Pillow."""


class ImageDecodeError(ValueError):
    """The bytes are not a JPEG or PNG image that decodes completely."""


class ImageTooLargeError(ValueError):
    """The image is larger than a limit; raised before its pixels are decoded."""


class ImageProblem(Exception):
    """An image of a request that cannot be preprocessed: which one, and why."""

    def __init__(self, index: int, cause: ImageDecodeError | ImageTooLargeError) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int
    """Width × height above which an image is refused from its header."""
    max_bytes: int
    """Encoded size above which an image is refused unread."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    """RGB, possibly downscaled while decoding."""
    original_size: tuple[int, int]
    """(width, height) as encoded."""


def default_decoder() -> str:
    """``simplejpeg`` when installed (the fastest JPEG path), else ``pillow``."""
    return "simplejpeg" if simplejpeg is not None else "pillow"


def image_format(data: bytes) -> str:
    """``JPEG`` or ``PNG`` from the magic bytes; :class:`ImageDecodeError` for anything else."""
    if data[:3] == JPEG_MAGIC:
        return "JPEG"
    if data[:8] == PNG_MAGIC:
        return "PNG"
    raise ImageDecodeError("not a JPEG or PNG image")


def decode_rgb(
    data: bytes, limits: DecodeLimits, shorter_side: int | None = None, decoder: str | None = None
) -> DecodedImage:
    """The image as an RGB Pillow image; a JPEG is downscaled while decoding as far as a later resize of its shorter
    side to ``shorter_side`` allows (None: full size).

    ``decoder`` picks the JPEG decoder (``simplejpeg`` or ``pillow``; default
    :func:`default_decoder`). Raises :class:`ImageTooLargeError` or :class:`ImageDecodeError`; never anything else
    for bad input.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"encoded image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    kind = image_format(data)
    decoder = decoder or default_decoder()
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if kind == "JPEG" and decoder == "simplejpeg" and simplejpeg is not None:
        decoded = _decode_simplejpeg(data, limits, shorter_side)
        if decoded is not None:
            return decoded
    return _decode_pillow(data, kind, limits, shorter_side)


def device_decodable_jpeg(data: bytes, limits: DecodeLimits) -> bool:
    """Whether ``data`` is a JPEG for a device decoder (nvJPEG): a header simplejpeg reads, in a colour space it
    converts to RGB, ending with its end-of-image marker. False sends the image to :func:`decode_rgb` (PNG, CMYK,
    a truncated file, no simplejpeg), which decodes it or raises this module's errors with their texts.

    Raises :class:`ImageTooLargeError` for an image over a limit (checked as :func:`decode_rgb` checks it, from the
    header), and :class:`ImageDecodeError` for a JPEG header that does not parse.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"encoded image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    if data[:3] != JPEG_MAGIC or simplejpeg is None:
        return False
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(f"bad JPEG header: {exc}") from None
    _check_pixels(width, height, limits)
    # A file cut short has no EOI marker: libjpeg (strict) refuses it, nvJPEG may fill the rest with grey.
    return colorspace in _SIMPLEJPEG_COLORSPACES and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def dct_downscale_factor(size: tuple[int, int], shorter_side: int | None) -> int:
    """The largest of 1, 2, 4, 8 by which a JPEG of ``size`` can be downscaled while decoding and still cover a
    resize of its shorter side to ``shorter_side`` (1: decode at full size)."""
    if not shorter_side:
        return 1
    target_width, target_height = resized_size(*size, shorter_side)
    factor = 8
    while factor > 1 and (size[0] // factor < target_width or size[1] // factor < target_height):
        factor //= 2
    return factor


def _check_pixels(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels} pixels: "
            "refused as a possible decompression bomb"
        )
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image header gives an empty size {width}x{height}")


def _decode_simplejpeg(data: bytes, limits: DecodeLimits, shorter_side: int | None) -> DecodedImage | None:
    """The decoded image, or None when the JPEG's colour space needs Pillow."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(f"bad JPEG header: {exc}") from None
    _check_pixels(width, height, limits)
    if colorspace not in _SIMPLEJPEG_COLORSPACES:
        return None
    factor = dct_downscale_factor((width, height), shorter_side)
    # min sizes that make libjpeg-turbo pick exactly 1/factor: its n/8 scales other than 1/2, 1/4 and 1/8 decode
    # slower than the full size.
    min_width, min_height = -(-width // factor), -(-height // factor)
    try:
        # strict: libjpeg's recoverable warnings (a truncated file, corrupt data) are errors, not grey pixels.
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_height, min_width=min_width, strict=True)
    except ValueError as exc:
        raise ImageDecodeError(f"JPEG data does not decode: {exc}") from None
    return DecodedImage(Image.fromarray(rgb, "RGB"), (width, height))


def _decode_pillow(data: bytes, kind: str, limits: DecodeLimits, shorter_side: int | None) -> DecodedImage:
    try:
        # Lazy: only the header is parsed here.
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{exc} (refused as a possible decompression bomb)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types for bad headers
        # Pillow's texts here name in-memory objects; the type is enough for a client.
        raise ImageDecodeError(f"bad {kind} header ({type(exc).__name__})") from None
    with image:
        width, height = image.size
        _check_pixels(width, height, limits)
        try:
            factor = dct_downscale_factor((width, height), shorter_side) if kind == "JPEG" else 1
            if factor > 1:
                # The DCT-domain downscale: the decoded size stays at least the resize target.
                image.draft("RGB", (width // factor, height // factor))
            return DecodedImage(image.convert("RGB"), (width, height))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{exc} (refused as a possible decompression bomb)") from None
        except Exception as exc:  # noqa: BLE001 - truncated data is OSError, corrupt chunks vary by plugin
            raise ImageDecodeError(f"{kind} data does not decode: {type(exc).__name__}: {exc}") from None
