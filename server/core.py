"""The transport-free server: model registry, readiness, and inference dispatch.

The gRPC layer converts messages to and from the types used here; nothing in this module knows about gRPC
besides the status code each :class:`~ipsbench.server.errors.ServerError` carries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2

from ipsbench.server.batching.batcher import SHUTTING_DOWN_MESSAGE, Batcher, QueuedRequest
from ipsbench.server.classification import check_class_count, top_k
from ipsbench.server.errors import FailureReason, ServerError, invalid_argument, not_found, unavailable
from ipsbench.server.loader import LoadedVersion
from ipsbench.server.model import ModelSpec
from ipsbench.server.preprocess.stage import preprocess_inputs
from ipsbench.server.stats import ModelStats, ServerStats
from ipsbench.server.validate import InferRequest, validate_request

log = logging.getLogger(__name__)

SERVER_NAME = "ipsbench"
EXTENSIONS = ("classification", "model_configuration", "model_repository", "schedule_policy", "statistics")
LOADING_MESSAGE = "Server is not ready: models are still loading"
UNLOADED_REASON = "unloaded"


@dataclass(slots=True)
class InferOptions:
    """What a request asks for beyond its tensors (KServe v2 request and output parameters)."""

    classification: dict[str, int] | None = None
    """Output name → class count, for outputs returned as top-k classes (Triton's classification extension)."""
    timeout_us: int = 0
    """The request's queue timeout in microseconds (its ``timeout`` parameter); 0: the model's default."""


NO_OPTIONS = InferOptions()


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class LoadedModel:
    """One served model version: spec, batcher, statistics, class labels and its count of requests in flight."""

    def __init__(self, loaded: LoadedVersion, labels: Mapping[str, Sequence[str]] | None = None) -> None:
        spec = loaded.spec
        self.spec = spec
        self.version = loaded.version
        self.version_text = str(loaded.version)
        self.labels = dict(labels or {})
        self.stats = ModelStats(spec.name, loaded.version)
        queue_policy = spec.config.dynamic_batching.default_queue_policy
        self.batcher = Batcher(
            f"{spec.name}:{loaded.version}",
            spec.batching,
            loaded.instances,
            spec.output_names,
            self.stats,
            allow_timeout_override=spec.batching.dynamic and queue_policy.allow_timeout_override,
        )
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._output_index = {name: i for i, name in enumerate(spec.output_names)}
        self._all_outputs = tuple(
            (i, name, spec.outputs[name].datatype.protocol) for i, name in enumerate(spec.output_names)
        )

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until no request of this version is in flight (queued or executing)."""
        await self._idle.wait()

    def check_classification(self, classification: Mapping[str, int]) -> None:
        for name, count in classification.items():
            output = self.spec.outputs.get(name)
            if output is not None:  # unknown names are refused by request validation, with Triton's text
                check_class_count(name, count, output.datatype.protocol, self.spec.name)

    def select_outputs(
        self, requested: Sequence[str], arrays: list[np.ndarray], classification: Mapping[str, int] | None = None
    ) -> list[OutputTensor]:
        if not requested:
            return [OutputTensor(name, datatype, arrays[i]) for i, name, datatype in self._all_outputs]
        if not classification:
            return [
                OutputTensor(name, self.spec.outputs[name].datatype.protocol, arrays[self._output_index[name]])
                for name in requested
            ]
        outputs = []
        for name in requested:
            array = arrays[self._output_index[name]]
            count = classification.get(name, 0)
            if count:
                classes = top_k(array, count, self.labels.get(name, ()), self.spec.batched)
                outputs.append(OutputTensor(name, "BYTES", classes))
            else:
                outputs.append(OutputTensor(name, self.spec.outputs[name].datatype.protocol, array))
        return outputs


def _display(name: str) -> str:
    """A model name as it may be echoed in an error: printable and bounded."""
    if len(name) > 128 or not name.isprintable():
        return repr(name[:128])[1:-1] + ("..." if len(name) > 128 else "")
    return name


class ModelRegistry:
    """Loaded model versions by name; the only way a request reaches a model."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._failed: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}

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
        """Serve ``models`` as every version of ``name`` from now on; return the versions they replace."""
        old = list(self._models.pop(name, {}).values())
        self._failed.pop(name, None)
        self._unavailable.pop(name, None)
        for model in models:
            self.add(model)
        return old

    def remove(self, name: str, reason: str = UNLOADED_REASON) -> list[LoadedModel]:
        """Stop routing requests to ``name``; it stays listed in the index as UNAVAILABLE with ``reason``."""
        old = list(self._models.pop(name, {}).values())
        self._failed.pop(name, None)
        self._unavailable[name] = reason
        return old

    def mark_unavailable(self, name: str, reason: str) -> None:
        """List ``name`` as UNAVAILABLE in the index (a model not loaded on request), without affecting readiness."""
        if name not in self._models:
            self._unavailable[name] = reason

    @property
    def unavailable(self) -> dict[str, str]:
        return dict(self._unavailable)

    def __iter__(self) -> Iterator[LoadedModel]:
        for versions in self._models.values():
            yield from versions.values()

    def stats(self) -> list[ModelStats]:
        return [model.stats for model in self]

    def versions(self, name: str) -> dict[int, LoadedModel]:
        """Versions of a model; raises NOT_FOUND with Triton's text when none is loaded."""
        if not name.strip():
            raise invalid_argument("Model name cannot be empty.")
        versions = self._models.get(name)
        if not versions:
            if name in self._failed or (name in self._unavailable and self._unavailable[name] != UNLOADED_REASON):
                raise not_found(f"Request for unknown model: '{name}' has no available versions")
            raise not_found(f"Request for unknown model: '{_display(name)}' is not found")
        return versions

    def get(self, name: str, version: str) -> LoadedModel:
        versions = self.versions(name)
        if not version:
            return versions[max(versions)]
        try:
            number = int(version)
        except ValueError:
            raise invalid_argument(
                f"failed to get model version from specified version string '{_display(version)}', "
                "version should be an integral value > 0"
            ) from None
        model = versions.get(number)
        if model is None:
            raise not_found(f"Request for unknown model: '{name}' version {number} is not found")
        return model


class InferenceCore:
    """Readiness, metadata and inference over a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, server_stats: ServerStats, version: str) -> None:
        self.registry = registry
        self.server_stats = server_stats
        self.version = version
        self._loaded = False
        self._shutting_down = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def mark_loaded(self) -> None:
        self._loaded = True

    def begin_shutdown(self) -> None:
        """Readiness false and new inference refused from now on; in-flight requests continue."""
        self._shutting_down = True

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- health and metadata ---------------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return (
            self._loaded
            and not self._shutting_down
            and not self.registry.failed
            and all(model.ready for model in self.registry)
        )

    def model_ready(self, name: str, version: str) -> bool:
        try:
            model = self.registry.get(name, version)
        except ServerError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return False
        return model.ready and not self._shutting_down

    def model_metadata(self, name: str, version: str) -> tuple[ModelSpec, list[str]]:
        """The spec and the versions to list: the one asked for, else every loaded version."""
        model = self.registry.get(name, version)
        if version:
            return model.spec, [model.version_text]
        return model.spec, [str(v) for v in sorted(self.registry.versions(name))]

    def model_config(self, name: str, version: str) -> model_config_pb2.ModelConfig:
        return self.registry.get(name, version).spec.config

    def model_statistics(self, name: str, version: str) -> list[ModelStats]:
        if not name:
            if version:
                raise invalid_argument("a model version needs a model name")
            return self.registry.stats()
        if not version:
            return [m.stats for _, m in sorted(self.registry.versions(name).items())]
        return [self.registry.get(name, version).stats]

    def repository_index(self, ready_only: bool, not_loaded: Sequence[str] = ()) -> list[IndexEntry]:
        """Every loaded version, every model that failed or was unloaded, and the names in ``not_loaded`` that are
        none of those (repository folders never loaded, listed as Triton lists them)."""
        entries = [
            IndexEntry(m.spec.name, m.version_text, "READY" if m.ready else "UNAVAILABLE", "") for m in self.registry
        ]
        listed = {e.name for e in entries}
        for name, reason in {**self.registry.unavailable, **self.registry.failed}.items():
            if name not in listed:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", reason))
                listed.add(name)
        entries += [IndexEntry(name, "", "UNAVAILABLE", "") for name in not_loaded if name not in listed]
        entries.sort(key=lambda e: (e.name, e.version))
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    # -- inference -------------------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, options: InferOptions = NO_OPTIONS) -> InferResponse:
        start_ns = time.perf_counter_ns()
        if self._shutting_down:
            raise unavailable(SHUTTING_DOWN_MESSAGE)
        if not self._loaded:
            raise unavailable(LOADING_MESSAGE)
        try:
            model = self.registry.get(request.model_name, request.model_version)
        except ServerError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                self.server_stats.unknown_model_requests += 1
            raise
        stats = model.stats
        self._inflight += 1
        self._idle.clear()
        model.enter()
        try:
            validated = validate_request(model.spec, request)
            if options.classification:
                model.check_classification(options.classification)
            if model.spec.preprocess is not None:
                validated = await preprocess_inputs(model.spec, model.version, validated)
            future = asyncio.get_running_loop().create_future()
            queued = QueuedRequest(
                validated.arrays, validated.batch_size, validated.batch_key, future, options.timeout_us * 1000
            )
            model.batcher.submit(queued)
            try:
                result = await future
            except asyncio.CancelledError:
                model.batcher.withdraw(queued)
                raise
        except ServerError as exc:
            stats.record_failure(exc.reason, time.perf_counter_ns() - start_ns)
            raise
        except asyncio.CancelledError:
            stats.record_failure(FailureReason.CANCELED, time.perf_counter_ns() - start_ns)
            raise
        except Exception:
            stats.record_failure(FailureReason.OTHER, time.perf_counter_ns() - start_ns)
            raise
        finally:
            model.leave()
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        stats.record_success(validated.batch_size, time.perf_counter_ns() - start_ns, result.timing)
        outputs = model.select_outputs(request.outputs, result.outputs, options.classification)
        return InferResponse(model.spec.name, model.version_text, request.id, outputs)
