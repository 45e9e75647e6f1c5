"""ONNX Runtime backend (Triton's ``onnxruntime`` / ``onnxruntime_onnx``).

Session settings come from the model config, with the names Triton's ONNX Runtime backend uses:

* ``parameters``: ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode`` (0 sequential, 1 parallel),
  ``enable_mem_arena``, ``enable_mem_pattern``, ``session.use_device_allocator_for_initializers``; for the CUDA
  provider the older top-level keys ``cudnn_conv_algo_search`` (0 exhaustive, 1 heuristic, 2 default),
  ``gpu_mem_limit``, ``arena_extend_strategy`` and ``do_copy_in_default_stream``;
* ``optimization { graph { level: N } }``: -1 basic, 1 basic and extended, 2 none, unset all optimizations;
* ``optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" parameters {...} } ] } }``
  with Triton's keys (``precision_mode`` FP16/INT8, ``max_workspace_size_bytes``, ``trt_*`` passed through), or
  ``name: "cuda"`` with CUDA provider options; ``cpu_execution_accelerator [ { name: "openvino" } ]``;
* ``instance_group { kind: KIND_GPU gpus: [N] }`` puts the instance on the CUDA provider with ``device_id`` N, after
  any GPU accelerator; on a GPU the outputs are bound to device memory (IO binding) and copied back once;
* ipsbench's own ``parameters { key: "execution_providers" value { string_value: "A,B" } }`` names the providers
  outright, and ``precision`` (``fp16`` for a graph exported in FP16 behind FP32 inputs) labels reports.

A requested provider that onnxruntime lacks, or falls back from, fails the load: never a silent CPU fallback. A GPU
provider missing from a CPU build says to install ``onnxruntime-gpu``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ipsbench.server import datatypes
from ipsbench.server.backends.base import Backend, EngineInfo, ModelInstance
from ipsbench.server.model_spec import InstanceSpec, ModelSpec, TensorSpec

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
_GPU_PROVIDERS = frozenset(_GPU_ACCELERATORS.values())
_CPU_ACCELERATORS = {"openvino": "OpenVINOExecutionProvider"}
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
_TRT_RENAMED = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}
_CUDA_LEGACY_KEYS = ("cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy", "do_copy_in_default_stream")
_CONV_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
GPU_BUILD_HINT = (
    "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime && pip install onnxruntime-gpu), "
    "with a CUDA driver and, for the TensorRT provider, TensorRT"
)


class OnnxRuntimeInstance(ModelInstance):
    def __init__(self, session: ort.InferenceSession, info: EngineInfo, device_id: int | None) -> None:
        self._session = session
        self.info = info
        self._device_id = device_id
        """GPU the session runs on (outputs bound there), or None on the CPU."""

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        if self._device_id is None:
            return self._session.run(output_names, inputs)
        binding = self._session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in output_names:
            binding.bind_output(name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

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
        on_gpu = active[0] in _GPU_PROVIDERS
        device_id = (instance.device_id or 0) if on_gpu else None
        precision = params.get("precision") or (
            "fp16" if any(arg.type == "tensor(float16)" for arg in session.get_inputs()) else "fp32"
        )
        info = EngineInfo(device=f"cuda:{device_id}" if on_gpu else "cpu", precision=precision)
        return OnnxRuntimeInstance(session, info, device_id)


def _int_parameter(params: dict[str, str], key: str, minimum: int = 0) -> int | None:
    if key not in params:
        return None
    try:
        value = int(params[key])
    except ValueError:
        raise ValueError(f"parameter '{key}' must be an integer, got '{params[key]}'") from None
    if value < minimum:
        raise ValueError(f"parameter '{key}' must be >= {minimum}, got {value}")
    return value


def _session_options(spec: ModelSpec, params: dict[str, str]) -> ort.SessionOptions:
    options = ort.SessionOptions()
    for key, attr in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        value = _int_parameter(params, key)
        if value is not None:
            setattr(options, attr, value)
    mode = _int_parameter(params, "execution_mode")
    if mode is not None:
        if mode not in (0, 1):
            raise ValueError(f"parameter 'execution_mode' must be 0 (sequential) or 1 (parallel), got {mode}")
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    for key, attr in (("enable_mem_arena", "enable_cpu_mem_arena"), ("enable_mem_pattern", "enable_mem_pattern")):
        value = _int_parameter(params, key)
        if value is not None:
            setattr(options, attr, bool(value))
    if "session.use_device_allocator_for_initializers" in params:
        options.add_session_config_entry(
            "session.use_device_allocator_for_initializers", params["session.use_device_allocator_for_initializers"]
        )
    level = spec.config.optimization.graph.level
    options.graph_optimization_level = _GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.log_severity_level = 3
    return options


def _tensorrt_options(parameters: Mapping[str, str]) -> dict[str, str]:
    """Triton's TensorRT accelerator keys → the TensorRT provider's options."""
    options: dict[str, str] = {}
    for key, value in parameters.items():
        if key == "precision_mode":
            mode = value.strip().upper()
            if mode not in ("FP32", "FP16", "INT8"):
                raise ValueError(f"tensorrt accelerator: precision_mode must be FP32, FP16 or INT8, got '{value}'")
            options["trt_fp16_enable"] = str(mode in ("FP16", "INT8")).lower()
            options["trt_int8_enable"] = str(mode == "INT8").lower()
        elif key in _TRT_RENAMED:
            options[_TRT_RENAMED[key]] = value
        elif key.startswith("trt_"):
            options[key] = value
        else:
            raise ValueError(f"tensorrt accelerator: unknown parameter '{key}'")
    return options


def _cuda_options(params: dict[str, str], accelerator: Mapping[str, str] | None) -> dict[str, str]:
    options = {key: params[key] for key in _CUDA_LEGACY_KEYS if key in params}
    if "cudnn_conv_algo_search" in options:
        options["cudnn_conv_algo_search"] = _CONV_SEARCH.get(
            options["cudnn_conv_algo_search"], options["cudnn_conv_algo_search"]
        )
    options.update(accelerator or {})
    return options


def _providers(spec: ModelSpec, instance: InstanceSpec, params: dict[str, str]) -> list:
    available = ort.get_available_providers()
    if params.get("execution_providers"):
        requested: list = [name.strip() for name in params["execution_providers"].split(",") if name.strip()]
    else:
        accelerators = spec.config.optimization.execution_accelerators
        requested = []
        if instance.kind == "GPU":
            device = {"device_id": str(instance.device_id or 0)}
            cuda_accelerator = None
            for acc in accelerators.gpu_execution_accelerator:
                if acc.name == "tensorrt":
                    requested.append(("TensorrtExecutionProvider", {**device, **_tensorrt_options(acc.parameters)}))
                elif acc.name == "cuda":
                    cuda_accelerator = dict(acc.parameters)
                else:
                    raise ValueError(
                        f"unknown gpu_execution_accelerator '{acc.name}' (supported: {sorted(_GPU_ACCELERATORS)})"
                    )
            requested.append(("CUDAExecutionProvider", {**device, **_cuda_options(params, cuda_accelerator)}))
        else:
            for acc in accelerators.cpu_execution_accelerator:
                if acc.name not in _CPU_ACCELERATORS:
                    raise ValueError(f"unknown cpu_execution_accelerator '{acc.name}'")
                requested.append((_CPU_ACCELERATORS[acc.name], dict(acc.parameters)))
        requested.append("CPUExecutionProvider")
    for provider in requested:
        name = provider[0] if isinstance(provider, tuple) else provider
        if name not in available:
            hint = f"; {GPU_BUILD_HINT}" if name in _GPU_PROVIDERS else ""
            raise ValueError(
                f"execution provider {name} is not available in this onnxruntime {ort.__version__} "
                f"(available: {available}){hint}"
            )
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
