"""Merge requests into one batch along the batch dimension, and split the outputs back.

A request that runs alone is passed through untouched: no copy on the way in, views on the way out. Inputs are numpy
arrays, or torch tensors where a front preprocessed on a GPU (:mod:`ipsbench.server.preprocess.gpu`): those are
concatenated with ``torch.cat`` on their device, so a batch of device tensors stays on the device. torch is
imported only when a batch holds a tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def merge(inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One array per input name: the requests' arrays concatenated along axis 0 (one copy each)."""
    if len(inputs) == 1:
        return dict(inputs[0])
    return {name: _concatenate([request[name] for request in inputs]) for name in inputs[0]}


def _concatenate(parts: list[Any]) -> Any:
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts, axis=0)
    import torch

    device = next(part.device for part in parts if isinstance(part, torch.Tensor))
    return torch.cat([torch.as_tensor(part, device=device) for part in parts], dim=0)


def split(outputs: Sequence[Any], batch_sizes: Sequence[int]) -> list[list[Any]]:
    """Per request, its slice of each output (views, no copy). ``batch_sizes`` sum to the outputs' first dim.
    Outputs are numpy arrays or torch tensors (both slice into views)."""
    if len(batch_sizes) == 1:
        return [list(outputs)]
    total = sum(batch_sizes)
    for output in outputs:
        if output.ndim == 0 or output.shape[0] != total:
            raise ValueError(f"output with shape {list(output.shape)} does not have batch dimension {total}")
    result: list[list[Any]] = []
    start = 0
    for size in batch_sizes:
        end = start + size
        result.append([output[start:end] for output in outputs])
        start = end
    return result
