"""Requests built once before a run: image preprocessing and serialized ModelInferRequest bytes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tritonclient.grpc import service_pb2

from loadgen.images import decode_rgb, synthetic_image

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
    def batched(self) -> bool:
        return len(self.shape) == 4

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
        if len(self.shape) not in (3, 4):
            raise PayloadError(f"input {self.name!r} has shape {list(self.shape)}; expected [-1,3,H,W] or [3,H,W]")
        self.crop_hw  # noqa: B018 -- raises PayloadError when there is no fixed-size image dimension

    def request_shape(self, images: int) -> list[int]:
        image_dims = [3, *self.crop_hw] if self.layout == "NCHW" else [*self.crop_hw, 3]
        if not self.batched:
            if images != 1:
                raise PayloadError(f"model input {self.name!r} has no batch dimension; use 1 image per request")
            return image_dims
        return [images, *image_dims]

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape), "layout": self.layout}


def input_spec_from_metadata(metadata: service_pb2.ModelMetadataResponse) -> InputSpec:
    """The image input of a model from its ModelMetadata; exactly one 3- or 4-dimensional input is supported."""
    if len(metadata.inputs) != 1:
        names = [tensor.name for tensor in metadata.inputs]
        raise PayloadError(f"model {metadata.name!r} has {len(names)} inputs {names}; one image input is supported")
    tensor = metadata.inputs[0]
    return InputSpec(name=tensor.name, datatype=tensor.datatype, shape=tuple(int(d) for d in tensor.shape))


def preprocess(rgb: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """ResNet evaluation preprocessing of an HxWx3 uint8 image: resize, centre-crop, normalize; returns HxWx3 FP32."""
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
    cropped = np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)), dtype=np.float32)
    return (cropped / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def fp32_tensor(images: list[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack preprocessed HxWx3 images into the input's layout, contiguous FP32."""
    batch = np.stack(images)
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    if not spec.batched:
        batch = batch[0]
    return np.ascontiguousarray(batch, dtype=np.float32)


def infer_request(
    model: str, version: str, spec: InputSpec, tensor: np.ndarray, request_id: str
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying ``tensor`` in ``raw_input_contents``; all outputs are requested."""
    return service_pb2.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name=spec.name, datatype="FP32", shape=list(tensor.shape)
        )],
        raw_input_contents=[tensor.tobytes()],
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

    @property
    def request_bytes(self) -> int:
        return max(len(request) for request in self.requests)

    def to_dict(self) -> dict:
        sizes: dict[str, int] = {}
        for width, height in self.image_sizes:
            sizes[f"{width}x{height}"] = sizes.get(f"{width}x{height}", 0) + 1
        return {
            "distinct_requests": len(self.requests),
            "images_per_request": self.images_per_request,
            "request_shape": list(self.request_shape),
            "request_bytes": self.request_bytes,
            "source_images": len(self.image_sizes),
            "source_image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        }


def build_fp32_payloads(
    model: str, version: str, spec: InputSpec, images_per_request: int, distinct_requests: int, seed: int
) -> Payloads:
    """Generate, decode and preprocess synthetic images; serialize ``distinct_requests`` requests once."""
    if spec.datatype != "FP32":
        raise PayloadError(f"payload fp32 needs an FP32 input, but input {spec.name!r} is {spec.datatype}")
    shape = spec.request_shape(images_per_request)
    one_request_bytes = int(np.prod(shape)) * 4
    fitting = max(1, MAX_PAYLOAD_BYTES_TOTAL // one_request_bytes)
    if distinct_requests > fitting:
        logger.warning(
            "%d distinct requests of %d bytes exceed the %d-byte payload bound; building %d",
            distinct_requests, one_request_bytes, MAX_PAYLOAD_BYTES_TOTAL, fitting,
        )
        distinct_requests = fitting
    pool_size = min(distinct_requests * images_per_request, MAX_IMAGE_POOL)
    pool, sizes = [], []
    for index in range(pool_size):
        image = synthetic_image(seed, index)
        pool.append(preprocess(decode_rgb(image.jpeg), spec.crop_hw))
        sizes.append((image.width, image.height))
    requests = []
    for number in range(distinct_requests):
        first = number * images_per_request
        images = [pool[(first + k) % pool_size] for k in range(images_per_request)]
        request = infer_request(model, version, spec, fp32_tensor(images, spec), f"ipsbench-{number}")
        requests.append(request.SerializeToString())
    return Payloads(
        requests=tuple(requests),
        images_per_request=images_per_request,
        request_shape=tuple(shape),
        image_sizes=tuple(sizes),
    )
