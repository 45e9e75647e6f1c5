"""Turn repository entries into loaded, warmed model versions ready for the batcher.

Engines see :meth:`ModelSpec.engine_spec`: for a preprocessing front that is the preprocessed NCHW input, and the
warm-up runs a generated image (a JPEG for a ``jpeg`` front) through the same preprocessing first.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ipsbench.server.backends.base import Backend, ModelInstance
from ipsbench.server.backends.registry import get_backend
from ipsbench.server.model_spec import ConfigError, InstanceSpec, ModelSpec, PreprocessSpec
from ipsbench.server.preprocess.stage import Preprocessor
from ipsbench.server.repository.scan import ModelSource

WARMUP_IMAGE_SIZE = (500, 375)
"""(width, height) of the generated warm-up image: a typical ImageNet photo."""

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
    instance = backend.load(spec.engine_spec(), version, path, instance_spec)
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
    """(batch size, engine inputs, repetitions) per warm-up: the config's ``model_warmup``, else one full batch of
    zeros; for a front, the batches hold one generated image, preprocessed as requests will be."""
    if spec.preprocess is not None:
        return _front_warmups(spec, spec.preprocess)
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


def _front_warmups(spec: ModelSpec, front: PreprocessSpec) -> list[tuple[int, dict[str, np.ndarray], int]]:
    """A front's warm-ups: batch sizes and counts from ``model_warmup`` (its data kinds do not apply to images),
    else one full batch; the data is one generated image, preprocessed as requests will be."""
    sample = Preprocessor(front).run(warmup_client_input(front))
    plan = [(spec.max_batch_size, 1)]
    if spec.config.model_warmup:
        plan = []
        for warmup in spec.config.model_warmup:
            if not 0 < warmup.batch_size <= spec.max_batch_size:
                raise ConfigError(f"model_warmup '{warmup.name}': batch_size must be in 1..{spec.max_batch_size}")
            unknown = [name for name in warmup.inputs if name != front.client_input]
            if unknown:
                raise ConfigError(f"model_warmup '{warmup.name}': unknown input(s) {unknown}")
            plan.append((warmup.batch_size, max(1, warmup.count)))
    name = front.engine_input.name
    return [(batch, {name: np.repeat(sample, batch, axis=0)}, count) for batch, count in plan]


def warmup_client_input(front: PreprocessSpec) -> np.ndarray:
    """One client-facing sample for a front: a smooth colour image as a JPEG (``jpeg``) or HWC pixels (``uint8``)."""
    crop = front.recipe.crop
    width, height = WARMUP_IMAGE_SIZE if front.kind == "jpeg" else (crop, crop)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    if front.kind == "uint8":
        return pixels[None]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    client = np.empty((1, 1), dtype=object)
    client[0, 0] = buffer.getvalue()
    return client
