"""What the server needs to know about a model, derived once from its ``ModelConfig`` and validated.

A *preprocessing front* is a model whose config declares the client-facing input (encoded images as BYTES, or
decoded HWC UINT8 images) and carries ``ipsbench.preprocess*`` parameters saying how to turn it into the engine's
NCHW input; :class:`PreprocessSpec` holds them and :meth:`ModelSpec.engine_spec` is what the engine sees.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2

from ipsbench.server import datatypes
from ipsbench.server.backends.registry import BackendEntry

_KIND = model_config_pb2.ModelInstanceGroup.Kind
_REJECT = model_config_pb2.ModelQueuePolicy.TimeoutAction.Value("REJECT")


class ConfigError(ValueError):
    """config.pbtxt asks for something invalid or unsupported."""


def dims_text(dims) -> str:
    """Triton's DimsListToString: ``[-1,3,224,224]``."""
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output, with everything the hot path needs precomputed."""

    name: str
    datatype: datatypes.DataType
    dims: tuple[int, ...]
    """Dims from the config, without the batch dimension."""
    optional: bool
    fixed: bool
    """No ``-1`` in ``dims``: the shape of a sample (and, except for BYTES, its byte size) is known in advance."""
    sample_nbytes: int
    """Bytes of one sample (one batch element, or the whole tensor without batching) when ``fixed``; -1 for BYTES."""
    full_dims_text: str
    """Dims with ``-1`` for the batch dimension, as Triton prints them in errors."""
    metadata_shape: tuple[int, ...]


@dataclass(frozen=True)
class BatchingPolicy:
    """How requests are queued and grouped, from ``dynamic_batching``."""

    dynamic: bool
    """False: each request runs on its own (Triton's default scheduler)."""
    max_batch_size: int
    max_queue_delay_ns: int
    preferred_batch_sizes: frozenset[int]
    max_queue_size: int
    """0: unbounded, as in Triton."""
    default_timeout_ns: int
    """0: requests never time out in the queue."""
    timeout_reject: bool


@dataclass(frozen=True)
class InstanceSpec:
    """One engine instance from ``instance_group``."""

    index: int
    group: str
    kind: str
    """``CPU``, ``GPU`` or ``AUTO``."""
    device_id: int | None


PREPROCESS_KINDS = ("jpeg", "uint8")
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
_PREFIX = "ipsbench.preprocess"


@dataclass(frozen=True)
class PreprocessSpec:
    """How a front turns its client-facing input into the engine's input, from the ``ipsbench.preprocess*``
    parameters (all string values):

    * ``ipsbench.preprocess``: ``jpeg`` (BYTES input, dims [1]: encoded JPEG or PNG images) or ``uint8`` (UINT8
      input, dims [crop, crop, 3]: decoded, resized and cropped HWC RGB images);
    * ``.engine_input``: the engine's input name; ``.engine_datatype``: ``FP32`` (default) or ``FP16``;
    * ``.resize`` (jpeg): the shorter side after resizing; ``.crop``: the square centre crop;
    * ``.mean`` / ``.std``: three comma-separated values applied to pixels scaled to [0, 1] (default ImageNet's);
    * ``.max_pixels`` (default 40,000,000): larger images are rejected from their header, before decoding;
    * ``.max_image_bytes`` (default 10 MiB): larger encoded images are rejected before decoding.
    """

    kind: str
    client_input: str
    engine_input: TensorSpec
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_pixels: int
    max_image_bytes: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: model_config_pb2.ModelConfig
    backend: BackendEntry
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    output_names: tuple[str, ...]
    required_inputs: tuple[str, ...]
    uniform_inputs: bool
    """All inputs required with fixed dims: any requests can share a batch."""
    batching: BatchingPolicy
    instances: tuple[InstanceSpec, ...]
    preprocess: PreprocessSpec | None = None
    """Set for a preprocessing front: ``inputs`` are then the client-facing ones."""

    @property
    def platform(self) -> str:
        return self.config.platform

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def engine_spec(self) -> ModelSpec:
        """The spec as the engine sees it: for a front, its one input is the preprocessed NCHW tensor."""
        if self.preprocess is None:
            return self
        engine_input = self.preprocess.engine_input
        return dataclasses.replace(
            self,
            inputs={engine_input.name: engine_input},
            required_inputs=(engine_input.name,),
            uniform_inputs=True,
            preprocess=None,
        )

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig, backend: BackendEntry) -> ModelSpec:
        """Validate ``config`` (already named) and precompute; fills ``platform``/``backend`` in ``config``."""
        if not config.platform:
            config.platform = backend.platform
        if not config.backend:
            config.backend = backend.name
        max_batch_size = config.max_batch_size
        if max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be >= 0, got {max_batch_size}")
        for unsupported in ("sequence_batching", "ensemble_scheduling"):
            if config.HasField(unsupported):
                raise ConfigError(f"'{unsupported}' is not supported")
        if config.batch_input or config.batch_output:
            raise ConfigError("batch_input/batch_output are not supported")
        if not config.input:
            raise ConfigError("the config must declare at least one input")
        if not config.output:
            raise ConfigError("the config must declare at least one output")
        inputs = _tensors(config.input, max_batch_size, "input")
        outputs = _tensors(config.output, max_batch_size, "output")
        preprocess = _preprocess(config, inputs)
        return cls(
            name=config.name,
            config=config,
            backend=backend,
            max_batch_size=max_batch_size,
            inputs=inputs,
            outputs=outputs,
            output_names=tuple(outputs),
            required_inputs=tuple(n for n, t in inputs.items() if not t.optional),
            uniform_inputs=all(t.fixed and not t.optional for t in inputs.values()),
            batching=_batching(config),
            instances=_instances(config),
            preprocess=preprocess,
        )


