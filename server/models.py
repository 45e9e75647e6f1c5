"""The models a server serves: each loaded version (:class:`LoadedModel`) and the registry requests find them in.

A loaded version owns its spec, batcher, statistics, class labels, its preprocessing stage when it is a front, and
the count of its requests in flight: the one count a graceful shutdown and an unload wait on. The registry keeps
versions that were replaced or unloaded until their last request is done, so that nothing in flight is forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from tritonclient.grpc import model_config_pb2

from ipsbench.server.batching.batcher import Batcher
from ipsbench.server.classification import check_class_count, top_k
from ipsbench.server.dataplane import InferOptions, InferRequest, InferResponse, OutputTensor
from ipsbench.server.errors import invalid_argument, not_found, quoted
from ipsbench.server.loader import LoadedVersion
from ipsbench.server.model_spec import ModelSpec
from ipsbench.server.preprocess.placement import EngineDevice, Placement, place
from ipsbench.server.preprocess.recipe import DEVICE_EFFECTIVE_PARAMETER, DEVICE_PARAMETER
from ipsbench.server.preprocess.stage import DecodePool, PreprocessStage
from ipsbench.server.stats import ModelStats, PreprocessStats, Served, recording

UNLOADED_REASON = "unloaded"


class LoadedModel:
    """One served model version."""

    def __init__(
        self, loaded: LoadedVersion, labels: Mapping[str, Sequence[str]] | None = None, pool: DecodePool | None = None
    ) -> None:
        spec = loaded.spec
        self.version = loaded.version
        self.version_text = str(loaded.version)
        self.labels = dict(labels or {})
        self.stats = ModelStats(spec.name, loaded.version, instances=len(loaded.instances))
        self.stage: PreprocessStage | None = None
        """The front's preprocessing, decided here once: None for a model that takes its engine's tensors."""
        if spec.preprocess is not None:
            if pool is None:
                raise ValueError(f"model '{spec.name}' is a preprocessing front and needs a decode pool")
            engines = [EngineDevice(i.info.device, i.takes_device_tensors) for i in loaded.instances]
            placement = place(spec.preprocess.device, engines, f"model '{spec.name}' version {loaded.version}")
            spec = _reporting_placement(spec, placement)
            self.stats.preprocess = PreprocessStats(device=placement.effective)
            self.stage = PreprocessStage(spec, pool, self.stats.preprocess, placement)
        self.spec = spec
        queue_policy = spec.config.dynamic_batching.default_queue_policy
        self.batcher = Batcher(
            f"{spec.name}:{loaded.version}",
            spec.batching,
            loaded.instances,
            spec.output_names,
            self.stats,
            allow_timeout_override=spec.batching.dynamic and queue_policy.allow_timeout_override,
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._output_index = {name: i for i, name in enumerate(spec.output_names)}

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    @property
    def inflight(self) -> int:
        """Requests of this version in the server now (the count a shutdown or an unload waits on)."""
        return self.stats.inflight

    @contextmanager
    def serving(self) -> Iterator[Served]:
        """Around one request: counted in flight, and its outcome recorded in the statistics."""
        self.stats.inflight += 1
        self._idle.clear()
        try:
            with recording(self.stats) as served:
                yield served
        finally:
            self.stats.inflight -= 1
            if self.stats.inflight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until no request of this version is in flight (queued or executing)."""
        await self._idle.wait()

    def check_options(self, options: InferOptions) -> None:
        for name, count in (options.classification or {}).items():
            output = self.spec.outputs.get(name)
            if output is not None:  # unknown names are refused by request validation, with Triton's text
                check_class_count(name, count, output.datatype.protocol, self.spec.name)

    def response(self, request: InferRequest, arrays: list[np.ndarray], options: InferOptions) -> InferResponse:
        """The response to ``request``: the outputs it asked for (all when none), as top-k classes where its
        options ask for them."""
        classification = options.classification or {}
        outputs = []
        for name in request.outputs or self.spec.output_names:
            array = arrays[self._output_index[name]]
            if classification.get(name):
                classes = top_k(array, classification[name], self.labels.get(name, ()), self.spec.batched)
                outputs.append(OutputTensor(name, "BYTES", classes))
            else:
                outputs.append(OutputTensor(name, self.spec.outputs[name].datatype.protocol, array))
        return InferResponse(self.spec.name, self.version_text, request.id, outputs)


