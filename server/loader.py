"""Turn repository entries into loaded, warmed model versions ready for the batcher."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.backends.base import Backend, ModelInstance
from server.backends.registry import get_backend
from server.model import ConfigError, InstanceSpec, ModelSpec
from server.repository import ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVersion:
    """Engine instances of one model version, warmed up; the batcher is attached by the core."""

    spec: ModelSpec
    version: int
    instances: tuple[ModelInstance, ...]


def load_source(source: ModelSource) -> list[LoadedVersion]:
    """Load every selected version of ``source`` (blocking: run it in a worker thread). Raises on any failure."""
    spec = source.spec
    backend = get_backend(spec.backend)
    warmups = warmup_batches(spec)
    loaded: list[LoadedVersion] = []
    created: list[ModelInstance] = []
    try:
        for version, path in sorted(source.version_files.items()):
            instances: list[ModelInstance] = []
            for instance_spec in spec.instances:
                instance = load_instance(backend, spec, version, path, instance_spec, warmups)
                created.append(instance)
                instances.append(instance)
            loaded.append(LoadedVersion(spec, version, tuple(instances)))
    except BaseException:
        for instance in created:
            instance.close()
        raise
    return loaded


def load_instance(
    backend: Backend,
    spec: ModelSpec,
    version: int,
    path: Path,
    instance_spec: InstanceSpec,
    warmups: list[tuple[int, dict[str, np.ndarray], int]],
) -> ModelInstance:
    """One engine instance, loaded by ``backend`` and run through ``warmups`` (see :func:`warmup_batches`)."""
    start = time.perf_counter()
    instance = backend.load(spec, version, path, instance_spec)
    try:
        for _, arrays, count in warmups:
            for _ in range(count):
                instance.run(arrays, spec.output_names)
    except BaseException:
        instance.close()
        raise
    log.info(
        "model '%s' version %d: instance %d (%s, %s, %s) loaded and warmed in %.2f s",
        spec.name,
        version,
        instance_spec.index,
        instance_spec.kind,
        instance.info.device,
        instance.info.precision,
        time.perf_counter() - start,
    )
    return instance


def warmup_batches(spec: ModelSpec) -> list[tuple[int, dict[str, np.ndarray], int]]:
    """(batch size, inputs, repetitions) per warm-up: the config's ``model_warmup``, else one full batch of zeros."""
    if not spec.config.model_warmup:
        batch = spec.max_batch_size
        return [(batch, {name: _array(spec, name, batch, zero=True) for name in spec.inputs}, 1)]
    batches = []
    rng = np.random.default_rng(0)
    for warmup in spec.config.model_warmup:
        batch = warmup.batch_size if spec.batched else 0
        if spec.batched and not 0 < batch <= spec.max_batch_size:
            raise ConfigError(f"model_warmup '{warmup.name}': batch_size must be in 1..{spec.max_batch_size}")
        arrays = {}
        for name, data in warmup.inputs.items():
            if name not in spec.inputs:
                raise ConfigError(f"model_warmup '{warmup.name}': unknown input '{name}'")
            kind = data.WhichOneof("input_data_type")
            if kind not in ("zero_data", "random_data"):
                raise ConfigError(
                    f"model_warmup '{warmup.name}': {kind} is not supported (use zero_data or random_data)"
                )
            arrays[name] = _array(spec, name, batch, zero=kind == "zero_data", rng=rng, dims=tuple(data.dims))
        missing = [n for n in spec.required_inputs if n not in arrays]
        if missing:
            raise ConfigError(f"model_warmup '{warmup.name}': missing input(s) {missing}")
        batches.append((batch, arrays, max(1, warmup.count)))
    return batches


def _array(spec: ModelSpec, name: str, batch: int, zero: bool, rng=None, dims: tuple[int, ...] = ()) -> np.ndarray:
    tensor = spec.inputs[name]
    shape = tuple(dims) or tuple(d if d > 0 else 1 for d in tensor.dims)
    if spec.batched:
        shape = (batch, *shape)
    if zero or rng is None:
        return np.zeros(shape, dtype=tensor.datatype.numpy)
    return rng.random(shape).astype(tensor.datatype.numpy)
