"""Reading a model repository (:mod:`~ipsbench.server.repository.layout`): each model folder → its validated spec and
the file of each version to serve.

Only this module reads the repository for the server. Directory names must match :data:`MODEL_NAME_RE`; every path is resolved
and must stay inside the repository root (no symlink escapes). Requests never reach this module: they look models up
in the loaded-model registry by name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ipsbench.server.backends.registry import BackendUnavailable, resolve_backend_name
from ipsbench.server.model_spec import ConfigError, ModelSpec
from ipsbench.server.repository.layout import CONFIG_FILENAME, MAX_CONFIG_BYTES, MODEL_NAME_RE, parse_config

log = logging.getLogger(__name__)

MAX_LABELS_BYTES = 16 * 1024 * 1024


class ModelLoadError(Exception):
    """A model directory that cannot be loaded; ``name`` is the directory name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@dataclass(frozen=True)
class ModelSource:
    """A model found in the repository: its validated spec and the file of each version to serve."""

    spec: ModelSpec
    version_files: dict[int, Path]
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Class labels per output that names a ``label_filename``, one per line (line i labels class i)."""

    @property
    def name(self) -> str:
        return self.spec.name


def scan_repository(root: Path) -> tuple[list[ModelSource], list[ModelLoadError]]:
    """Every model directory under ``root``, parsed; failures are returned, not raised, one per model.

    Entries whose name starts with ``.`` (editor and VCS folders) and plain files are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository '{root}' is not a directory")
    real_root = Path(os.path.realpath(root))
    sources: list[ModelSource] = []
    errors: list[ModelLoadError] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not entry.is_dir():
            log.debug("skipping repository entry %r", entry.name)
            continue
        try:
            sources.append(load_model_source(real_root, entry.name))
        except ModelLoadError as exc:
            errors.append(exc)
    return sources, errors


def load_model_source(real_root: Path, name: str) -> ModelSource:
    """Parse and validate ``<real_root>/<name>``; raise :class:`ModelLoadError` with the reason."""
    if not MODEL_NAME_RE.match(name):
        raise ModelLoadError(name, f"invalid model name: must match {MODEL_NAME_RE.pattern}")
    model_dir = _inside(real_root, real_root / name, name)
    config = _read_config(_inside(real_root, model_dir / CONFIG_FILENAME, name), name)
    try:
        backend = resolve_backend_name(config.backend, config.platform)
        spec = ModelSpec.from_config(config, backend.name, backend.platform)
    except (BackendUnavailable, ConfigError) as exc:
        raise ModelLoadError(name, str(exc)) from None
    filename = config.default_model_filename or backend.default_model_filename
    if "/" in filename or "\\" in filename or filename in ("", ".", ".."):
        raise ModelLoadError(name, f"invalid default_model_filename '{filename}'")
    files: dict[int, Path] = {}
    for version in _select_versions(config, _available_versions(model_dir), name):
        path = _inside(real_root, model_dir / str(version) / filename, name)
        if not path.is_file():
            raise ModelLoadError(name, f"version {version} has no model file '{filename}'")
        files[version] = path
    labels = {
        output.name: _read_labels(real_root, model_dir, output.label_filename, name)
        for output in config.output
        if output.label_filename
    }
    return ModelSource(spec, files, labels)


def list_model_names(root: Path) -> list[str]:
    """Names of the model folders in ``root`` (valid names only), without reading them."""
    return sorted(
        entry.name for entry in Path(root).iterdir() if MODEL_NAME_RE.match(entry.name) and entry.is_dir()
    )


def _inside(real_root: Path, path: Path, name: str) -> Path:
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise ModelLoadError(name, "path resolves outside the model repository")
    return real


def _read_labels(real_root: Path, model_dir: Path, filename: str, name: str) -> tuple[str, ...]:
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        raise ModelLoadError(name, f"invalid label_filename '{filename}'")
    path = _inside(real_root, model_dir / filename, name)
    if not path.is_file():
        # Labels only decorate classification results: serve the model, say why they are missing.
        log.warning("model '%s': label file '%s' not found; classification results will have no labels", name, filename)
        return ()
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise ModelLoadError(name, f"label file '{filename}' is larger than {MAX_LABELS_BYTES} bytes")
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError as exc:
        raise ModelLoadError(name, f"cannot read label file '{filename}': {exc}") from None


def _read_config(path: Path, name: str) -> model_config_pb2.ModelConfig:
    if not path.is_file():
        raise ModelLoadError(name, f"{CONFIG_FILENAME} not found (it is required)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelLoadError(name, f"{CONFIG_FILENAME} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = parse_config(path.read_text(encoding="utf-8"))
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ModelLoadError(name, f"cannot parse {CONFIG_FILENAME}: {exc}") from None
    if not config.name:
        config.name = name
    elif config.name != name:
        raise ModelLoadError(name, f"model name '{config.name}' in {CONFIG_FILENAME} does not match directory '{name}'")
    return config


def _available_versions(model_dir: Path) -> list[int]:
    versions = []
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0 and entry.name == str(int(entry.name)):
            versions.append(int(entry.name))
    return sorted(versions)


def _select_versions(config: model_config_pb2.ModelConfig, available: list[int], name: str) -> list[int]:
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        selected = available
    elif which == "specific":
        wanted = sorted(set(policy.specific.versions))
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ModelLoadError(name, f"version policy asks for version(s) {missing}, which do not exist")
        selected = wanted
    else:
        num = policy.latest.num_versions if which == "latest" else 1
        selected = available[-max(num, 1) :]
    if not selected:
        raise ModelLoadError(name, "at least one version must be available under the version policy")
    return selected
