"""Native TensorRT backend (Triton's ``tensorrt`` / ``tensorrt_plan``): serialized engines, ``model.plan``.

Each instance deserializes the plan on its GPU (``instance_group { kind: KIND_GPU gpus: [N] }``) and owns one
execution context, stream and set of device buffers (see :mod:`ipsbench.server.engines.tensorrt_engine`; TensorRT 11
and cuda-python, no PyTorch). Tensor names, types and shapes in the config must match the engine's: a strongly typed
FP16 engine built from a graph that casts at its edges keeps FP32 inputs and outputs (``TYPE_FP32``), one whose graph
takes FP16 itself has FP16 inputs (``TYPE_FP16``). ``max_batch_size`` must not exceed the engine's optimization
profile. Without TensorRT (or a GPU) the model fails to load with a message naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ipsbench.server.backends.base import Backend, EngineInfo, ModelInstance
from ipsbench.server.datatypes import BY_CONFIG, config_type_name
from ipsbench.server.engines.tensorrt_engine import TensorRTEngine
from ipsbench.server.model_spec import InstanceSpec, ModelSpec


class TensorRTInstance(ModelInstance):
    def __init__(self, engine: TensorRTEngine, info: EngineInfo) -> None:
        self._engine = engine
        self.info = info

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        results = self._engine.run(inputs)
        return [results[name] for name in output_names]

    def close(self) -> None:
        self._engine.close()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def load(self, spec: ModelSpec, version: int, model_path: Path, instance: InstanceSpec) -> ModelInstance:
        if instance.kind == "CPU":
            raise ValueError("a TensorRT engine runs on a GPU: use instance_group kind KIND_GPU")
        device_id = instance.device_id or 0
        engine = TensorRTEngine.open(model_path, device_id)
        try:
            _check_io(spec, engine)
        except BaseException:
            engine.close()
            raise
        precision = spec.config.parameters["precision"].string_value if "precision" in spec.config.parameters else ""
        return TensorRTInstance(engine, EngineInfo(device=f"cuda:{device_id}", precision=precision or "fp32"))


def _config_type_of(dtype: np.dtype) -> str | None:
    """The config's name for an engine tensor's numpy type (``TYPE_FP16`` for FP16 I/O), if it has one."""
    match = next((t for t in BY_CONFIG.values() if not t.is_bytes and t.numpy == dtype), None)
    return config_type_name(match.config) if match else None


def _check_io(spec: ModelSpec, engine: TensorRTEngine) -> None:
    batch_rank = 1 if spec.batched else 0
    for kind, declared, actual in (("input", spec.inputs, engine.inputs), ("output", spec.outputs, engine.outputs)):
        for name, tensor in declared.items():
            info = actual.get(name)
            if info is None:
                raise ValueError(f"{kind} '{name}' is not in the TensorRT engine; it has {sorted(actual)}")
            if info.dtype != tensor.datatype.numpy:
                declared_type = _config_type_of(info.dtype)
                raise ValueError(
                    f"{kind} '{name}' is {info.dtype} in the engine but {tensor.datatype.numpy} in the config"
                    + (f": declare it {declared_type}" if declared_type else "")
                )
            if tuple(info.shape[batch_rank:]) != tuple(tensor.dims) and -1 not in tensor.dims:
                raise ValueError(
                    f"{kind} '{name}' has shape {list(info.shape)} in the engine; the config says {list(tensor.dims)}"
                )
            if kind == "input" and spec.batched and info.max_batch_size and spec.max_batch_size > info.max_batch_size:
                raise ValueError(
                    f"max_batch_size {spec.max_batch_size} exceeds the engine's optimization profile "
                    f"(largest batch {info.max_batch_size}); rebuild with --max-batch-size {spec.max_batch_size}"
                )
