"""The transport-free server: readiness, metadata and inference over the registry of loaded models.

The gRPC layer converts messages to and from :mod:`ipsbench.server.dataplane`'s types; nothing here knows about gRPC
besides the status code each :class:`~ipsbench.server.errors.ServerError` carries. One request's path:
:meth:`InferenceCore.infer` finds the model, validates the request, runs the model's preprocessing stage (fronts
only), queues it in the model's batcher and builds the response from its share of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from tritonclient.grpc import model_config_pb2

from ipsbench.server.dataplane import NO_OPTIONS, IndexEntry, InferOptions, InferRequest, InferResponse
from ipsbench.server.errors import LOADING_MESSAGE, SHUTTING_DOWN_MESSAGE, ServerError, invalid_argument, unavailable
from ipsbench.server.model_spec import ModelSpec
from ipsbench.server.models import LoadedModel, ModelRegistry
from ipsbench.server.stats import ModelStats, RequestClock, ServerStats
from ipsbench.server.validate import validate_request

SERVER_NAME = "ipsbench"
EXTENSIONS = (
    "classification",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "system_shared_memory",
    "cuda_shared_memory",
)


class InferenceCore:
    """Readiness, metadata and inference over a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, server_stats: ServerStats, version: str) -> None:
        self.registry = registry
        self.server_stats = server_stats
        self.version = version
        self._loaded = False
        self._shutting_down = False

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def mark_loaded(self) -> None:
        self._loaded = True

    def begin_shutdown(self) -> None:
        """Readiness false and new inference refused from now on; in-flight requests continue."""
        self._shutting_down = True

    @property
    def inflight(self) -> int:
        """Requests in flight in every model version, retired ones included."""
        return sum(model.inflight for model in self.registry.every_model())

    async def wait_idle(self) -> None:
        """Until no request is in flight anywhere (new ones are refused by then: see :meth:`begin_shutdown`)."""
        while busy := [model for model in self.registry.every_model() if model.inflight]:
            await asyncio.gather(*(model.wait_idle() for model in busy))

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

    async def infer(
        self, request: InferRequest, options: InferOptions = NO_OPTIONS, clock: RequestClock | None = None
    ) -> InferResponse:
        """The response to ``request``; ``clock`` (started at its receipt) learns the model and the batch's timing,
        so that the transport can record the request's time in the server once the response is written."""
        model = self._model_for(request)
        with model.serving() as served:
            inputs = validate_request(model.spec, request)
            model.check_options(options)
            if model.stage is not None:
                inputs = await model.stage.run(inputs)
            result = await model.batcher.run(inputs, options.timeout_us)
            served.succeeded(inputs.batch_size, result.timing)
        if clock is not None:
            clock.served(model.stats, result.timing)
        return model.response(request, result.outputs, options)

    def _model_for(self, request: InferRequest) -> LoadedModel:
        if self._shutting_down:
            raise unavailable(SHUTTING_DOWN_MESSAGE)
        if not self._loaded:
            raise unavailable(LOADING_MESSAGE)
        try:
            return self.registry.get(request.model_name, request.model_version)
        except ServerError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                self.server_stats.unknown_model_requests += 1
            raise