def _tensors(declared, max_batch_size: int, what: str) -> dict[str, TensorSpec]:
    tensors: dict[str, TensorSpec] = {}
    for tensor in declared:
        if not tensor.name:
            raise ConfigError(f"every {what} needs a name")
        if tensor.name in tensors:
            raise ConfigError(f"{what} '{tensor.name}' is declared twice")
        datatype = datatypes.BY_CONFIG.get(tensor.data_type)
        if datatype is None:
            raise ConfigError(
                f"{what} '{tensor.name}': data type {datatypes.config_type_name(tensor.data_type)} is not supported"
            )
        if tensor.HasField("reshape"):
            raise ConfigError(f"{what} '{tensor.name}': reshape is not supported")
        if getattr(tensor, "is_shape_tensor", False):
            raise ConfigError(f"{what} '{tensor.name}': shape tensors are not supported")
        dims = tuple(int(d) for d in tensor.dims)
        if any(d == 0 or d < -1 for d in dims):
            raise ConfigError(f"{what} '{tensor.name}': dims must be > 0 or -1, got {dims_text(dims)}")
        if max_batch_size == 0 and not dims:
            raise ConfigError(f"{what} '{tensor.name}': dims must not be empty when max_batch_size is 0")
        full = ((-1,) if max_batch_size > 0 else ()) + dims
        fixed = -1 not in dims
        tensors[tensor.name] = TensorSpec(
            name=tensor.name,
            datatype=datatype,
            dims=dims,
            optional=bool(getattr(tensor, "optional", False)),
            fixed=fixed,
            sample_nbytes=math.prod(dims) * datatype.numpy.itemsize if fixed and not datatype.is_bytes else -1,
            full_dims_text=dims_text(full),
            metadata_shape=full,
        )
    return tensors


def _batching(config: model_config_pb2.ModelConfig) -> BatchingPolicy:
    max_batch_size = config.max_batch_size
    if not config.HasField("dynamic_batching"):
        return BatchingPolicy(False, max_batch_size, 0, frozenset(), 0, 0, True)
    if max_batch_size == 0:
        raise ConfigError("dynamic_batching needs max_batch_size > 0")
    db = config.dynamic_batching
    if db.priority_levels or db.priority_queue_policy:
        raise ConfigError("dynamic_batching priority levels are not supported")
    preferred = frozenset(int(p) for p in db.preferred_batch_size)
    bad = sorted(p for p in preferred if not 0 < p <= max_batch_size)
    if bad:
        raise ConfigError(f"preferred_batch_size {bad} must be in 1..max_batch_size ({max_batch_size})")
    policy = db.default_queue_policy
    return BatchingPolicy(
        dynamic=True,
        max_batch_size=max_batch_size,
        max_queue_delay_ns=int(db.max_queue_delay_microseconds) * 1000,
        preferred_batch_sizes=preferred,
        max_queue_size=int(policy.max_queue_size),
        default_timeout_ns=int(policy.default_timeout_microseconds) * 1000,
        timeout_reject=policy.timeout_action == _REJECT,
    )


def _instances(config: model_config_pb2.ModelConfig) -> tuple[InstanceSpec, ...]:
    groups = list(config.instance_group) or [model_config_pb2.ModelInstanceGroup(count=1)]
    instances: list[InstanceSpec] = []
    for number, group in enumerate(groups):
        count = group.count or 1
        if count < 0:
            raise ConfigError(f"instance_group count must be > 0, got {count}")
        if group.passive:
            raise ConfigError("passive instance groups are not supported")
        kind = _KIND.Name(group.kind).removeprefix("KIND_")
        if kind not in ("CPU", "GPU", "AUTO"):
            raise ConfigError(f"instance_group kind KIND_{kind} is not supported")
        name = group.name or f"{config.name}_{number}"
        devices: list[int | None] = list(group.gpus) if kind == "GPU" and group.gpus else [0 if kind == "GPU" else None]
        for device in devices:
            for _ in range(count):
                instances.append(InstanceSpec(len(instances), name, kind, device))
    return tuple(instances)


