"""One measured window (trial) of a stability-judged step: its counts and latency histograms, encoded and merged
like a step's."""

from __future__ import annotations

from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from ipsbench.loadgen.histograms import add_encoded, encode_histogram, new_histogram
from ipsbench.loadgen.outcomes import COMPLETED, Outcome

STABLE_WINDOWS = 3
"""A stability-judged step's figures come from its last this many trials."""


@dataclass
class Trial:
    """One measured window of a stability-judged step: what completed inside it."""

    counts: dict[Outcome, int] = field(default_factory=lambda: {o: 0 for o in COMPLETED})
    images_ok: int = 0
    end_ns: int = 0
    """When its last request completed (count windows end there; ``perf_counter_ns``, this process's clock)."""
    histograms: dict[Outcome, HdrHistogram] = field(default_factory=dict)
    """Created per outcome on its first latency (errors are rare; each histogram is about 140 KB)."""

    def histogram(self, outcome: Outcome) -> HdrHistogram:
        histogram = self.histograms.get(outcome)
        if histogram is None:
            histogram = self.histograms[outcome] = new_histogram()
        return histogram

    def encode(self) -> dict:
        return {
            "counts": {o.value: n for o, n in self.counts.items()}, "images_ok": self.images_ok,
            "histograms": {o.value: encode_histogram(h) for o, h in self.histograms.items()},
        }

    def merge_encoded(self, data: dict) -> None:
        for name, n in data["counts"].items():
            self.counts[Outcome(name)] += n
        self.images_ok += data["images_ok"]
        for name, encoded in data["histograms"].items():
            add_encoded(self.histogram(Outcome(name)), encoded)
