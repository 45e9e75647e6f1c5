"""Requests built once before a run: image preprocessing and serialized ModelInferRequest bytes.

Three payload modes, checked against the input the model's metadata declares: ``fp32`` (resized, cropped,
normalized tensor), ``uint8`` (resized and cropped RGB, the server normalizes) and ``jpeg`` (encoded images in
a BYTES tensor of shape [K, 1], the server decodes and preprocesses), serialized Triton's way: each element
a 4-byte little-endian length then its bytes, in ``raw_input_contents``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tritonclient.grpc import service_pb2

from ipsbench.loadgen.image_sources import SourceImage, describe_sizes
from ipsbench.loadgen.images import synthetic_image

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE_RATIO = 256 / 224
"""ResNet evaluation: resize the shorter side to crop × 256/224, then centre-crop."""

MAX_PAYLOAD_BYTES_TOTAL = 2 * 1024**3
"""Bound on the memory held by all distinct requests together."""

MAX_IMAGE_POOL = 256
"""Distinct synthetic images decoded per run; requests draw from the pool in rotation."""


class PayloadError(ValueError):
    """The model's input cannot be fed with the requested payload."""


@dataclass(frozen=True)
class InputSpec:
    """The one image input of a model, as its KServe v2 metadata describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    """As declared, e.g. (-1, 3, 224, 224); a leading -1 means the model takes a batch dimension."""

    @property
    def encoded(self) -> bool:
        """A BYTES input of encoded images ([-1, 1] or [1]): the server decodes and preprocesses."""
        return self.datatype == "BYTES"

    @property
    def batched(self) -> bool:
        return len(self.shape) == (2 if self.encoded else 4)

    @property
    def layout(self) -> str:
        """``NCHW`` or ``NHWC``, from where the 3 colour channels are."""
        image_dims = self.shape[-3:]
        if image_dims[0] == 3:
            return "NCHW"
        if image_dims[2] == 3:
            return "NHWC"
        raise PayloadError(f"input {self.name!r} with shape {list(self.shape)} has no 3-channel image dimension")

    @property
    def crop_hw(self) -> tuple[int, int]:
        image_dims = self.shape[-3:]
        height, width = (image_dims[1], image_dims[2]) if self.layout == "NCHW" else (image_dims[0], image_dims[1])
        if height <= 0 or width <= 0:
            raise PayloadError(f"input {self.name!r} has variable image size {list(self.shape)}; a fixed H, W is needed")
        return height, width

    def __post_init__(self) -> None:
        if self.encoded:
            if len(self.shape) not in (1, 2) or self.shape[-1] not in (1, -1):
                raise PayloadError(f"BYTES input {self.name!r} has shape {list(self.shape)}; expected [-1,1] or [1]")
            return
        if len(self.shape) not in (3, 4):
            raise PayloadError(f"input {self.name!r} has shape {list(self.shape)}; expected [-1,3,H,W] or [3,H,W]")
        self.crop_hw  # noqa: B018 -- raises PayloadError when there is no fixed-size image dimension

    def request_shape(self, images: int) -> list[int]:
        image_dims = [1] if self.encoded else [3, *self.crop_hw] if self.layout == "NCHW" else [*self.crop_hw, 3]
        if not self.batched:
            if images != 1:
                raise PayloadError(f"model input {self.name!r} has no batch dimension; use 1 image per request")
            return image_dims
        return [images, *image_dims]

    def to_dict(self) -> dict:
        layout = "encoded" if self.encoded else self.layout
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape), "layout": layout}


def input_spec_from_metadata(metadata: service_pb2.ModelMetadataResponse) -> InputSpec:
    """The image input of a model from its ModelMetadata; exactly one 3- or 4-dimensional input is supported."""
    if len(metadata.inputs) != 1:
        names = [tensor.name for tensor in metadata.inputs]
        raise PayloadError(f"model {metadata.name!r} has {len(names)} inputs {names}; one image input is supported")
    tensor = metadata.inputs[0]
    return InputSpec(name=tensor.name, datatype=tensor.datatype, shape=tuple(int(d) for d in tensor.shape))


def preprocess(rgb: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """ResNet evaluation preprocessing of an HxWx3 uint8 image: resize, centre-crop, normalize; returns HxWx3 FP32."""
    return (resize_crop(rgb, crop_hw).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def resize_crop(rgb: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """Shorter side resized to crop × 256/224 (bilinear), then centre-cropped; returns HxWx3 uint8."""
    crop_h, crop_w = crop_hw
    short_side = round(crop_h * RESIZE_RATIO)
    height, width = rgb.shape[:2]
    if width <= height:
        new_w, new_h = short_side, int(short_side * height / width)
    else:
        new_h, new_w = short_side, int(short_side * width / height)
    resized = Image.fromarray(rgb, "RGB").resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)


def fp32_tensor(images: list[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack preprocessed HxWx3 images into the input's layout, contiguous FP32."""
    return image_tensor(images, spec, np.float32)


