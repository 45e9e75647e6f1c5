"""Preprocessing counters per loaded model version, read by the Prometheus collector at scrape time.

Updated only from the event loop thread (after each request's preprocessing returns); the collector only reads.
The book is keyed by the model's name and version, and the collector asks only for loaded models, so metric labels
never come from request fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PreprocessStats:
    """Counts and cumulative durations of one model version's preprocessing stage."""

    requests: int = 0
    """Requests preprocessed successfully."""
    images: int = 0
    """Images in those requests."""
    duration_ns: int = 0
    """Cumulative wall time of the stage for those requests, from submission to the decode pool to the tensor."""
    failures: int = 0
    """Requests refused by preprocessing (undecodable, oversize)."""

    def record_success(self, images: int, duration_ns: int) -> None:
        self.requests += 1
        self.images += images
        self.duration_ns += duration_ns

    def record_failure(self) -> None:
        self.failures += 1


class PreprocessBook:
    """The :class:`PreprocessStats` of every model version that preprocesses its inputs."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], PreprocessStats] = {}

    def for_model(self, name: str, version: int) -> PreprocessStats:
        """The stats of a model version, created at zero on first use (at load time)."""
        key = (name, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats.setdefault(key, PreprocessStats())
        return stats

    def get(self, name: str, version: int) -> PreprocessStats | None:
        return self._stats.get((name, version))


BOOK = PreprocessBook()
"""The server process's book; the collector takes it as an argument so tests can pass their own."""
