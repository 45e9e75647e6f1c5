"""Tiny TorchScript models for the PyTorch backend tests, written with their config.pbtxt and checksum."""

from __future__ import annotations

from pathlib import Path

import torch

from ipsbench.server.repository.checksum import write_checksum
from ipsbench.server.engines.torch_engine import quiet_jit_deprecation


class TwoInTwoOut(torch.nn.Module):
    """``forward(a, b) -> (2 * a + 1, a + b)``: each output can be checked against its own request."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a * 2 + 1, a + b


class Affine(torch.nn.Module):
    """``forward(x) -> 2 * x + 1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


def _tensors(kind: str, names: list[str], features: int) -> str:
    declared = ", ".join(f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ {features} ] }}' for name in names)
    return f"{kind} [ {declared} ]\n"


def write_torchscript_model(
    repository: Path,
    name: str,
    *,
    module: torch.nn.Module,
    inputs: list[str],
    outputs: list[str],
    features: int = 4,
    max_batch_size: int = 8,
    instance: str = "count: 1 kind: KIND_CPU",
    parameters: dict[str, str] | None = None,
    checksum: bool = True,
) -> Path:
    """``repository/name`` with ``module`` scripted to ``1/model.pt``; inputs and outputs declared in the order given
    (FP32, ``[features]`` per sample). Returns the model file."""
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    path = folder / "1" / "model.pt"
    with quiet_jit_deprecation():
        torch.jit.script(module.eval()).save(str(path))
    if checksum:
        write_checksum(path)
    params = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
        for key, value in (parameters or {}).items()
    )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "pytorch"\nmax_batch_size: {max_batch_size}\n'
        + _tensors("input", inputs, features)
        + _tensors("output", outputs, features)
        + "dynamic_batching { max_queue_delay_microseconds: 0 }\n"
        + f"instance_group [ {{ {instance} }} ]\n"
        + params
    )
    return path