def image_tensor(images: list[np.ndarray], spec: InputSpec, dtype: type) -> np.ndarray:
    """Stack HxWx3 images into the input's layout, contiguous ``dtype``."""
    batch = np.stack(images)
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    if not spec.batched:
        batch = batch[0]
    return np.ascontiguousarray(batch, dtype=dtype)


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """A BYTES tensor's raw contents, Triton's way: each element as a 4-byte little-endian length, then itself."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def infer_request(
    model: str, version: str, spec: InputSpec, tensor: np.ndarray, request_id: str,
    datatype: str = "FP32", raw: bytes | None = None,
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying ``tensor`` (or ``raw`` contents of that shape) in ``raw_input_contents``;
    all outputs are requested."""
    return service_pb2.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name=spec.name, datatype=datatype, shape=list(tensor.shape)
        )],
        raw_input_contents=[tensor.tobytes() if raw is None else raw],
    )


def tensor_from_request(request: service_pb2.ModelInferRequest) -> np.ndarray:
    """The FP32 tensor a request carries (inverse of :func:`infer_request`)."""
    tensor = request.inputs[0]
    return np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(list(tensor.shape))


@dataclass(frozen=True)
class Payloads:
    """Serialized requests ready for the wire, and what each carries."""

    requests: tuple[bytes, ...]
    images_per_request: int
    request_shape: tuple[int, ...]
    image_sizes: tuple[tuple[int, int], ...]
    """(width, height) of each distinct source image."""
    labels: tuple[tuple[int | None, ...], ...] = ()
    """Per request, the class of each image where the source folder gives one."""
    checked_requests: tuple[bytes, ...] = ()
    """The same requests asking for their top classes (accuracy under load); empty when not checked."""

    @property
    def request_bytes(self) -> int:
        return max(len(request) for request in self.requests)

    def to_dict(self) -> dict:
        return {
            "distinct_requests": len(self.requests),
            "images_per_request": self.images_per_request,
            "request_shape": list(self.request_shape),
            "request_bytes": self.request_bytes,
            "source_images": len(self.image_sizes),
            "source_image_sizes": describe_sizes(self.image_sizes),
        }


MODE_DATATYPES = {"fp32": "FP32", "uint8": "UINT8", "jpeg": "BYTES"}
CLASS_COUNT = 5
"""Top classes asked for by a checked request: enough for top-1 and top-5."""


def with_top_classes(request: bytes, output: str, class_count: int = CLASS_COUNT) -> bytes:
    """``request`` asking for ``output`` as its top ``class_count`` classes (Triton's classification extension)."""
    parsed = service_pb2.ModelInferRequest.FromString(request)
    wanted = parsed.outputs.add(name=output)
    wanted.parameters["classification"].int64_param = class_count
    return parsed.SerializeToString()


