"""Where a front's preprocessing runs: the config's ``ipsbench.preprocess.device`` and the loaded engines → a device.

* ``cpu``: the CPU path (:mod:`~ipsbench.server.preprocess.stage`'s decode pool), as it always was.
* ``gpu``: on a CUDA device (:mod:`~ipsbench.server.preprocess.gpu`): the first CUDA device an engine instance of
  the model runs on, else ``cuda:0``. Where GPU preprocessing is not available (no torch or torchvision, a
  CPU-only build, no CUDA device) the model still loads and preprocesses on the CPU, with one warning in the log
  for the version: a config written for a GPU machine stays servable on any machine.
* ``auto`` (the default): ``gpu`` when an engine instance runs on a CUDA device and GPU preprocessing is available,
  else ``cpu``. A model whose engines are all on the CPU never imports torch for this decision.

The preprocessed tensor is handed to the engine on the device only when every instance takes device tensors
(:attr:`~ipsbench.server.backends.base.ModelInstance.takes_device_tensors`: the ``pytorch`` backend on CUDA);
otherwise it is copied back to host memory once, as the engines of other backends take numpy arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """The decision for one loaded version."""

    configured: str
    """``auto``, ``cpu`` or ``gpu``, as the config says."""
    effective: str
    """``cpu`` or ``gpu``: where it preprocesses."""
    device: str | None = None
    """The torch device (``cuda:N``) when ``effective`` is ``gpu``."""
    to_host: bool = True
    """``gpu`` only: copy the tensor to host memory for the engine (False: the engine takes the device tensor)."""


@dataclass(frozen=True)
class EngineDevice:
    """What placement needs to know of one engine instance."""

    device: str
    """``cpu`` or ``cuda:N``."""
    takes_device_tensors: bool


def gpu_unavailable_reason() -> str | None:
    """None when preprocessing can run on a CUDA device here; else why not, in words."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    try:
        import torchvision.io  # noqa: F401 - decode_jpeg lives there
    except ImportError:
        return "torchvision is not installed"
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA device"
    return None


def place(configured: str, engines: Sequence[EngineDevice], label: str) -> Placement:
    """Where ``label``'s (``model 'x' version n``) preprocessing runs; logs the decision (a warning when ``gpu``
    was asked for and is not available)."""
    if configured not in ("auto", "cpu", "gpu"):
        raise ValueError(f"unknown preprocessing device {configured!r}; choose auto, cpu or gpu")
    cuda = [engine.device for engine in engines if engine.device.startswith("cuda")]
    if configured == "cpu" or (configured == "auto" and not cuda):
        log.info("%s: preprocessing on the CPU (ipsbench.preprocess.device %s)", label, configured)
        return Placement(configured, "cpu")
    why = gpu_unavailable_reason()
    if why is not None:
        if configured == "gpu":
            log.warning("%s: ipsbench.preprocess.device is gpu, but %s: preprocessing on the CPU", label, why)
        else:
            log.info("%s: preprocessing on the CPU (ipsbench.preprocess.device auto: %s)", label, why)
        return Placement(configured, "cpu")
    device = cuda[0] if cuda else "cuda:0"
    to_host = not all(engine.takes_device_tensors and engine.device == device for engine in engines)
    log.info(
        "%s: preprocessing on %s (ipsbench.preprocess.device %s); the engine takes %s",
        label, device, configured, "host arrays (one device-to-host copy)" if to_host else "the device tensor",
    )
    return Placement(configured, "gpu", device, to_host)