def _preprocess(config: model_config_pb2.ModelConfig, inputs: dict[str, TensorSpec]) -> PreprocessSpec | None:
    params = {key: value.string_value for key, value in config.parameters.items() if key.startswith(_PREFIX)}
    if not params:
        return None
    kind = params.pop(_PREFIX, None)
    if kind is None:
        raise ConfigError(f"parameters {sorted(params)} need '{_PREFIX}' (one of {', '.join(PREPROCESS_KINDS)})")
    kind = kind.strip().lower()
    if kind not in PREPROCESS_KINDS:
        raise ConfigError(f"parameter '{_PREFIX}' must be one of {', '.join(PREPROCESS_KINDS)}, got '{kind}'")
    known = {"engine_input", "engine_datatype", "resize", "crop", "mean", "std", "max_pixels", "max_image_bytes"}
    unknown = sorted(key for key in params if key.removeprefix(_PREFIX + ".") not in known)
    if unknown:
        raise ConfigError(f"unknown preprocessing parameter(s) {unknown}; known: {sorted(known)}")
    values = {key.removeprefix(_PREFIX + "."): value.strip() for key, value in params.items()}

    if config.max_batch_size <= 0:
        raise ConfigError("a preprocessing front needs max_batch_size > 0")
    if len(inputs) != 1:
        raise ConfigError(f"a preprocessing front has exactly one input, got {len(inputs)}")
    (client,) = inputs.values()
    engine_name = values.get("engine_input", "")
    if not engine_name:
        raise ConfigError(f"parameter '{_PREFIX}.engine_input' (the engine's input name) is required")
    crop = _positive_int(values, "crop", required=True)
    resize = _positive_int(values, "resize", required=kind == "jpeg") or crop
    if resize < crop:
        raise ConfigError(f"parameter '{_PREFIX}.resize' ({resize}) must be >= '{_PREFIX}.crop' ({crop})")
    if kind == "jpeg":
        wanted_type, wanted_dims = datatypes.BYTES, (1,)
    else:
        wanted_type, wanted_dims = datatypes.BY_PROTOCOL["UINT8"], (crop, crop, 3)
    if client.datatype != wanted_type or client.dims != wanted_dims:
        raise ConfigError(
            f"input '{client.name}' of a {kind} front must be {datatypes.config_type_name(wanted_type.config)} "
            f"with dims {dims_text(wanted_dims)}, got {datatypes.config_type_name(client.datatype.config)} "
            f"{dims_text(client.dims)}"
        )
    engine_type = datatypes.BY_PROTOCOL.get(values.get("engine_datatype", "FP32").upper())
    if engine_type is None or engine_type.protocol not in ("FP32", "FP16"):
        got = values["engine_datatype"]
        raise ConfigError(f"parameter '{_PREFIX}.engine_datatype' must be FP32 or FP16, got '{got}'")
    engine_dims = (3, crop, crop)
    engine_input = TensorSpec(
        name=engine_name,
        datatype=engine_type,
        dims=engine_dims,
        optional=False,
        fixed=True,
        sample_nbytes=math.prod(engine_dims) * engine_type.numpy.itemsize,
        full_dims_text=dims_text((-1, *engine_dims)),
        metadata_shape=(-1, *engine_dims),
    )
    std = _triple(values, "std", DEFAULT_STD)
    if any(not v > 0 for v in std):
        raise ConfigError(f"parameter '{_PREFIX}.std' values must be > 0, got {list(std)}")
    return PreprocessSpec(
        kind=kind,
        client_input=client.name,
        engine_input=engine_input,
        resize=resize,
        crop=crop,
        mean=_triple(values, "mean", DEFAULT_MEAN),
        std=std,
        max_pixels=_positive_int(values, "max_pixels") or DEFAULT_MAX_PIXELS,
        max_image_bytes=_positive_int(values, "max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES,
    )


def _positive_int(values: dict[str, str], key: str, required: bool = False) -> int:
    """The parameter as an int > 0; 0 when absent and not required."""
    text = values.get(key, "")
    if not text:
        if required:
            raise ConfigError(f"parameter '{_PREFIX}.{key}' is required")
        return 0
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise ConfigError(f"parameter '{_PREFIX}.{key}' must be an integer, got '{text}'") from None
    if value <= 0:
        raise ConfigError(f"parameter '{_PREFIX}.{key}' must be > 0, got {value}")
    return value


def _triple(values: dict[str, str], key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    text = values.get(key, "")
    if not text:
        return default
    try:
        numbers = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"parameter '{_PREFIX}.{key}' must be three comma-separated numbers, got '{text}'") from None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise ConfigError(f"parameter '{_PREFIX}.{key}' must be three comma-separated finite numbers, got '{text}'")
    return numbers  # type: ignore[return-value]
