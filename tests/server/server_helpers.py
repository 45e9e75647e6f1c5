"""Helpers for the server tests: request builders and a metrics scraper."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
from tritonclient.grpc import service_pb2

CALL_TIMEOUT_S = 30


def infer_request(model: str, array: np.ndarray, input_name: str = "input", **fields) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest with one input in ``raw_input_contents``."""
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name=input_name, datatype="FP32", shape=list(array.shape))
    request.raw_input_contents.append(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return request


def output_array(response: service_pb2.ModelInferResponse, index: int = 0) -> np.ndarray:
    tensor = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(tuple(tensor.shape))


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text page keyed by (name, labels), names exactly as served."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparseable metrics line: {line!r}"
        labels = frozenset(_LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
