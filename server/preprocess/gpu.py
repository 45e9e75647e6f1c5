"""A front's preprocessing on a torch device (a CUDA GPU in the server): client-facing input → engine tensor there.

The same recipe as the CPU path (:mod:`~ipsbench.server.preprocess.image`), with torch ops:

* ``uint8``: the request's HWC pixels go to the device in one host-to-device copy; the layout (NHWC → NCHW), the
  channel order (``bgr``: the RGB planes reversed), the scaling and the normalization run there, as
  ``pixel * scale + bias`` in FP32 (the CPU path's two roundings), then the engine's type.
* ``jpeg``: a request's JPEGs are decoded together by ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on
  CUDA), each resized on the device (``torch.nn.functional.interpolate``: the recipe's filter, antialiased, the
  shorter side to ``resize``; rounded to whole pixel values as Pillow's resize gives them), centre-cropped, put in
  the channel order and normalized. What nvJPEG is not given or does not decode goes through the CPU path image by image
  (:func:`~ipsbench.server.preprocess.image.cropped_pixels`): PNG, CMYK/YCCK JPEGs, truncated files, anything
  the batched decode refuses. That path raises the CPU path's errors, so a bad image is refused with the same
  INVALID_ARGUMENT text on either device. Limits are checked from the header before any pixel is decoded.

How close it is to the CPU path: the CPU path decodes a JPEG downscaled in the DCT domain (by 2, 4 or 8 where the
resize allows) and resamples with Pillow; this one decodes at full size and resamples with torch's antialiased
filter. Both are low-pass filters of the same geometry, so pixels differ slightly at sharp edges (the GPU tests
bound the difference and check top-1 agreement); ``uint8`` fronts match to float rounding.

Synchronisation: the work runs on the calling thread's current CUDA stream, which is synchronised before the tensor
is returned, so whoever uses it next (the batcher's merge, the engine on its own stream) sees finished data.
torch and torchvision are imported when a :class:`DevicePreprocessor` is built, never by the CPU path.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ipsbench.server.preprocess.decode import (
    DecodeLimits,
    ImageDecodeError,
    ImageProblem,
    ImageTooLargeError,
    device_decodable_jpeg,
)
from ipsbench.server.preprocess.image import cropped_pixels
from ipsbench.server.preprocess.transform import Normalizer, crop_offsets, resized_size

if TYPE_CHECKING:
    import torch

    from ipsbench.server.model_spec import PreprocessSpec

log = logging.getLogger(__name__)

_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


class DevicePreprocessor:
    """Turns one front's client-facing array into its engine tensor on ``device`` (synchronous; thread-safe).

    ``to_host``: return a numpy array (for an engine that takes host memory) instead of the device tensor.
    """

    def __init__(self, front: PreprocessSpec, device: str, to_host: bool = False, decoder: str | None = None) -> None:
        import torch

        self.front = front
        self.device = torch.device(device)
        self.to_host = to_host
        self.decoder = decoder
        self.limits = DecodeLimits(front.max_pixels, front.max_image_bytes)
        normalizer = Normalizer.for_recipe(front.recipe)
        self._scale = torch.from_numpy(normalizer.scale).to(self.device)
        self._bias = torch.from_numpy(normalizer.bias).to(self.device)
        self._reverse_channels = normalizer.channel_order == "bgr"
        self._dtype = torch.from_numpy(np.empty(0, dtype=front.engine_input.datatype.numpy)).dtype
        self._count_lock = threading.Lock()
        self.decoded_on_device = 0
        """Images decoded by ``decode_jpeg`` on the device so far (the others went through the CPU decoder)."""
        _accept_read_only_arrays()

    def run(self, client: np.ndarray) -> torch.Tensor | np.ndarray:
        """The engine tensor for a request's client-facing array; :class:`ImageProblem` (the lowest index) for an
        image that cannot be preprocessed."""
        import torch

        with torch.no_grad():
            if self.front.kind == "uint8":
                out = self._normalize(torch.from_numpy(client).to(self.device).permute(0, 3, 1, 2))
            else:
                out = self._jpeg(client)
            if self.to_host:
                return out.cpu().numpy()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            return out

    def _normalize(self, nchw: torch.Tensor) -> torch.Tensor:
        """NCHW RGB pixel values (uint8, or float holding whole values) → in the recipe's channel order,
        normalized, contiguous, the engine's type."""
        import torch

        if self._reverse_channels:
            nchw = nchw.flip(1)
        normalized = nchw.to(torch.float32) * self._scale + self._bias
        return normalized.to(self._dtype).contiguous()

    def _jpeg(self, client: np.ndarray) -> torch.Tensor:
        import torch

        crop = self.front.recipe.crop
        images = client.shape[0]
        out = torch.empty((images, 3, crop, crop), dtype=self._dtype, device=self.device)
        problems: dict[int, ImageDecodeError | ImageTooLargeError] = {}
        on_device: list[int] = []
        on_cpu: list[int] = []
        for index in range(images):
            try:
                (on_device if device_decodable_jpeg(client[index, 0], self.limits) else on_cpu).append(index)
            except (ImageDecodeError, ImageTooLargeError) as exc:
                problems[index] = exc
        decoded = self._decode([client[index, 0] for index in on_device])
        for index, pixels in zip(on_device, decoded):
            if pixels is None:
                on_cpu.append(index)
            else:
                out[index] = self._normalize(self._resize_crop(pixels))[0]
        with self._count_lock:
            self.decoded_on_device += sum(pixels is not None for pixels in decoded)
        for index in sorted(on_cpu):
            try:
                pixels = cropped_pixels(client[index, 0], self.front.recipe, self.limits, self.decoder)
            except (ImageDecodeError, ImageTooLargeError) as exc:
                problems[index] = exc
                continue
            hwc = torch.from_numpy(pixels).to(self.device)
            out[index] = self._normalize(hwc.permute(2, 0, 1)[None])[0]
        if problems:
            first = min(problems)
            raise ImageProblem(first, problems[first])
        return out

    def _decode(self, encoded: Sequence[bytes]) -> list[torch.Tensor | None]:
        """3xHxW uint8 RGB tensors on the device, one decode call for all; None for an image only the CPU path
        can decode (the batch call fails as a whole, so then each image is tried alone)."""
        if not encoded:
            return []
        import torch

        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
        try:
            return [_rgb(image) for image in self._decode_jpeg(tensors)]
        except (RuntimeError, ValueError):
            pass
        results: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                results.append(_rgb(self._decode_jpeg([tensor])[0]))
            except (RuntimeError, ValueError) as exc:
                log.debug("decode_jpeg on %s refused an image (%s); decoding it on the CPU", self.device, exc)
                results.append(None)
        return results

    def _decode_jpeg(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)

    def _resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """3xHxW uint8 → 1x3xCxC float of whole pixel values: shorter side to ``resize``, the centre square."""
        import torch

        recipe = self.front.recipe
        height, width = int(pixels.shape[1]), int(pixels.shape[2])
        new_width, new_height = resized_size(width, height, recipe.resize)
        left, top = crop_offsets(new_width, new_height, recipe.crop)
        image = pixels[None].to(torch.float32)
        if (new_width, new_height) != (width, height):
            image = torch.nn.functional.interpolate(
                image, size=(new_height, new_width), mode=recipe.interpolation, align_corners=False, antialias=True
            )
            image = image.round().clamp(0, 255)
        return image[:, :, top : top + recipe.crop, left : left + recipe.crop]


def _rgb(image: torch.Tensor) -> torch.Tensor | None:
    """A decoded image as 3 channels (a greyscale one repeated); None for any other channel count."""
    if image.dim() != 3:
        return None
    if image.shape[0] == 1:
        return image.expand(3, -1, -1)
    return image if image.shape[0] == 3 else None


def _accept_read_only_arrays() -> None:
    """Request arrays are read-only views of the received bytes, wrapped by ``torch.from_numpy`` only to be copied
    to the device. PyTorch warns once per process about wrapping a non-writable array: that one warning is raised
    here, silenced, instead of on the first request. torchvision 0.29's deprecation warning for its decoders is
    silenced for this process too (``decode_jpeg`` is the documented batched nvJPEG entry point)."""
    import torch

    read_only = np.zeros(1, dtype=np.uint8)
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        torch.from_numpy(read_only)
    warnings.filterwarnings("ignore", message=_TORCHVISION_DEPRECATION, category=DeprecationWarning)
