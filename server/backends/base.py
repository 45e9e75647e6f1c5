"""What every backend provides: a loader that turns one model version into engine instances."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ipsbench.server.model_spec import InstanceSpec, ModelSpec


@dataclass(frozen=True)
class EngineInfo:
    """Where and how an instance computes, for reports (``ipsbench-serve bench``) and logs."""

    device: str = "cpu"
    """``cpu`` or ``cuda:N``."""
    precision: str = "fp32"
    """Arithmetic precision of the engine (``fp32``, ``fp16``), which may differ from the wire type."""
    simulated_from: str = ""
    """For a device-time model (no device computes): the device whose measured profile it replays; empty for a
    real engine."""


class ModelInstance(ABC):
    """One engine instance. ``run`` is called from a worker thread, one batch at a time per instance."""

    info: EngineInfo = EngineInfo()
    takes_device_tensors: bool = False
    """``run`` also takes torch tensors on ``info.device`` (a CUDA device) and uses them there, without a copy
    through host memory; a front's GPU preprocessing hands those over (:mod:`ipsbench.server.preprocess.placement`)."""

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Run one batch; return the outputs in the order of ``output_names``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""


class Backend(ABC):
    """Creates instances of one model version from its file."""

    name: str = ""

    @abstractmethod
    def load(self, spec: ModelSpec, version: int, model_path: Path, instance: InstanceSpec) -> ModelInstance:
        """Load ``model_path`` for ``instance``; raise an exception with a clear message on failure."""
