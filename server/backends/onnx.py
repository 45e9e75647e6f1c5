"""ONNX Runtime backend (Triton's ``onnxruntime`` / ``onnxruntime_onnx``).

Session settings come from the model config, with Triton's ONNX Runtime backend names:

* ``parameters { key: "intra_op_thread_count" value { string_value: "2" } }`` (and ``inter_op_thread_count``);
* ``optimization { graph { level: N } }``: -1 basic, 1 extended, anything else all optimizations;
* ``optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }`` and
  ``cpu_execution_accelerator [ { name: "openvino" } ]``;
* ``instance_group { kind: KIND_GPU gpus: [0] }`` puts the instance on the CUDA execution provider;
* ipsbench's own ``parameters { key: "execution_providers" value { string_value: "A,B" } }`` names the providers
  outright.

A requested provider that onnxruntime lacks, or falls back from, fails the load: never a silent CPU fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server import datatypes
from server.backends.base import Backend, EngineInfo, ModelInstance
from server.model import InstanceSpec, ModelSpec, TensorSpec

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
_GPU_ACCELERATORS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
_CPU_ACCELERATORS = {"openvino": "OpenVINOExecutionProvider"}
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


class OnnxRuntimeInstance(ModelInstance):
    def __init__(self, session: ort.InferenceSession, info: EngineInfo) -> None:
        self._session = session
        self.info = info

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        return self._session.run(output_names, inputs)

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def load(self, spec: ModelSpec, version: int, model_path: Path, instance: InstanceSpec) -> ModelInstance:
        params = {key: value.string_value for key, value in spec.config.parameters.items()}
        providers = _providers(spec, instance, params)
        session = ort.InferenceSession(
            str(model_path), sess_options=_session_options(spec, params), providers=providers
        )
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        active = session.get_providers()
        if not active or active[0] != wanted:
            raise RuntimeError(f"requested execution provider {wanted}, but onnxruntime is using {active}")
        _check_io(spec, session)
        return OnnxRuntimeInstance(session, _engine_info(session, instance))


def _engine_info(session: ort.InferenceSession, instance: InstanceSpec) -> EngineInfo:
    on_gpu = session.get_providers()[0] in _GPU_ACCELERATORS.values()
    half = any(arg.type == "tensor(float16)" for arg in session.get_inputs())
    return EngineInfo(
        device=f"cuda:{instance.device_id or 0}" if on_gpu else "cpu", precision="fp16" if half else "fp32"
    )


def _session_options(spec: ModelSpec, params: dict[str, str]) -> ort.SessionOptions:
    options = ort.SessionOptions()
    for key, attr in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        if key in params:
            try:
                value = int(params[key])
            except ValueError:
                raise ValueError(f"parameter '{key}' must be an integer, got '{params[key]}'") from None
            if value < 0:
                raise ValueError(f"parameter '{key}' must be >= 0, got {value}")
            setattr(options, attr, value)
    level = spec.config.optimization.graph.level
    options.graph_optimization_level = _GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.log_severity_level = 3
    return options


def _providers(spec: ModelSpec, instance: InstanceSpec, params: dict[str, str]) -> list:
    available = ort.get_available_providers()
    if params.get("execution_providers"):
        requested: list = [name.strip() for name in params["execution_providers"].split(",") if name.strip()]
    else:
        accelerators = spec.config.optimization.execution_accelerators
        requested = []
        if instance.kind == "GPU":
            device = {"device_id": instance.device_id or 0}
            for acc in accelerators.gpu_execution_accelerator:
                if acc.name not in _GPU_ACCELERATORS:
                    raise ValueError(f"unknown gpu_execution_accelerator '{acc.name}'")
                requested.append((_GPU_ACCELERATORS[acc.name], dict(device, **acc.parameters)))
            if not any(p[0] == "CUDAExecutionProvider" for p in requested):
                requested.append(("CUDAExecutionProvider", device))
        else:
            for acc in accelerators.cpu_execution_accelerator:
                if acc.name not in _CPU_ACCELERATORS:
                    raise ValueError(f"unknown cpu_execution_accelerator '{acc.name}'")
                requested.append((_CPU_ACCELERATORS[acc.name], dict(acc.parameters)))
        requested.append("CPUExecutionProvider")
    for provider in requested:
        name = provider[0] if isinstance(provider, tuple) else provider
        if name not in available:
            raise ValueError(f"execution provider {name} is not available in this onnxruntime (available: {available})")
    return requested


def _check_io(spec: ModelSpec, session: ort.InferenceSession) -> None:
    batch_rank = 1 if spec.batched else 0
    for kind, declared, actual in (
        ("input", spec.inputs, session.get_inputs()),
        ("output", spec.outputs, session.get_outputs()),
    ):
        by_name = {arg.name: arg for arg in actual}
        for name, tensor in declared.items():
            arg = by_name.get(name)
            if arg is None:
                raise ValueError(f"{kind} '{name}' is not in the ONNX model; it has {sorted(by_name)}")
            _check_tensor(kind, tensor, arg, batch_rank)


def _check_tensor(kind: str, tensor: TensorSpec, arg, batch_rank: int) -> None:
    onnx_type = _ORT_TYPES.get(arg.type)
    if onnx_type != tensor.datatype.protocol:
        expected = datatypes.config_type_name(tensor.datatype.config)
        raise ValueError(f"{kind} '{tensor.name}' is {arg.type} in the ONNX model but {expected} in the config")
    shape = arg.shape
    if shape is None:
        return
    if len(shape) != len(tensor.dims) + batch_rank:
        raise ValueError(
            f"{kind} '{tensor.name}' has rank {len(shape)} in the ONNX model; the config implies "
            f"{len(tensor.dims) + batch_rank} (dims {list(tensor.dims)}"
            f"{' plus the batch dimension' if batch_rank else ''})"
        )
    for model_dim, config_dim in zip(shape[batch_rank:], tensor.dims):
        if isinstance(model_dim, int) and model_dim > 0 and config_dim != -1 and model_dim != config_dim:
            raise ValueError(
                f"{kind} '{tensor.name}' has shape {shape} in the ONNX model; the config says {list(tensor.dims)}"
            )
