"""The server's side of a step, from its Prometheus endpoint scraped at the window's start and end.

Triton's metric names (``nv_inference_*``, ``nv_gpu_*``, ``nv_energy_consumption``), so the same works against
Triton and ipsbench-serve; ipsbench-serve's own series (``ipsbench_*``: the time before the queue and after the
compute, the request-duration histogram, each serving process's CPU and event loop) add to the block where the page
has them. Counters and histogram buckets are differenced between the two scrapes; gauges are averaged over them. The
load generator's CPUs (its affinity set) are read at the same two instants, so every figure of a step's block covers
one interval. A failed scrape is a warning in the report, never an error of the run. Pure: no locust, no gevent (the
load shape schedules the scrapes).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import math
import os
from dataclasses import dataclass

import psutil
from prometheus_client.parser import text_string_to_metric_families

from ipsbench.loadgen.client import is_local_target

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
# ipsbench-serve's per-model series (no Triton name), in seconds; absent from Triton's page.
OWN_COUNTERS = (
    "ipsbench_pre_queue_duration_seconds",
    "ipsbench_post_compute_duration_seconds",
    "ipsbench_execution_compute_duration_seconds",
)
REQUEST_HISTOGRAM = "ipsbench_request_duration_seconds"
LOOP_LAG_HISTOGRAM = "ipsbench_event_loop_lag_seconds"


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

    def buckets(self, name: str, **labels: str) -> dict[float, float]:
        """A histogram's cumulative bucket counts by upper bound (``+Inf`` as ``math.inf``), summed over the
        series whose labels include ``labels``."""
        wanted = set(labels.items())
        found: dict[float, float] = {}
        for (n, ls), v in self.samples.items():
            if n == f"{name}_bucket" and wanted <= ls:
                try:
                    le = float(dict(ls).get("le", "nan"))
                except ValueError:
                    continue  # a bucket without a number for its bound is no bucket
                if not math.isnan(le):
                    found[le] = found.get(le, 0.0) + v
        return found


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (0..1) of cumulative bucket counts as Prometheus' ``histogram_quantile`` estimates it:
    linear within the bucket the rank falls in (from 0 in the first); the highest finite bound when it falls in
    ``+Inf``; None without observations."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return None
    rank = q * buckets[math.inf]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank and count > below:
            if upper == math.inf:
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _bucket_delta(start: Snapshot, end: Snapshot, name: str, **labels: str) -> dict[float, float] | None:
    before, after = start.buckets(name, **labels), end.buckets(name, **labels)
    if not after:
        return None
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


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
        **own_side(start, end, labels, interval_s),
        "gpu": gpu_side(start, end, inferences, interval_s),
        "processes": processes_side(start, end, interval_s),
    }
    return block, warnings


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)


def own_side(start: Snapshot, end: Snapshot, labels: dict[str, str], interval_s: float) -> dict:
    """ipsbench-serve's own per-model figures (None each on a page without them): the server's time before the
    queue and after the compute per answered request, the p50/p99 of its request time, the engine's busy share."""
    delta: dict[str, float | None] = {}
    for name in OWN_COUNTERS:
        before, after = start.total(name, **labels), end.total(name, **labels)
        delta[name] = None if before is None or after is None else after - before
    answered = None
    histogram = _bucket_delta(start, end, REQUEST_HISTOGRAM, **labels)
    if histogram is not None:
        answered = histogram.get(math.inf, 0.0)

    def per_answered(name: str) -> float | None:
        return None if delta[name] is None or not answered else delta[name] / answered

    pre, post = per_answered(OWN_COUNTERS[0]), per_answered(OWN_COUNTERS[1])
    instances = end.total("ipsbench_model_instances", **labels)
    busy = delta[OWN_COUNTERS[2]]
    return {
        "pre_queue_ms": _ms(pre),
        "post_compute_ms": _ms(post),
        "frontend_ms": None if pre is None or post is None else _ms(pre + post),
        "request_p50_ms": _ms(histogram_quantile(0.50, histogram)) if histogram else None,
        "request_p99_ms": _ms(histogram_quantile(0.99, histogram)) if histogram else None,
        "instances": None if instances is None else int(instances),
        "engine_busy": round(busy / (interval_s * instances), 4) if busy is not None and instances and interval_s > 0
        else None,
    }


