"""PyTorch backend (Triton's ``pytorch`` / ``pytorch_libtorch``): TorchScript ``model.pt`` on CPU or CUDA.

TorchScript runs code when loaded: serve only a model repository you trust (see
:mod:`ipsbench.server.engines.torch_engine`). Options come from the config's ``parameters`` (see
:mod:`ipsbench.server.engines.torch_options`); the device from ``instance_group``: ``KIND_GPU`` with ``gpus: [N]`` →
``cuda:N`` (an error naming CUDA when it is unavailable), ``KIND_CPU`` → the CPU.

Tensor names follow Triton's convention for libtorch models: ``INPUT__0``, ``INPUT__1``… are ``forward()``'s
positional arguments and ``OUTPUT__0``, ``OUTPUT__1``… the positions in its returned tuple (or the single returned
tensor). Inputs may instead carry the names of ``forward()``'s arguments; outputs without the ``__<index>``
suffix are taken in config order.

On CUDA an instance takes torch tensors on its device as inputs (``takes_device_tensors``): a front's GPU
preprocessing hands its tensor over without a copy through host memory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ipsbench.server.backends.base import Backend, EngineInfo, ModelInstance
from ipsbench.server.engines.torch_engine import (
    EngineLayout,
    TorchEngine,
    configure_process,
    forward_argument_names,
    load_module,
)
from ipsbench.server.engines.torch_options import TorchOptions, select_device
from ipsbench.server.model_spec import ConfigError, InstanceSpec, ModelSpec, TensorSpec

log = logging.getLogger(__name__)

_INDEXED = re.compile(r"^.+__(?P<index>\d+)$")


class TorchInstance(ModelInstance):
    def __init__(self, engine: TorchEngine, input_names: Sequence[str], output_positions: Mapping[str, int]) -> None:
        self._engine = engine
        self._input_names = tuple(input_names)
        self._output_positions = dict(output_positions)
        self.info = EngineInfo(device=str(engine.device), precision=engine.options.precision)
        self.takes_device_tensors = engine.device.type == "cuda"

    @property
    def engine(self) -> TorchEngine:
        return self._engine

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """``inputs`` are numpy arrays, or torch tensors on the engine's device (used there: no host copy)."""
        results = self._engine.run([inputs[name] for name in self._input_names])
        return [results[self._output_positions[name]] for name in output_names]

    def close(self) -> None:
        self._engine.close()


class TorchBackend(Backend):
    name = "pytorch"

    def load(self, spec: ModelSpec, version: int, model_path: Path, instance: InstanceSpec) -> ModelInstance:
        params = {key: value.string_value for key, value in spec.config.parameters.items()}
        options = TorchOptions.from_parameters(params)
        device = select_device(instance.kind, instance.device_id)
        options.check_device(device.type)
        optional = [name for name, tensor in spec.inputs.items() if tensor.optional]
        if optional:
            raise ConfigError(f"optional inputs are not supported by the PyTorch backend: {optional}")
        configure_process(device, options)
        module = load_module(model_path, device, options)
        input_names = input_order(spec.inputs, forward_argument_names(module))
        output_names = output_order(spec.outputs)
        layout = EngineLayout(
            sample_shapes=tuple(spec.inputs[name].dims for name in input_names),
            input_dtypes=tuple(spec.inputs[name].datatype.numpy for name in input_names),
            output_dtypes=tuple(spec.outputs[name].datatype.numpy for name in output_names),
            max_batch_size=spec.max_batch_size,
        )
        engine = TorchEngine(module, device, options, layout)
        log.info(
            "model '%s' version %d: TorchScript on %s, precision %s, channels_last %s, cuda_graphs %s",
            spec.name,
            version,
            device,
            options.precision,
            options.channels_last,
            options.cuda_graphs,
        )
        return TorchInstance(engine, input_names, {name: i for i, name in enumerate(output_names)})


def _indexed_order(tensors: Mapping[str, TensorSpec], what: str) -> list[str] | None:
    """Names ordered by their ``__<index>`` suffix when every name has one; None when none has."""
    indexes = {name: _INDEXED.match(name) for name in tensors}
    if not any(indexes.values()):
        return None
    if not all(indexes.values()):
        plain = sorted(name for name, match in indexes.items() if match is None)
        raise ConfigError(f"{what} names mix the '<name>__<index>' convention with plain names {plain}")
    order = sorted(tensors, key=lambda name: int(indexes[name]["index"]))
    found = [int(indexes[name]["index"]) for name in order]
    if found != list(range(len(order))):
        raise ConfigError(f"{what} indexes must be 0..{len(order) - 1} exactly once; got {sorted(found)}")
    return order


def input_order(inputs: Mapping[str, TensorSpec], argument_names: Sequence[str]) -> list[str]:
    """Config input names in ``forward()``'s positional order."""
    order = _indexed_order(inputs, "input")
    if order is None:
        missing = [name for name in inputs if name not in argument_names]
        if missing:
            raise ConfigError(
                f"input(s) {missing} are neither named '<name>__<index>' nor arguments of forward() "
                f"{list(argument_names)}"
            )
        order = sorted(inputs, key=list(argument_names).index)
    if len(order) != len(argument_names):
        raise ConfigError(
            f"forward() takes {len(argument_names)} argument(s); the config declares {len(order)} input(s)"
        )
    return order


def output_order(outputs: Mapping[str, TensorSpec]) -> list[str]:
    """Config output names in the order ``forward()`` returns them."""
    return _indexed_order(outputs, "output") or list(outputs)
