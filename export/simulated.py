"""``ipsbench-export MODEL --simulate PROFILE``: a repository entry served by the device-time model backend, with the
network's signature and a measured profile in place of the network.

The entry (``<model>_simulated`` unless ``--name`` says otherwise) has the config an exported classifier has (the
ONNX names ``input`` → ``output``, the network's input size, classes, labels and preprocessing recipe, dynamic
batching up to the profile's largest measured batch, one simulated GPU 0), backend ``ipsbench_device_model``, and
the profile, checked as the server will check it, as its version's model file. Nothing is built or run: only the
network's metadata is read (:func:`ipsbench.export.models.describe`).
"""
from __future__ import annotations

from pathlib import Path

from ipsbench.export import models, onnx
from ipsbench.export.errors import ExportError
from ipsbench.export.repository import classifier_config, write_entry
from ipsbench.export.settings import ExportSettings
from ipsbench.server.backends.device_profile import (
    BACKEND_NAME,
    DEVICE_PARAMETER,
    PROFILE_FILENAME,
    DeviceProfile,
    ProfileError,
    parse_profile,
    read_profile_bytes,
    simulated_label,
)
from ipsbench.server.repository.layout import version_dir


def write_simulated_entry(settings: ExportSettings) -> tuple[Path, DeviceProfile]:
    """Write the entry; returns its config's path and the profile it serves. ExportError for an unusable profile."""
    if settings.simulate is None:
        raise ExportError("no profile to simulate (--simulate PROFILE)")
    try:
        data = read_profile_bytes(Path(settings.simulate))
        profile = parse_profile(data, Path(settings.simulate).name)
    except ProfileError as exc:
        raise ExportError(str(exc)) from None
    spec = models.describe(settings.model, settings.image_size)
    name = settings.entry_name
    config = classifier_config(
        spec, name, profile.largest_batch, platform=BACKEND_NAME, backend=BACKEND_NAME,
        input_name=onnx.INPUT_NAME, output_name=onnx.OUTPUT_NAME, instance_count=settings.instance_count,
        device="gpu", parameters={DEVICE_PARAMETER: profile.device_name},
    )
    folder = version_dir(settings.out, name, settings.version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROFILE_FILENAME).write_bytes(data)
    return write_entry(settings.out, config, spec.labels), profile


def describe_entry(config_path: Path, profile: DeviceProfile) -> str:
    """What was written, in one line for the terminal."""
    return (f"wrote {config_path}: {simulated_label(profile.device_name)}, {profile.model or 'an unnamed model'} "
            f"{profile.precision}, measured batch sizes {list(profile.batch_sizes)}")
