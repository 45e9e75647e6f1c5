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


class MergeBuffers:
    """One engine instance's batch arrays, kept from batch to batch: a batch of several requests is copied into
    them instead of into fresh memory, which for a batch of megabytes costs a page fault per page on first touch
    (more than the copy itself). The instance runs one batch at a time, so its arrays are free again when its
    call returns; outputs an engine hands back inside them are copied out first (:meth:`detach`)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def merge(self, inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """As :func:`merge`, numpy inputs written into this instance's arrays."""
        if len(inputs) == 1:
            return dict(inputs[0])
        merged = {}
        for name in inputs[0]:
            parts = [request[name] for request in inputs]
            first = parts[0]
            if not all(isinstance(p, np.ndarray) and p.dtype == first.dtype and p.shape[1:] == first.shape[1:]
                       for p in parts):
                merged[name] = _concatenate(parts)
                continue
            rows = sum(p.shape[0] for p in parts)
            kept = self._arrays.get(name)
            if kept is None or kept.dtype != first.dtype or kept.shape[1:] != first.shape[1:] or len(kept) < rows:
                kept = self._arrays[name] = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
            merged[name] = np.concatenate(parts, axis=0, out=kept[:rows])
        return merged

    def detach(self, outputs: Sequence[Any]) -> list[Any]:
        """``outputs`` with any array that lies in these buffers copied out (the next batch will overwrite them)."""
        return [np.array(o) if isinstance(o, np.ndarray) and self._holds(o) else o for o in outputs]

    def _holds(self, array: np.ndarray) -> bool:
        return any(np.may_share_memory(array, kept) for kept in self._arrays.values())


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
