"""The device-time model backend (``ipsbench_device_model``): a batch takes the time a measured profile says, on no
device at all, so the serving path around a GPU can be planned and tested on a CPU-only box.

The profile is ``ipsbench-serve bench --json`` output from a real device (:mod:`.device_profile` reads it and
gives the time per batch). It is the version's model file (``<version>/profile.json``), or the file the config's
``ipsbench.device_model.profile`` parameter names, relative to the model's folder; a path that leaves the folder
is refused. ``ipsbench.device_model.device``, when set, must name the device the profile was measured on: clients
read it to say whose figures they replay.

**The simulated device is one resource.** Every instance placed on the same device (the ``instance_group``'s
``gpus`` entry, 0 when none) shares one lock in this process, and an execution holds it for the whole of its
batch's time: executions on one simulated device never overlap, whatever the number of instances or models on it,
so throughput cannot exceed the profile's. An instance waits in ``time.sleep`` on its own worker thread, holding
no CPU. Outputs have the config's shapes and datatypes and hold zeros (empty strings for BYTES): one read-only
array per output and batch size, made on first use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ipsbench.server.backends.base import Backend, EngineInfo, ModelInstance
from ipsbench.server.backends.device_profile import (
    BACKEND_NAME,
    DEVICE_PARAMETER,
    MAX_BATCH_TIME_S,
    PROFILE_PARAMETER,
    DeviceProfile,
    ProfileError,
    read_profile,
)
from ipsbench.server.model_spec import ConfigError, InstanceSpec, ModelSpec, TensorSpec

log = logging.getLogger(__name__)

_devices: dict[int, threading.Lock] = {}
_devices_guard = threading.Lock()


def simulated_device(index: int) -> threading.Lock:
    """The lock that stands for simulated device ``index`` in this process: held while a batch executes on it."""
    with _devices_guard:
        return _devices.setdefault(index, threading.Lock())


class DeviceModelInstance(ModelInstance):
    def __init__(self, spec: ModelSpec, profile: DeviceProfile, device_index: int) -> None:
        self._spec = spec
        self._profile = profile
        self._device = simulated_device(device_index)
        self._outputs: dict[tuple[str, int], np.ndarray] = {}
        self.info = EngineInfo(device=f"sim:{device_index}", precision=profile.precision or "fp32",
                               simulated_from=profile.device_name or "an unnamed device")

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        batch = self._batch_size(inputs)
        duration_s = self._profile.batch_time_s(batch)
        with self._device:  # the device executes one batch at a time
            deadline = time.monotonic() + duration_s
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(left)
        return [self._output(name, batch) for name in output_names]

    def _batch_size(self, inputs: Mapping[str, np.ndarray]) -> int:
        if not self._spec.batched or not inputs:
            return 1
        return int(next(iter(inputs.values())).shape[0])

    def _output(self, name: str, batch: int) -> np.ndarray:
        array = self._outputs.get((name, batch))
        if array is None:
            array = zeros(self._spec.outputs[name], batch if self._spec.batched else None)
            self._outputs[(name, batch)] = array
        return array


def zeros(tensor: TensorSpec, batch: int | None) -> np.ndarray:
    """A read-only array of ``tensor``'s shape (with ``batch`` in front when batched) holding zeros."""
    shape = ((batch,) if batch is not None else ()) + tensor.dims
    if tensor.datatype.is_bytes:
        array = np.full(shape, b"", dtype=object)
    else:
        array = np.zeros(shape, dtype=tensor.datatype.numpy)
    array.flags.writeable = False
    return array


class DeviceModelBackend(Backend):
    name = BACKEND_NAME

    def load(self, spec: ModelSpec, version: int, model_path: Path, instance: InstanceSpec) -> ModelInstance:
        params = {key: value.string_value for key, value in spec.config.parameters.items()}
        path = profile_path(model_path, params.get(PROFILE_PARAMETER, "").strip())
        try:
            profile = read_profile(path)
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
        declared = params.get(DEVICE_PARAMETER, "").strip()
        if declared and declared != profile.device_name:
            raise ConfigError(f"parameter '{DEVICE_PARAMETER}' says '{declared}', but the profile was measured on "
                              f"'{profile.device_name}'")
        variable = [name for name, tensor in spec.outputs.items() if not tensor.fixed]
        if variable:
            raise ConfigError(f"the device model makes outputs of fixed shape; output(s) {variable} have -1 in dims")
        largest = spec.max_batch_size if spec.batched else 1
        if profile.batch_time_s(largest) > MAX_BATCH_TIME_S:
            raise ConfigError(f"a batch of {largest} would take {profile.batch_time_s(largest):g} s by the profile; "
                              f"at most {MAX_BATCH_TIME_S:g} s")
        if largest > profile.largest_batch:
            log.warning("model '%s': max_batch_size %d exceeds the profile's largest measured batch %d; larger "
                        "batches take linearly extrapolated times", spec.name, largest, profile.largest_batch)
        index = instance.device_id or 0
        log.info("model '%s' version %d: device-time model of %s (%s, %s), batch sizes %s, on simulated device %d",
                 spec.name, version, profile.device_name or "an unnamed device", profile.model, profile.precision,
                 list(profile.batch_sizes), index)
        return DeviceModelInstance(spec, profile, index)


def profile_path(model_path: Path, parameter: str) -> Path:
    """The profile file: ``parameter`` relative to the model's folder (the version folder's parent), else the
    version's model file; ConfigError when ``parameter`` leads out of the model's folder."""
    if not parameter:
        return model_path
    model_dir = Path(os.path.realpath(model_path.parent.parent))
    if os.path.isabs(parameter) or "\\" in parameter or "\x00" in parameter:
        raise ConfigError(f"parameter '{PROFILE_PARAMETER}' must be a path relative to the model's folder")
    path = Path(os.path.realpath(model_dir / parameter))
    if model_dir not in path.parents:
        raise ConfigError(f"parameter '{PROFILE_PARAMETER}' leads outside the model's folder")
    return path
