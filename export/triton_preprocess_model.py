"""Triton Python-backend model: an image (encoded JPEG/PNG, or cropped HWC uint8 pixels) → a classifier's input.

Copied by ``ipsbench-export --triton-fronts`` as ``<name>_<kind>_preprocess/1/model.py``, the first step of the
``<name>_<kind>`` ensemble. It runs in Triton's Python-backend stub, so it imports nothing of ipsbench: numpy,
Pillow and (when installed) simplejpeg only. It repeats ipsbench's recipe step for step (the server's
``preprocess/decode.py``, ``transform.py`` and ``image.py``): simplejpeg decodes JPEGs downscaled by 2, 4 or 8 in
the DCT domain as far as the resize allows (Pillow's ``draft()`` where simplejpeg is absent, and for PNG and
CMYK), Pillow resamples only the crop box with the recipe's filter, and the normalization is one float32
multiply-add per channel. With the same decoder and libraries as ipsbench-serve, the tensor is the same, byte for
byte; without simplejpeg, libjpeg's decode through Pillow may differ by a grey level here and there.

The recipe comes from the model config's ``parameters`` (ipsbench's ``ipsbench.preprocess.*`` keys, written by the
exporter); the kind (``jpeg`` or ``uint8``) from ``ipsbench.preprocess``.
"""

import io
import json

