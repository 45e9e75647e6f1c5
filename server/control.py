"""Which models are loaded: all of them at start (mode ``none``), or on request (mode ``explicit``).

Repository load/unload RPCs arrive here. A name is checked before anything touches the filesystem (Triton's texts:
``Model name cannot be empty.``, ``... must not contain path traversal characters``); a name outside the allowlist
is simply not in the repository. Loading reads the model folder through :mod:`ipsbench.server.repository` (realpath
containment), loads and warms every version off the event loop, and only then swaps it in: a reload whose new files
are broken leaves the old versions serving and returns the error. Unloading stops routing requests to the model at
once and releases its engines after its queued and running requests have finished. Operations run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ipsbench.server.errors import invalid_argument, quoted, unavailable, without_paths
from ipsbench.server.loader import load_source
from ipsbench.server.models import LoadedModel, ModelRegistry
from ipsbench.server.preprocess.stage import DecodePool
from ipsbench.server.repository.layout import MODEL_NAME_RE
from ipsbench.server.repository.scan import (
    ModelLoadError,
    ModelSource,
    list_model_names,
    load_model_source,
    scan_repository,
)
from ipsbench.server.settings import Settings

log = logging.getLogger(__name__)

CONTROL_DISABLED_MESSAGE = "explicit model load / unload is not allowed if polling is enabled"
NO_FOLDER_MESSAGE = "no model folder of that name in the model repository"
NAME_QUOTE_LIMIT = 64
_TRAVERSAL_CHARACTERS = ("/", "\\", "\x00", "%")
"""Separators, NUL, and ``%`` (percent-encoded separators and dots); ``..`` is refused as a whole name only."""


def display_name(name: str) -> str:
    """A model name as control errors and logs repeat it."""
    return quoted(name, NAME_QUOTE_LIMIT)


def check_model_name(name: str) -> None:
    """INVALID_ARGUMENT for an empty name or one that could leave its folder; touches no file."""
    if not name.strip():
        raise invalid_argument("Model name cannot be empty.")
    if name in (".", "..") or any(c in name for c in _TRAVERSAL_CHARACTERS):
        raise invalid_argument(f"Model name '{display_name(name)}' must not contain path traversal characters")


class ModelControl:
    """Loads and unloads models into a :class:`ModelRegistry` from the settings' model repository."""

    def __init__(self, settings: Settings, registry: ModelRegistry, pool: DecodePool) -> None:
        self._root = settings.model_repository
        self._explicit = settings.explicit_model_control
        self._startup_models = settings.load_model
        self._registry = registry
        self._pool = pool
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    @property
    def explicit(self) -> bool:
        return self._explicit

    # -- start-up ---------------------------------------------------------------------------------------------------

    async def load_at_startup(self) -> list[ModelLoadError]:
        """Every model (mode none) or the ``--load-model`` ones (explicit); failures are returned, one per model.
        Raises OSError when the repository cannot be read."""
        if self._explicit:
            if not self._root.is_dir():
                raise FileNotFoundError(f"model repository '{self._root}' is not a directory")
            sources, errors = [], []
            for name in dict.fromkeys(self._startup_models):
                try:
                    sources.append(await asyncio.to_thread(self._read_source, name))
                except ModelLoadError as exc:
                    errors.append(exc)
        else:
            sources, errors = await asyncio.to_thread(scan_repository, self._root)
        for source in sources:
            try:
                self._registry.replace(source.name, await self._load(source))
            except ModelLoadError as exc:
                errors.append(exc)
        if self._explicit and not self._startup_models:
            log.info("model control mode explicit: no model loaded at start; load them with RepositoryModelLoad")
        return errors

    # -- RPCs -------------------------------------------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load (or reload) ``name``; a ServerError says why not, and the versions already serving stay."""
        check_model_name(name)
        self._check_enabled()
        async with self._lock:
            try:
                source = await asyncio.to_thread(self._read_source, name)
                models = await self._load(source)
            except ModelLoadError as exc:
                reason = without_paths(exc.message)
                if exc.message != NO_FOLDER_MESSAGE and not self._registry.has(name):
                    self._registry.mark_unavailable(name, reason)
                log.error("load failed for model '%s': %s", display_name(name), exc.message)
                raise invalid_argument(f"load failed for model '{display_name(name)}': {reason}") from None
            old = self._registry.replace(name, models)
            log.info("model '%s' %s: version(s) %s", name, "reloaded" if old else "loaded", [m.version for m in models])
            self._retire(old)

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; returns once its in-flight requests have finished and its engines are closed.
        Unloading a model that is not loaded succeeds, as in Triton."""
        check_model_name(name)
        self._check_enabled()
        async with self._lock:
            old = self._registry.remove(name) if self._registry.has(name) else []
            if not old:
                return
            log.info("model '%s' unloading: waiting for its in-flight requests", name)
            await asyncio.shield(self._retire(old))
            log.info("model '%s' unloaded", name)

    def not_loaded_names(self) -> list[str]:
        """Model folders of the repository (explicit mode), for RepositoryIndex; none in mode none."""
        if not self._explicit:
            return []
        try:
            return list_model_names(self._root)
        except OSError:
            return []

    async def close(self) -> None:
        """Wait for models being retired (their engines closed)."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _check_enabled(self) -> None:
        if not self._explicit:
            raise unavailable(CONTROL_DISABLED_MESSAGE)

    def _read_source(self, name: str) -> ModelSource:
        if not MODEL_NAME_RE.match(name) or not (self._root / name).is_dir():
            raise ModelLoadError(name, NO_FOLDER_MESSAGE)
        return load_model_source(self._root.resolve(), name)

    async def _load(self, source: ModelSource) -> list[LoadedModel]:
        try:
            versions = await asyncio.to_thread(load_source, source)
        except Exception as exc:  # noqa: BLE001 - every load failure is reported the same way
            log.debug("load failure details for model '%s'", source.name, exc_info=True)
            raise ModelLoadError(source.name, str(exc).strip() or type(exc).__name__) from None
        models = [LoadedModel(version, source.labels, self._pool) for version in versions]
        for model in models:
            model.batcher.start()
            log.info(
                "model '%s' version %d is ready",
                model.spec.name,
                model.version,
                extra={"model": model.spec.name, "version": model.version},
            )
        return models

    def _retire(self, models: Sequence[LoadedModel]) -> asyncio.Task:
        """Close ``models`` once their in-flight requests are done, in the background."""

        async def retire() -> None:
            for model in models:
                await model.wait_idle()
                await model.batcher.stop(wait=True)
                self._registry.forget(model)

        task = asyncio.get_running_loop().create_task(retire(), name="retire-models")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task
