"""The server's side of a step, from its Prometheus endpoint scraped at the window's start and end.

Triton's metric names (``nv_inference_*``, ``nv_gpu_*``, ``nv_energy_consumption``), so the same works against
Triton and ipsbench-serve. Counters are differenced between the two scrapes; gauges are averaged over them. A
failed scrape is a warning in the report, never an error of the run. Pure: no locust, no gevent (the load shape
schedules the scrapes).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 2.0
"""Bound on one scrape (connect and read)."""
MAX_SCRAPE_BYTES = 16 * 1024 * 1024
"""A metrics page longer than this is refused."""
SCRAPE_LEAD_S = 0.2
"""The window-start scrape is taken this long before the window opens (within the warm-up), so that requests the
server finished just before the window, but the client received inside it, fall inside the scrape interval."""

Key = tuple[str, frozenset]

# Per-model counters (Triton's names), differenced over the scrape interval.
MODEL_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
COMPUTE_COUNTERS = MODEL_COUNTERS[-3:]


class ScrapeError(Exception):
    """The metrics endpoint could not be read or parsed."""


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape, keyed by (name, labels); counter names without ``_total``."""

    at_ns: int
    """When the scrape was answered (``time.perf_counter_ns()``)."""
    samples: dict[Key, float]

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of the samples named ``name`` whose labels include ``labels``; None when there is none."""
        wanted = set(labels.items())
        values = [v for (n, ls), v in self.samples.items() if n == name and wanted <= ls]
        return sum(values) if values else None

    def per_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(ls)[label]: v for (n, ls), v in self.samples.items() if n == name and label in dict(ls)}


def parse_metrics(text: str, at_ns: int = 0) -> Snapshot:
    """A Prometheus text page as a :class:`Snapshot`. The parser names counter samples ``<name>_total`` whether
    or not the page did (Triton's pages do not); both forms are keyed without the suffix."""
    samples: dict[Key, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                name = sample.name.removesuffix("_total")
                samples[(name, frozenset(sample.labels.items()))] = float(sample.value)
    except ValueError as error:
        raise ScrapeError(f"unparseable metrics page: {error}") from None
    return Snapshot(at_ns, samples)


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> Snapshot:
    """GET ``url`` and parse it; raises :class:`ScrapeError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - the user's own endpoint
            body = response.read(MAX_SCRAPE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ScrapeError(f"cannot scrape {url}: {getattr(error, 'reason', error)}") from None
    if len(body) > MAX_SCRAPE_BYTES:
        raise ScrapeError(f"metrics page at {url} is larger than {MAX_SCRAPE_BYTES} bytes")
    return parse_metrics(body.decode("utf-8", errors="replace"), time.perf_counter_ns())


def _ms_per(total_us: float | None, requests: float) -> float | None:
    return None if total_us is None or requests <= 0 else round(total_us / requests / 1000, 4)


def server_side(start: Snapshot, end: Snapshot, model: str, version: str = "",
                window_start_ns: int = 0, window_end_ns: int = 0) -> tuple[dict | None, list[str]]:
    """The server's side of a step from two scrapes: its ``server`` block (None when the page has no series for
    the model) and warnings."""
    labels = {"model": model, **({"version": version} if version else {})}
    delta: dict[str, float | None] = {}
    for name in MODEL_COUNTERS:
        before, after = start.total(name, **labels), end.total(name, **labels)
        delta[name] = None if before is None or after is None else after - before
    if delta["nv_inference_count"] is None:
        return None, [f"the metrics page has no nv_inference_count series for model {model!r}"]
    warnings = []
    if any(value is not None and value < 0 for value in delta.values()):
        warnings.append("a server counter went down between the scrapes (server restarted?); server figures omitted")
        return None, warnings
    interval_s = (end.at_ns - start.at_ns) / 1e9
    inferences, executions = delta["nv_inference_count"], delta["nv_inference_exec_count"]
    requests = delta["nv_inference_request_success"] or 0
    compute = [delta[name] for name in COMPUTE_COUNTERS]
    block = {
        "scrape_interval_s": round(interval_s, 6),
        "scrape_start_before_window_s": round((window_start_ns - start.at_ns) / 1e9, 6) if window_start_ns else None,
        "scrape_end_after_window_s": round((end.at_ns - window_end_ns) / 1e9, 6) if window_end_ns else None,
        "request_success": int(requests),
        "inference_count": int(inferences),
        "exec_count": None if executions is None else int(executions),
        "avg_batch_size": round(inferences / executions, 4) if executions else None,
        "request_ms": _ms_per(delta["nv_inference_request_duration_us"], requests),
        "queue_ms": _ms_per(delta["nv_inference_queue_duration_us"], requests),
        "compute_ms": None if None in compute else _ms_per(sum(compute), requests),
        "compute_input_ms": _ms_per(delta["nv_inference_compute_input_duration_us"], requests),
        "compute_infer_ms": _ms_per(delta["nv_inference_compute_infer_duration_us"], requests),
        "compute_output_ms": _ms_per(delta["nv_inference_compute_output_duration_us"], requests),
        "inferences_per_s": round(inferences / interval_s, 3) if interval_s > 0 else None,
        "gpu": gpu_side(start, end, inferences, interval_s),
    }
    return block, warnings


def gpu_side(start: Snapshot, end: Snapshot, inferences: float, interval_s: float) -> dict | None:
    """Every GPU the server reports, together: mean utilization, power and energy over the scrape interval."""
    utilization = [*start.per_label("nv_gpu_utilization", "gpu_uuid").values(),
                   *end.per_label("nv_gpu_utilization", "gpu_uuid").values()]
    power = [start.per_label("nv_gpu_power_usage", "gpu_uuid"), end.per_label("nv_gpu_power_usage", "gpu_uuid")]
    energy_start = start.per_label("nv_energy_consumption", "gpu_uuid")
    energy_end = end.per_label("nv_energy_consumption", "gpu_uuid")
    gpus = sorted({*start.per_label("nv_gpu_utilization", "gpu_uuid"), *power[0], *energy_start})
    if not gpus:
        return None
    shared = energy_start.keys() & energy_end.keys()
    energy_j = sum(energy_end[g] - energy_start[g] for g in shared) if shared else None
    if energy_j is not None and energy_j < 0:
        energy_j = None
    return {
        "gpus": len(gpus),
        "utilization_mean": round(sum(utilization) / len(utilization), 4) if utilization else None,
        "power_w_mean_of_scrapes": round(sum(sum(p.values()) for p in power) / 2, 3) if all(power) else None,
        "energy_j": None if energy_j is None else round(energy_j, 3),
        "power_w_from_energy": round(energy_j / interval_s, 3) if energy_j is not None and interval_s > 0 else None,
        "images_per_joule": round(inferences / energy_j, 4) if energy_j else None,
        "joules_per_image": round(energy_j / inferences, 6) if energy_j is not None and inferences else None,
    }


class StepScrapes:
    """Scrapes of the server's metrics per step, and the ``server`` block of each step once both are in."""

    def __init__(self, url: str, model: str, version: str = "", timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.url = url
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self.blocks: dict[int, dict] = {}
        self.warnings: list[str] = []
        self._starts: dict[int, Snapshot] = {}

    def window_start(self, index: int) -> None:
        try:
            self._starts[index] = scrape(self.url, self.timeout_s)
        except ScrapeError as error:
            self._warn(index, f"scrape at the window's start failed: {error}")

    def window_end(self, index: int, window_start_ns: int, window_end_ns: int) -> None:
        start = self._starts.pop(index, None)
        if start is None:
            return
        try:
            end = scrape(self.url, self.timeout_s)
        except ScrapeError as error:
            self._warn(index, f"scrape at the window's end failed: {error}")
            return
        block, warnings = server_side(start, end, self.model, self.version, window_start_ns, window_end_ns)
        for warning in warnings:
            self._warn(index, warning)
        if block is not None:
            self.blocks[index] = block

    def _warn(self, index: int, text: str) -> None:
        logger.warning("step %d: server metrics: %s", index, text)
        self.warnings.append(f"step {index} server metrics: {text}")
