"""Backends chosen by name and imported only when a model uses them.

A server box without TensorRT or PyTorch never imports them; a backend whose dependency is missing is told apart
from one that is installed but fails to import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ipsbench.server.backends.base import Backend
from ipsbench.server.backends.device_profile import BACKEND_NAME as DEVICE_MODEL
from ipsbench.server.backends.device_profile import PROFILE_FILENAME
from ipsbench.server.repository.layout import MODEL_FILENAMES


@dataclass(frozen=True)
class BackendEntry:
    name: str
    """Triton's backend name, e.g. ``onnxruntime``."""
    platform: str
    """Triton's platform string, e.g. ``onnxruntime_onnx``."""
    default_model_filename: str
    target: str
    """``module:Class`` implementing :class:`Backend`."""
    requires: str
    """Top-level module the backend needs, for the "not installed" message."""
    extra: str
    """pip extra that installs it."""


BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(
        name="onnxruntime",
        platform="onnxruntime_onnx",
        default_model_filename=MODEL_FILENAMES["onnxruntime"],
        target="ipsbench.server.backends.onnx:OnnxRuntimeBackend",
        requires="onnxruntime",
        extra="ipsbench[server]",
    ),
    "pytorch": BackendEntry(
        name="pytorch",
        platform="pytorch_libtorch",
        default_model_filename=MODEL_FILENAMES["pytorch"],
        target="ipsbench.server.backends.torch:TorchBackend",
        requires="torch",
        extra="ipsbench[torch]",
    ),
    "tensorrt": BackendEntry(
        name="tensorrt",
        platform="tensorrt_plan",
        default_model_filename=MODEL_FILENAMES["tensorrt"],
        target="ipsbench.server.backends.tensorrt:TensorRTBackend",
        requires="tensorrt",
        extra="ipsbench[tensorrt]",
    ),
    # No device at all: a batch takes the time a measured profile says (planning on a CPU-only box).
    DEVICE_MODEL: BackendEntry(
        name=DEVICE_MODEL,
        platform=DEVICE_MODEL,
        default_model_filename=PROFILE_FILENAME,
        target="ipsbench.server.backends.device_model:DeviceModelBackend",
        requires="numpy",
        extra="ipsbench[server]",
    ),
}
PLATFORMS: dict[str, str] = {entry.platform: entry.name for entry in BACKENDS.values()}


class BackendUnavailable(Exception):
    """The backend cannot be used here: unknown, not installed, or installed but broken."""


def resolve_backend_name(backend: str, platform: str) -> BackendEntry:
    """The entry named by a config's ``backend`` or, failing that, its ``platform``."""
    if backend:
        entry = BACKENDS.get(backend)
        if entry is None:
            raise BackendUnavailable(f"unknown backend '{backend}'; supported: {sorted(BACKENDS)}")
        if platform and platform != entry.platform:
            raise BackendUnavailable(f"platform '{platform}' does not match backend '{backend}'")
        return entry
    if platform:
        name = PLATFORMS.get(platform)
        if name is None:
            raise BackendUnavailable(f"unknown platform '{platform}'; supported: {sorted(PLATFORMS)}")
        return BACKENDS[name]
    raise BackendUnavailable("config.pbtxt must set 'backend' or 'platform'")


_loaded: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """Import the named backend's module on first use and return its (shared) instance."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise BackendUnavailable(f"unknown backend '{name}'; supported: {sorted(BACKENDS)}")
    return load_backend(entry)


def load_backend(entry: BackendEntry) -> Backend:
    """Import ``entry``'s module on first use and return its (shared) instance."""
    backend = _loaded.get(entry.name)
    if backend is not None:
        return backend
    module_name, _, attr = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == entry.requires or exc.name.startswith(entry.requires + ".")):
            raise BackendUnavailable(
                f"backend '{entry.name}' needs the '{entry.requires}' package, which is not installed; "
                f"install {entry.extra}"
            ) from exc
        raise BackendUnavailable(f"backend '{entry.name}' is installed but failed to import: {exc}") from exc
    except ImportError as exc:
        raise BackendUnavailable(f"backend '{entry.name}' is installed but failed to import: {exc}") from exc
    backend = getattr(module, attr)()
    _loaded[entry.name] = backend
    return backend
