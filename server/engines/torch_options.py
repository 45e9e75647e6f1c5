"""PyTorch backend settings from a model config: the ``parameters`` map and the instance's device.

``parameters`` keys (string values), ipsbench's own; Triton's PyTorch backend ignores them:

* ``precision``: ``fp32`` (default) or ``fp16``. FP32 on CUDA is strict FP32 (TF32 off), so the label means what it
  says. FP16 needs a GPU instance: the module is converted to half precision, FP32 inputs are cast on the device and
  outputs cast back to the configured type, so the wire types stay as the config declares.
* ``channels_last``: ``true`` or ``false`` (default): NHWC memory format for weights and 4-D inputs.
* ``cuda_graphs``: ``true`` or ``false`` (default), GPU instances only: one CUDA graph per batch-size bucket.
* ``inference_threads``: intra-op threads for CPU work (``torch.set_num_threads``; process-wide).

Unknown keys are left for other parts of the server (e.g. preprocessing) and ignored here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


@dataclass(frozen=True)
class TorchOptions:
    precision: str = "fp32"
    channels_last: bool = False
    cuda_graphs: bool = False
    inference_threads: int | None = None
    """None: PyTorch's default (one thread per physical core)."""

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> TorchOptions:
        """Parse the config's parameters; ``ValueError`` names the parameter and the accepted values."""
        precision = params.get("precision", "fp32").strip().lower()
        if precision not in PRECISIONS:
            raise ValueError(f"parameter 'precision' must be one of {', '.join(PRECISIONS)}; got '{precision}'")
        threads = None
        if params.get("inference_threads", "").strip():
            text = params["inference_threads"].strip()
            try:
                threads = int(text)
            except ValueError:
                raise ValueError(f"parameter 'inference_threads' must be an integer, got '{text}'") from None
            if threads < 1:
                raise ValueError(f"parameter 'inference_threads' must be >= 1, got {threads}")
        return cls(
            precision=precision,
            channels_last=_flag(params, "channels_last"),
            cuda_graphs=_flag(params, "cuda_graphs"),
            inference_threads=threads,
        )

    def check_device(self, device_type: str) -> None:
        """Refuse GPU-only options on a CPU instance (never a silent fallback)."""
        if device_type == "cuda":
            return
        if self.precision == "fp16":
            raise ValueError("parameter 'precision' fp16 needs a GPU instance (instance_group kind KIND_GPU)")
        if self.cuda_graphs:
            raise ValueError("parameter 'cuda_graphs' needs a GPU instance (instance_group kind KIND_GPU)")


def _flag(params: Mapping[str, str], key: str) -> bool:
    text = params.get(key, "false").strip().lower()
    if text not in _BOOLEANS:
        raise ValueError(f"parameter '{key}' must be true or false, got '{text}'")
    return _BOOLEANS[text]


def select_device(kind: str, device_id: int | None):
    """``torch.device`` for an instance group kind (``CPU``, ``GPU``, ``AUTO``); raises naming CUDA when it is
    needed and missing."""
    import torch

    if kind == "CPU":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if kind == "AUTO":
            return torch.device("cpu")
        if torch.version.cuda is None:
            why = f"this PyTorch ({torch.__version__}) is a CPU-only build"
        else:
            why = f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA device"
        raise RuntimeError(
            f"instance_group KIND_GPU needs CUDA, but CUDA is not available: {why}; "
            "use KIND_CPU to run this model on the CPU"
        )
    index = device_id or 0
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise RuntimeError(f"instance_group asks for GPU {index}, but CUDA sees {count} device(s)")
    return torch.device("cuda", index)
