"""What the server needs to know about a model, derived once from its ``ModelConfig`` and validated.

A *preprocessing front* is a model whose config declares the client-facing input (encoded images as BYTES, or
decoded HWC UINT8 images) and carries ``ipsbench.preprocess*`` parameters saying how to turn it into the engine's
NCHW input (:mod:`ipsbench.server.preprocess.recipe`); :class:`PreprocessSpec` holds them and
:meth:`ModelSpec.engine_spec` is what the engine sees.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2

from ipsbench.server import datatypes
from ipsbench.server.preprocess.recipe import Front, Recipe, RecipeError, read_parameters

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


@dataclass(frozen=True)
class PreprocessSpec:
    """How a front turns its client-facing input into the engine's input (see
    :mod:`ipsbench.server.preprocess.recipe` for the parameters that say so)."""

    kind: str
    """``jpeg``: encoded JPEG or PNG images (BYTES, dims [1]); ``uint8``: resized and cropped HWC RGB pixels."""
    client_input: str
    engine_input: TensorSpec
    recipe: Recipe
    max_pixels: int
    """Larger images are refused from their header, before decoding."""
    max_image_bytes: int
    """Larger encoded images are refused unread."""
    device: str = "auto"
    """Where the server preprocesses, as configured: ``auto``, ``cpu`` or ``gpu`` (the device it does preprocess on
    is decided when a version loads: :mod:`ipsbench.server.preprocess.placement`)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: model_config_pb2.ModelConfig
    backend: str
    """The backend's name (``onnxruntime``, ``pytorch``, ``tensorrt``): :mod:`ipsbench.server.backends.registry`
    loads it."""
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
    recipe: Recipe | None = None
    """How images become the engine's input tensor, where the config states it (a front always does)."""

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
    def from_config(cls, config: model_config_pb2.ModelConfig, backend: str, platform: str) -> ModelSpec:
        """Validate ``config`` (already named) and precompute; fills ``platform``/``backend`` in ``config`` with
        the backend's name and platform where it leaves them out."""
        if not config.platform:
            config.platform = platform
        if not config.backend:
            config.backend = backend
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
        try:
            recipe, front = read_parameters({key: value.string_value for key, value in config.parameters.items()})
        except RecipeError as exc:
            raise ConfigError(str(exc)) from None
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
            preprocess=None if front is None else _front(config, inputs, front),
            recipe=recipe,
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


def _front(config: model_config_pb2.ModelConfig, inputs: dict[str, TensorSpec], front: Front) -> PreprocessSpec:
    """The front's client input checked against its kind, and the engine input it produces."""
    if config.max_batch_size <= 0:
        raise ConfigError("a preprocessing front needs max_batch_size > 0")
    if len(inputs) != 1:
        raise ConfigError(f"a preprocessing front has exactly one input, got {len(inputs)}")
    (client,) = inputs.values()
    crop = front.recipe.crop
    if front.kind == "jpeg":
        wanted_type, wanted_dims = datatypes.BYTES, (1,)
    else:
        wanted_type, wanted_dims = datatypes.BY_PROTOCOL["UINT8"], (crop, crop, 3)
    if client.datatype != wanted_type or client.dims != wanted_dims:
        raise ConfigError(
            f"input '{client.name}' of a {front.kind} front must be {datatypes.config_type_name(wanted_type.config)} "
            f"with dims {dims_text(wanted_dims)}, got {datatypes.config_type_name(client.datatype.config)} "
            f"{dims_text(client.dims)}"
        )
    engine_type = datatypes.BY_PROTOCOL[front.engine_datatype]
    engine_dims = (3, crop, crop)
    engine_input = TensorSpec(
        name=front.engine_input,
        datatype=engine_type,
        dims=engine_dims,
        optional=False,
        fixed=True,
        sample_nbytes=math.prod(engine_dims) * engine_type.numpy.itemsize,
        full_dims_text=dims_text((-1, *engine_dims)),
        metadata_shape=(-1, *engine_dims),
    )
    return PreprocessSpec(
        front.kind, client.name, engine_input, front.recipe, front.max_pixels, front.max_image_bytes, front.device
    )
