"""Triton's classification extension: an output's top-k classes as ``"score:index[:label]"`` BYTES elements.

A requested output with the parameter ``classification`` (``class_count`` k in Triton's clients) is returned as a
BYTES tensor of shape ``[batch, min(k, classes)]`` (``[min(k, classes)]`` without a batch dimension), highest score
first. The score is printed as C's ``%f`` (what Triton's ``std::to_string`` gives); the label comes from the
output's ``label_filename`` in the model's folder when that file names the class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ipsbench.server.errors import invalid_argument

CLASSIFICATION_PARAMETER = "classification"


def check_class_count(output: str, class_count: int, datatype: str, model: str) -> None:
    """Refuse what Triton refuses before the request is queued."""
    if class_count < 0:
        raise invalid_argument(
            f"class count for output '{output}' of model '{model}' must be >= 0, got {class_count}"
        )
    if datatype in ("BYTES", "BOOL"):
        raise invalid_argument(f"class result not available for output '{output}' due to unsupported type '{datatype}'")


def top_k(array: np.ndarray, class_count: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """The top ``class_count`` entries of each sample of ``array`` as an object array of ``bytes``."""
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    scores = -rows.astype(np.float64)  # negated: ascending sorts give the highest first (also for unsigned types)
    classes = rows.shape[1]
    k = min(class_count, classes)
    result = np.empty((rows.shape[0], k), dtype=object)
    if k == 0:
        return result if batched else result[0]
    if k < classes:
        # argpartition finds the k largest in linear time; only those k are then sorted.
        candidates = np.argpartition(scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, candidates, axis=1).argsort(axis=1, kind="stable")
        indices = np.take_along_axis(candidates, order, axis=1)
    else:
        indices = np.argsort(scores, axis=1, kind="stable")
    label_count = len(labels)
    for r, row in enumerate(rows):
        for c, index in enumerate(indices[r].tolist()):
            text = f"{float(row[index]):f}:{index}"
            if index < label_count and labels[index]:
                text += f":{labels[index]}"
            result[r, c] = text.encode()
    return result if batched else result[0]