def _reporting_placement(spec: ModelSpec, placement: Placement) -> ModelSpec:
    """``spec`` whose config (the ModelConfig clients get) states the configured and the effective preprocessing
    device: ``ipsbench.preprocess.device`` (filled in as ``auto`` where the config leaves it out) and
    ``ipsbench.preprocess.device_effective``."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(spec.config)
    config.parameters[DEVICE_PARAMETER].string_value = placement.configured
    config.parameters[DEVICE_EFFECTIVE_PARAMETER].string_value = placement.effective
    return dataclasses.replace(spec, config=config)


class ModelRegistry:
    """Loaded model versions by name; the only way a request reaches a model."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._failed: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}
        self._retiring: set[LoadedModel] = set()
        """Versions no longer served whose requests may still be in flight."""

    def add(self, model: LoadedModel) -> None:
        self._models.setdefault(model.spec.name, {})[model.version] = model
        self._unavailable.pop(model.spec.name, None)

    def add_failed(self, name: str, reason: str) -> None:
        """A model that failed to load at start-up: the server is not ready while one exists."""
        self._failed[name] = reason

    @property
    def failed(self) -> dict[str, str]:
        return dict(self._failed)

    def replace(self, name: str, models: Sequence[LoadedModel]) -> list[LoadedModel]:
        """Serve ``models`` as every version of ``name`` from now on; return the versions they replace, which
        stay in :meth:`every_model` until :meth:`forget`."""
        old = list(self._models.pop(name, {}).values())
        self._retiring.update(old)
        self._failed.pop(name, None)
        self._unavailable.pop(name, None)
        for model in models:
            self.add(model)
        return old

    def remove(self, name: str, reason: str = UNLOADED_REASON) -> list[LoadedModel]:
        """Stop routing requests to ``name``; it stays listed in the index as UNAVAILABLE with ``reason``; its
        versions stay in :meth:`every_model` until :meth:`forget`."""
        old = list(self._models.pop(name, {}).values())
        self._retiring.update(old)
        self._failed.pop(name, None)
        self._unavailable[name] = reason
        return old

    def forget(self, model: LoadedModel) -> None:
        """A retired version whose requests are done and whose engines are closed."""
        self._retiring.discard(model)

    def mark_unavailable(self, name: str, reason: str) -> None:
        """List ``name`` as UNAVAILABLE in the index (a model not loaded on request), without affecting readiness."""
        if name not in self._models:
            self._unavailable[name] = reason

    @property
    def unavailable(self) -> dict[str, str]:
        return dict(self._unavailable)

    def __iter__(self) -> Iterator[LoadedModel]:
        """The versions served now."""
        for versions in self._models.values():
            yield from versions.values()

    def every_model(self) -> list[LoadedModel]:
        """The versions served now and those retired whose requests may still be in flight."""
        return [*self, *self._retiring]

    def stats(self) -> list[ModelStats]:
        return [model.stats for model in self]

    def has(self, name: str) -> bool:
        return bool(self._models.get(name))

    def versions(self, name: str) -> dict[int, LoadedModel]:
        """Versions of a model; raises NOT_FOUND with Triton's text when none is loaded."""
        if not name.strip():
            raise invalid_argument("Model name cannot be empty.")
        versions = self._models.get(name)
        if not versions:
            if name in self._failed or (name in self._unavailable and self._unavailable[name] != UNLOADED_REASON):
                raise not_found(f"Request for unknown model: '{quoted(name)}' has no available versions")
            raise not_found(f"Request for unknown model: '{quoted(name)}' is not found")
        return versions

    def get(self, name: str, version: str) -> LoadedModel:
        versions = self.versions(name)
        if not version:
            return versions[max(versions)]
        try:
            number = int(version)
        except ValueError:
            raise invalid_argument(
                f"failed to get model version from specified version string '{quoted(version)}', "
                "version should be an integral value > 0"
            ) from None
        model = versions.get(number)
        if model is None:
            raise not_found(f"Request for unknown model: '{quoted(name)}' version {number} is not found")
        return model
