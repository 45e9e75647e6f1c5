"""Merge requests into one batch along the batch dimension, and split the outputs back.

A request that runs alone is passed through untouched: no copy on the way in, views on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def merge(inputs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per input name: the requests' arrays concatenated along axis 0 (one copy each)."""
    if len(inputs) == 1:
        return dict(inputs[0])
    return {name: np.concatenate([request[name] for request in inputs], axis=0) for name in inputs[0]}


def split(outputs: Sequence[np.ndarray], batch_sizes: Sequence[int]) -> list[list[np.ndarray]]:
    """Per request, its slice of each output (views, no copy). ``batch_sizes`` sum to the outputs' first dim."""
    if len(batch_sizes) == 1:
        return [list(outputs)]
    total = sum(batch_sizes)
    for output in outputs:
        if output.ndim == 0 or output.shape[0] != total:
            raise ValueError(f"output with shape {list(output.shape)} does not have batch dimension {total}")
    result: list[list[np.ndarray]] = []
    start = 0
    for size in batch_sizes:
        end = start + size
        result.append([output[start:end] for output in outputs])
        start = end
    return result
