"""Requests built once before a run: each image preprocessed by the model's recipe, then serialized
ModelInferRequest bytes.

Three payload modes, checked against the input the model's metadata declares: ``fp32`` (the recipe's normalized
tensor), ``uint8`` (the recipe's resized and cropped RGB, the server normalizes) and ``jpeg`` (encoded images in a
BYTES tensor of shape [K, 1], the server decodes and preprocesses), serialized Triton's way. The pixels come from
the implementation the server's fronts and the exporter use (:mod:`ipsbench.server.preprocess.image`), with the
recipe the model's config states (ipsbench-export writes it), else ResNet's evaluation recipe at the input's size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2

from ipsbench.loadgen.image_sources import SourceImage, describe_sizes
from ipsbench.server import datatypes
from ipsbench.server.preprocess.decode import ImageDecodeError, ImageTooLargeError
from ipsbench.server.preprocess.image import cropped_pixels, normalized
from ipsbench.server.preprocess.recipe import Recipe, RecipeError, read_parameters

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES_TOTAL = 2 * 1024**3
"""Bound on the memory held by all distinct requests together."""

MAX_IMAGE_POOL = 256
"""Distinct source images decoded per run; requests draw from the pool in rotation."""


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


def model_recipe(spec: InputSpec, config: model_config_pb2.ModelConfig | None) -> Recipe:
    """The recipe the model's config states (``config``: from the target's ModelConfig, None where it has none),
    else ResNet's evaluation recipe at the input's size; PayloadError when the two disagree or the input is not
    square."""
    height, width = spec.crop_hw
    stated = None
    if config is not None:
        try:
            stated, _ = read_parameters({key: value.string_value for key, value in config.parameters.items()})
        except RecipeError as error:
            raise PayloadError(f"the model's config states a preprocessing recipe that is not valid: {error}") from None
    if stated is not None:
        if (stated.crop, stated.crop) != (height, width):
            raise PayloadError(
                f"the model's recipe crops to {stated.crop}x{stated.crop} but input {spec.name!r} is {height}x{width}"
            )
        return stated
    if height != width:
        raise PayloadError(f"input {spec.name!r} takes {height}x{width} images; only square crops are built")
    return Recipe.imagenet(height)


def image_pixels(image: SourceImage, recipe: Recipe) -> np.ndarray:
    """The recipe's HxWx3 uint8 crop of a source image; PayloadError naming the image when it does not decode."""
    try:
        return cropped_pixels(image.encoded, recipe)
    except (ImageDecodeError, ImageTooLargeError) as error:
        raise PayloadError(f"image {image.name or '(synthetic)'}: {error}") from None


def request_tensor(pixels: list[np.ndarray], spec: InputSpec, mode: str, recipe: Recipe) -> np.ndarray:
    """Images' crops (HxWx3 uint8) as one request's input tensor in the input's layout: the crops themselves
    (``uint8``) or the recipe's normalized tensors (``fp32``), contiguous."""
    if mode == "fp32":
        batch = np.stack([normalized(image, recipe) for image in pixels])  # NCHW
        if spec.layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        dtype = np.float32
    else:
        batch = np.stack(pixels)  # NHWC
        if spec.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        dtype = np.uint8
    if not spec.batched:
        batch = batch[0]
    return np.ascontiguousarray(batch, dtype=dtype)


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
    count = int(np.prod([int(d) for d in output.shape], dtype=np.int64)) if output.shape else 0
    try:
        elements = [bytes(element).decode() for element in datatypes.split_bytes_elements(raw, count)]
    except datatypes.BytesFormatError as error:
        raise ValueError(f"not a classification answer: {error}") from None
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
    pool: Sequence[SourceImage], recipe: Recipe | None = None,
) -> Payloads:
    """Serialize ``distinct_requests`` requests of ``images_per_request`` images each from ``pool`` (in
    rotation), once, in payload ``mode``, preprocessed by ``recipe`` (default: ResNet's at the input's size)."""
    check_mode(mode, spec)
    if mode != "jpeg":
        recipe = recipe or model_recipe(spec, None)
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
            prepared[index] = image_pixels(pool[index], recipe)
        return prepared[index]

    requests, labels = [], []
    for number in range(distinct_requests):
        chosen = [(number * images_per_request + k) % len(pool) for k in range(images_per_request)]
        labels.append(tuple(pool[i].label for i in chosen))
        if mode == "jpeg":
            tensor = np.empty(shape, dtype=np.uint8)  # only its shape is sent
            raw = datatypes.join_bytes_elements([pool[i].encoded for i in chosen])
            request = infer_request(model, version, spec, tensor.reshape(shape), f"ipsbench-{number}", "BYTES", raw)
        else:
            tensor = request_tensor([pixels(i) for i in chosen], spec, mode, recipe)
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