def processes_side(start: Snapshot, end: Snapshot, interval_s: float) -> list[dict] | None:
    """Each serving process's CPUs, its use of them in cores over the interval (all its threads; its event loop's
    thread) and its loop's lag (mean, p99); None on a page without them."""
    if interval_s <= 0:
        return None
    processes = []
    for (name, labels) in sorted(end.samples, key=lambda key: sorted(key[1])):
        if name != "ipsbench_process_cpu_seconds":
            continue
        who = dict(labels)
        cpu = _delta(start, end, "ipsbench_process_cpu_seconds", **who)
        loop_cpu = _delta(start, end, "ipsbench_event_loop_cpu_seconds", **who)
        lag = _bucket_delta(start, end, LOOP_LAG_HISTOGRAM, **who)
        ticks = lag.get(math.inf, 0.0) if lag else 0.0
        lag_sum = _delta(start, end, f"{LOOP_LAG_HISTOGRAM}_sum", **who)
        cpus = end.total("ipsbench_process_cpus", **who)
        processes.append({
            "role": who.get("role"),
            "index": who.get("index"),
            "cpus": int(cpus) if cpus is not None and 1 <= cpus < 1e6 else None,
            "cpu_cores": None if cpu is None else round(cpu / interval_s, 4),
            "loop_cpu_cores": None if loop_cpu is None else round(loop_cpu / interval_s, 4),
            "loop_lag_mean_ms": _ms(lag_sum / ticks) if ticks and lag_sum is not None else None,
            "loop_lag_p99_ms": _ms(histogram_quantile(0.99, lag)) if ticks else None,
        })
    return processes or None


def _delta(start: Snapshot, end: Snapshot, name: str, **labels: str) -> float | None:
    before, after = start.total(name, **labels), end.total(name, **labels)
    return None if before is None or after is None or after < before else after - before


def load_cpus() -> list[int]:
    """The CPUs this load generator may run on (its affinity set; every CPU where the platform has none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(psutil.cpu_count() or 1))


@dataclass(frozen=True)
class HostTimes:
    """The load generator's CPUs' times at one instant (``psutil.cpu_times(percpu=True)``, its affinity set's CPUs
    together: the CPUs it competes for, with the server where they share a host)."""

    busy_s: float
    total_s: float
    cpus: int

    @classmethod
    def now(cls) -> HostTimes:
        per_cpu = psutil.cpu_times(percpu=True)
        chosen = [per_cpu[i] for i in load_cpus() if i < len(per_cpu)] or per_cpu
        busy = total = 0.0
        for times in chosen:
            # guest time is already counted in user time on Linux
            cpu_total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
            total += cpu_total
            busy += cpu_total - times.idle - getattr(times, "iowait", 0.0)
        return cls(busy_s=busy, total_s=total, cpus=len(chosen))


def host_side(start: HostTimes, end: HostTimes, shares_server_host: bool = False) -> dict | None:
    """The load generator's CPUs over the interval: their busy share (all together), how many there are, and
    whether the server runs on this host too."""
    total = end.total_s - start.total_s
    if total <= 0:
        return None
    return {"cpu_percent": round(100 * max(end.busy_s - start.busy_s, 0.0) / total, 1), "cpus": end.cpus,
            "shares_server_host": shares_server_host}


def serves_from_this_host(url: str) -> bool:
    """Whether the metrics endpoint at ``url`` is on this host (its host name is a loopback address)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    return bool(host) and is_local_target(f"[{host}]:{port or 0}" if ":" in host else f"{host}:{port or 0}")


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
        self.shares_host = serves_from_this_host(url)
        """The server is on the load generator's host (its metrics endpoint is a loopback address)."""
        self._starts: dict[int, tuple[Snapshot, HostTimes]] = {}

    def window_start(self, index: int) -> None:
        try:
            self._starts[index] = (scrape(self.url, self.timeout_s), HostTimes.now())
        except ScrapeError as error:
            self._warn(index, f"scrape at the window's start failed: {error}")

    def window_end(self, index: int, window_start_ns: int, window_end_ns: int) -> None:
        started = self._starts.pop(index, None)
        if started is None:
            return
        start, host_start = started
        try:
            end = scrape(self.url, self.timeout_s)
        except ScrapeError as error:
            self._warn(index, f"scrape at the window's end failed: {error}")
            return
        block, warnings = server_side(start, end, self.model, self.version, window_start_ns, window_end_ns)
        for warning in warnings:
            self._warn(index, warning)
        if block is not None:
            block["load_host"] = host_side(host_start, HostTimes.now(), self.shares_host)
            self.blocks[index] = block

    def _warn(self, index: int, text: str) -> None:
        logger.warning("step %d: server metrics: %s", index, text)
        self.warnings.append(f"step {index} server metrics: {text}")