def top_classes(response: service_pb2.ModelInferResponse) -> list[list[int]]:
    """Per image, the class indices of a classification response ("score:index[:label]" elements), best first."""
    output, raw = response.outputs[0], response.raw_output_contents[0]
    elements = []
    while raw:
        (length,) = struct.unpack_from("<I", raw)
        elements.append(raw[4:4 + length].decode())
        raw = raw[4 + length:]
    per_image = int(output.shape[-1]) if output.shape else len(elements)
    indices = [int(element.split(":")[1]) for element in elements]
    return [indices[start:start + per_image] for start in range(0, len(indices), max(per_image, 1))]


def check_mode(mode: str, spec: InputSpec) -> None:
    """PayloadError unless ``spec`` is the input ``mode`` feeds (e.g. jpeg needs a BYTES input)."""
    wanted = MODE_DATATYPES[mode]
    if spec.datatype != wanted:
        fronts = {"jpeg": " (the model's _jpeg front takes encoded images)",
                  "uint8": " (the model's _uint8 front takes them)"}
        raise PayloadError(
            f"payload {mode} needs a{'n' if wanted == 'FP32' else ''} {wanted} input, but input {spec.name!r} is "
            f"{spec.datatype}{fronts.get(mode, '')}"
        )


def build_payloads(
    model: str, version: str, spec: InputSpec, mode: str, images_per_request: int, distinct_requests: int,
    pool: Sequence[SourceImage],
) -> Payloads:
    """Serialize ``distinct_requests`` requests of ``images_per_request`` images each from ``pool`` (in
    rotation), once, in payload ``mode``."""
    check_mode(mode, spec)
    shape = spec.request_shape(images_per_request)
    if mode == "jpeg":
        one_request_bytes = images_per_request * max(len(image.encoded) + 4 for image in pool)
    else:
        one_request_bytes = int(np.prod(shape)) * (4 if mode == "fp32" else 1)
    fitting = max(1, MAX_PAYLOAD_BYTES_TOTAL // one_request_bytes)
    if distinct_requests > fitting:
        logger.warning(
            "%d distinct requests of %d bytes exceed the %d-byte payload bound; building %d",
            distinct_requests, one_request_bytes, MAX_PAYLOAD_BYTES_TOTAL, fitting,
        )
        distinct_requests = fitting
    prepared: dict[int, np.ndarray] = {}

    def pixels(index: int) -> np.ndarray:
        if index not in prepared:
            rgb = pool[index].rgb()
            prepared[index] = preprocess(rgb, spec.crop_hw) if mode == "fp32" else resize_crop(rgb, spec.crop_hw)
        return prepared[index]

    requests, labels = [], []
    for number in range(distinct_requests):
        chosen = [(number * images_per_request + k) % len(pool) for k in range(images_per_request)]
        labels.append(tuple(pool[i].label for i in chosen))
        if mode == "jpeg":
            tensor = np.empty(shape, dtype=np.uint8)  # only its shape is sent
            raw = serialize_bytes([pool[i].encoded for i in chosen])
            request = infer_request(model, version, spec, tensor.reshape(shape), f"ipsbench-{number}", "BYTES", raw)
        else:
            dtype = np.float32 if mode == "fp32" else np.uint8
            tensor = image_tensor([pixels(i) for i in chosen], spec, dtype)
            request = infer_request(model, version, spec, tensor, f"ipsbench-{number}", MODE_DATATYPES[mode])
        requests.append(request.SerializeToString())
    used = pool[: min(len(pool), distinct_requests * images_per_request)]
    return Payloads(
        requests=tuple(requests),
        images_per_request=images_per_request,
        request_shape=tuple(shape),
        image_sizes=tuple((image.width, image.height) for image in used),
        labels=tuple(labels),
    )


def build_fp32_payloads(
    model: str, version: str, spec: InputSpec, images_per_request: int, distinct_requests: int, seed: int
) -> Payloads:
    """Generate, decode and preprocess synthetic images (in memory); serialize ``distinct_requests`` requests once."""
    pool_size = min(distinct_requests * images_per_request, MAX_IMAGE_POOL)
    generated = (synthetic_image(seed, index) for index in range(pool_size))
    pool = [SourceImage(image.jpeg, image.width, image.height) for image in generated]
    return build_payloads(model, version, spec, "fp32", images_per_request, distinct_requests, pool)