import numpy as np
from PIL import Image

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (ipsbench's own packaging checks); only Triton's stub runs execute()
    pb_utils = None

try:
    import simplejpeg
except ImportError:
    simplejpeg = None

PREFIX = "ipsbench.preprocess"
INPUT = "image"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
SIMPLEJPEG_COLORSPACES = frozenset({"RGB", "YCbCr", "Gray"})
DTYPES = {"FP32": np.float32, "FP16": np.float16}


class ImageError(ValueError):
    """An image of a request that cannot be preprocessed; the text goes back to the client."""


def resized_size(width, height, shorter):
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def crop_offsets(width, height, crop):
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


def dct_downscale_factor(size, shorter_side):
    target_width, target_height = resized_size(*size, shorter_side)
    factor = 8
    while factor > 1 and (size[0] // factor < target_width or size[1] // factor < target_height):
        factor //= 2
    return factor


def decode_scale(decoded_size, original_size):
    """libjpeg's n/8 scale, from the width ratio rounded to eighths (the decoded size is rounded up)."""
    if decoded_size == original_size:
        return 1.0
    width = original_size[0]
    eighths = round(decoded_size[0] * 8 / width)
    if width < 8 or eighths < 1:
        return decoded_size[0] / width
    return eighths / 8


class Recipe:
    def __init__(self, parameters):
        def value(key, default=None):
            text = parameters.get(f"{PREFIX}.{key}", default)
            if text is None:
                raise ValueError(f"model config parameter '{PREFIX}.{key}' is required")
            return text.strip()

        def triple(key):
            numbers = tuple(float(part) for part in value(key).split(","))
            if len(numbers) != 3:
                raise ValueError(f"model config parameter '{PREFIX}.{key}' needs three values")
            return numbers

        self.kind = parameters.get(PREFIX, "").strip().lower()
        if self.kind not in ("jpeg", "uint8"):
            raise ValueError(f"model config parameter '{PREFIX}' must be jpeg or uint8, got {self.kind!r}")
        self.crop = int(value("crop"))
        self.resize = int(value("resize", str(self.crop)))
        self.interpolation = value("interpolation", "bilinear")
        if self.interpolation not in RESAMPLING:
            raise ValueError(f"interpolation must be one of {', '.join(RESAMPLING)}, got {self.interpolation!r}")
        self.channel_order = value("channel_order", "rgb").lower()
        self.output_name = value("engine_input")
        self.dtype = DTYPES[value("engine_datatype", "FP32").upper()]
        self.max_pixels = int(value("max_pixels", "40000000"))
        self.max_bytes = int(value("max_image_bytes", str(10 * 1024 * 1024)))
        mean = np.asarray(triple("mean"), dtype=np.float64)
        std = np.asarray(triple("std"), dtype=np.float64)
        # (pixel / 255 - mean) / std as one float32 multiply-add, as ipsbench's Normalizer computes it.
        self.scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1)
        self.bias = (-mean / std).astype(np.float32).reshape(3, 1, 1)

    def normalize(self, pixels, out):
        """HxWx3 uint8 RGB → ``out`` (3xHxW in the engine's channel order and dtype)."""
        chw = pixels.transpose(2, 0, 1)
        if self.channel_order == "bgr":
            chw = chw[::-1]
        if out.dtype == np.float32:
            np.multiply(chw, self.scale, out=out)
            out += self.bias
        else:
            out[...] = chw * self.scale + self.bias

    def cropped_pixels(self, data):
        """The crop square of an encoded JPEG or PNG image as HxWx3 uint8 RGB."""
        image, original_size = self.decode(data)
        width, height = original_size
        new_width, new_height = resized_size(width, height, self.resize)
        left, top = crop_offsets(new_width, new_height, self.crop)
        scale = decode_scale(image.size, original_size)
        scale_x = scale * width / new_width
        scale_y = scale * height / new_height
        box = (left * scale_x, top * scale_y, (left + self.crop) * scale_x, (top + self.crop) * scale_y)
        return np.asarray(image.resize((self.crop, self.crop), RESAMPLING[self.interpolation], box=box))

    def decode(self, data):
        if len(data) > self.max_bytes:
            raise ImageError(f"encoded image is {len(data)} bytes, over the limit of {self.max_bytes} bytes")
        if data[:3] == JPEG_MAGIC:
            kind = "JPEG"
        elif data[:8] == PNG_MAGIC:
            kind = "PNG"
        else:
            raise ImageError("not a JPEG or PNG image")
        if kind == "JPEG" and simplejpeg is not None:
            decoded = self.decode_simplejpeg(data)
            if decoded is not None:
                return decoded
        return self.decode_pillow(data, kind)

    def check_pixels(self, width, height):
        if width * height > self.max_pixels:
            raise ImageError(f"image of {width}x{height} = {width * height} pixels is over the limit of "
                             f"{self.max_pixels} pixels: refused as a possible decompression bomb")
        if width <= 0 or height <= 0:
            raise ImageError(f"image header gives an empty size {width}x{height}")

    def decode_simplejpeg(self, data):
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise ImageError(f"bad JPEG header: {exc}") from None
        self.check_pixels(width, height)
        if colorspace not in SIMPLEJPEG_COLORSPACES:
            return None
        factor = dct_downscale_factor((width, height), self.resize)
        try:
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                         min_width=-(-width // factor), strict=True)
        except ValueError as exc:
            raise ImageError(f"JPEG data does not decode: {exc}") from None
        return Image.fromarray(rgb, "RGB"), (width, height)

    def decode_pillow(self, data, kind):
        try:
            image = Image.open(io.BytesIO(data), formats=[kind])
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types for bad headers
            raise ImageError(f"bad {kind} header ({type(exc).__name__})") from None
        with image:
            width, height = image.size
            self.check_pixels(width, height)
            try:
                factor = dct_downscale_factor((width, height), self.resize) if kind == "JPEG" else 1
                if factor > 1:
                    image.draft("RGB", (width // factor, height // factor))
                return image.convert("RGB"), (width, height)
            except Exception as exc:  # noqa: BLE001 - truncated data is OSError, corrupt chunks vary by plugin
                raise ImageError(f"{kind} data does not decode: {type(exc).__name__}: {exc}") from None

    def tensor(self, images):
        """One request's ``image`` array (N×1 bytes, or N×crop×crop×3 uint8) → its N×3×crop×crop tensor."""
        out = np.empty((images.shape[0], 3, self.crop, self.crop), dtype=self.dtype)
        if self.kind == "uint8":
            if images.dtype != np.uint8 or images.shape[1:] != (self.crop, self.crop, 3):
                raise ImageError(f"input '{INPUT}' must be uint8 [N, {self.crop}, {self.crop}, 3], "
                                 f"got {images.dtype} {list(images.shape)}")
            for index in range(images.shape[0]):
                self.normalize(images[index], out[index])
            return out
        for index in range(images.shape[0]):
            data = images[index].reshape(-1)[0]
            if isinstance(data, str):
                data = data.encode("latin-1")
            try:
                pixels = self.cropped_pixels(bytes(data))
            except ImageError as exc:
                raise ImageError(f"image {index} of the request: {exc}") from None
            self.normalize(pixels, out[index])
        return out


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.recipe = Recipe(parameters)

    def execute(self, requests):
        responses = []
        for request in requests:
            # One bad image fails its own request; the other requests of the batch are answered.
            try:
                images = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
                tensor = self.recipe.tensor(images)
            except ImageError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.recipe.output_name, tensor)]))
        return responses

    def finalize(self):
        pass
