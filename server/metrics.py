"""Prometheus metrics with Triton's names, read from :mod:`ipsbench.server.stats` at scrape time.

One collector declares every family once on an injected ``CollectorRegistry``. Labels come only from loaded model
names and versions. The text is rendered in Prometheus' 0.0.4 text format; Triton's families exactly as Triton
writes them (counters without a ``_total`` suffix, durations in microseconds), so dashboards and clients built for
Triton read them, and ipsbench's own by Prometheus' naming rules (counters end in ``_total``, durations in
seconds). The GPU series come from :mod:`ipsbench.server.telemetry`; every serving process's CPU and event loop
(:mod:`ipsbench.server.loop_monitor`) from :class:`ProcessesCollector`, beside prometheus_client's own
``process_*`` series of the process that serves this endpoint.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ipsbench.server.loop_monitor import LAG_BUCKETS_S, ProcessReadings
from ipsbench.server.stats import FAILURE_REASONS, REQUEST_DURATION_BUCKETS_S, ModelStats, PreprocessStats, ServerStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# (name, help, value of one ModelStats) for Triton's per-model counters.
_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: s.success.ns // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
)
# (name, help, value of one ModelStats) for the server's own work around the queue (no Triton name), in seconds.
_OWN_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], float]], ...] = (
    (
        "ipsbench_pre_queue_duration_seconds_total",
        "Cumulative time answered requests spent in the server before the queue (receipt to enqueued: validation, "
        "preprocessing) in seconds",
        lambda s: s.pre_queue.ns / 1e9,
    ),
    (
        "ipsbench_post_compute_duration_seconds_total",
        "Cumulative time answered requests spent in the server after the compute (batch done to response written) "
        "in seconds",
        lambda s: s.post_compute.ns / 1e9,
    ),
    (
        "ipsbench_execution_compute_duration_seconds_total",
        "Cumulative compute time of the model's executions, once per batch (the instances' busy time) in seconds",
        lambda s: s.execution_compute_ns / 1e9,
    ),
)
_REQUEST_HISTOGRAM = (
    "ipsbench_request_duration_seconds",
    "Answered inference requests by their time in the server, receipt to response written, in seconds",
)
_INSTANCES = ("ipsbench_model_instances", "Engine instances of the model version (instance_group count)")
_FAILURE = ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes")
_PENDING = (
    "nv_inference_pending_request_count",
    "Instantaneous number of pending requests awaiting execution per-model.",
)
_INFLIGHT = (
    "ipsbench_inflight_requests",
    "Requests in the server now per model: being validated or preprocessed, queued, or executing",
)
_INFLIGHT_BYTES = (
    "ipsbench_inflight_request_bytes",
    "Bytes of the inference requests the server holds now (bounded by --max-inflight-mb)",
)
_REFUSED_FOR_BYTES = (
    "ipsbench_requests_refused_for_bytes_total",
    "Inference requests answered RESOURCE_EXHAUSTED because they would exceed --max-inflight-mb",
)
_BATCH = ("ipsbench_batch_size", "Batch sizes executed (samples per engine call)")
_UNKNOWN = (
    "ipsbench_unknown_model_requests_total",
    "Requests naming a model that is not loaded (the name is not recorded)",
)

# (name, help, value of one PreprocessStats) for fronts, models that decode and normalize their inputs in the server.
_PREPROCESS: tuple[tuple[str, str, Callable[[PreprocessStats], float]], ...] = (
    (
        "ipsbench_preprocess_duration_seconds_total",
        "Cumulative duration of input preprocessing (decode, resize, crop, normalize) in seconds",
        lambda p: p.duration_ns / 1e9,
    ),
    ("ipsbench_preprocess_requests_total", "Requests preprocessed successfully", lambda p: p.requests),
    ("ipsbench_preprocess_images_total", "Images preprocessed successfully", lambda p: p.images),
    (
        "ipsbench_preprocess_failures_total",
        "Requests refused by preprocessing (undecodable or oversize images)",
        lambda p: p.failures,
    ),
)
_PREPROCESS_DEVICE = (
    "ipsbench_preprocess_device",
    "Where a front preprocesses its inputs: 1 for its device (cpu or gpu), per model version",
)


class ServerCollector(Collector):
    """Reads the statistics of every loaded model version at scrape time."""

    def __init__(self, models: Callable[[], Iterable[ModelStats]], server: ServerStats) -> None:
        self._models = models
        self._server = server

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self._models()))

    def _families(self, models: list[ModelStats]) -> Iterator[Metric]:
        for name, help_text, value in _COUNTERS:
            family = Metric(name, help_text, "counter")
            for stats in models:
                family.add_sample(name, _labels(stats), value(stats))
            yield family
        for name, help_text, value in _OWN_COUNTERS:
            family = Metric(name, help_text, "counter")
            for stats in models:
                family.add_sample(name, _labels(stats), value(stats))
            yield family
        histogram = HistogramMetricFamily(*_REQUEST_HISTOGRAM, labels=["model", "version"])
        for stats in models:
            histogram.add_metric([stats.name, str(stats.version)],
                                 _buckets(REQUEST_DURATION_BUCKETS_S, stats.request_buckets), stats.request_seconds)
        yield histogram
        instances = Metric(*_INSTANCES, "gauge")
        for stats in models:
            instances.add_sample(_INSTANCES[0], _labels(stats), stats.instances)
        yield instances
        failure = Metric(*_FAILURE, "counter")
        for stats in models:
            for reason in FAILURE_REASONS:
                failure.add_sample(_FAILURE[0], {**_labels(stats), "reason": reason}, stats.failures[reason].count)
        yield failure
        pending = Metric(*_PENDING, "gauge")
        for stats in models:
            pending.add_sample(_PENDING[0], _labels(stats), stats.pending_count)
        yield pending
        inflight = Metric(*_INFLIGHT, "gauge")
        for stats in models:
            inflight.add_sample(_INFLIGHT[0], _labels(stats), stats.inflight)
        yield inflight
        batch = HistogramMetricFamily(*_BATCH, labels=["model", "version"])
        for stats in models:
            sizes = sorted((size, b.compute_infer.count) for size, b in list(stats.batches.items()))
            buckets = [(floatToGoString(le), sum(n for size, n in sizes if size <= le)) for le in BATCH_SIZE_BUCKETS]
            buckets.append(("+Inf", sum(n for _, n in sizes)))
            batch.add_metric([stats.name, str(stats.version)], buckets, sum(size * n for size, n in sizes))
        yield batch
        fronts = [stats for stats in models if stats.preprocess is not None]
        for name, help_text, value in _PREPROCESS:
            family = Metric(name, help_text, "counter")
            for stats in fronts:
                family.add_sample(name, _labels(stats), value(stats.preprocess))
            yield family
        device = Metric(*_PREPROCESS_DEVICE, "gauge")
        for stats in fronts:
            device.add_sample(_PREPROCESS_DEVICE[0], {**_labels(stats), "device": stats.preprocess.device}, 1)
        yield device
        unknown = Metric(*_UNKNOWN, "counter")
        unknown.add_sample(_UNKNOWN[0], {}, self._server.unknown_model_requests)
        inflight_bytes = Metric(*_INFLIGHT_BYTES, "gauge")
        inflight_bytes.add_sample(_INFLIGHT_BYTES[0], {}, self._server.inflight_request_bytes)
        refused = Metric(*_REFUSED_FOR_BYTES, "counter")
        refused.add_sample(_REFUSED_FOR_BYTES[0], {}, self._server.requests_refused_for_bytes)
        yield unknown
        yield inflight_bytes
        yield refused


def _labels(stats: ModelStats) -> dict[str, str]:
    return {"model": stats.name, "version": str(stats.version)}


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs of per-bucket ``counts`` (one more than ``bounds``: the +Inf bucket)."""
    cumulative, running = [], 0
    for le, count in zip([*map(floatToGoString, bounds), "+Inf"], counts):
        running += count
        cumulative.append((le, running))
    return cumulative


_PROCESS_CPU = (
    "ipsbench_process_cpu_seconds_total",
    "CPU time of each serving process (role: server, engine or frontend; index: the front end's) in seconds",
)
_LOOP_CPU = (
    "ipsbench_event_loop_cpu_seconds_total",
    "CPU time of each serving process's event-loop thread in seconds (1 s per s: the loop has a core to itself)",
)
_PROCESS_CPUS = ("ipsbench_process_cpus", "CPUs each serving process may run on (its affinity set)")
_LOOP_LAG = (
    "ipsbench_event_loop_lag_seconds",
    "How late each serving process's event loop ran a timer due every 50 ms, in seconds",
)


class ProcessesCollector(Collector):
    """Every serving process's CPU and event loop: ``processes()`` gives (role, index, readings) for each."""

    def __init__(self, processes: Callable[[], Iterable[tuple[str, str, ProcessReadings]]]) -> None:
        self._processes = processes

    def collect(self) -> Iterator[Metric]:
        processes = list(self._processes())
        cpu, loop_cpu = Metric(*_PROCESS_CPU, "counter"), Metric(*_LOOP_CPU, "counter")
        cpus = Metric(*_PROCESS_CPUS, "gauge")
        lag = HistogramMetricFamily(*_LOOP_LAG, labels=["role", "index"])
        for role, index, readings in processes:
            labels = {"role": role, "index": index}
            cpu.add_sample(_PROCESS_CPU[0], labels, readings.process_cpu_s)
            loop_cpu.add_sample(_LOOP_CPU[0], labels, readings.loop_cpu_s)
            cpus.add_sample(_PROCESS_CPUS[0], labels, readings.cpus)
            lag.add_metric([role, index], _buckets(LAG_BUCKETS_S, readings.lag_buckets), readings.lag_s)
        yield cpu
        yield loop_cpu
        yield cpus
        yield lag


def register_process_metrics(registry: CollectorRegistry,
                             processes: Callable[[], Iterable[tuple[str, str, ProcessReadings]]]) -> None:
    """prometheus_client's ``process_*`` series of this process (``process_cpu_seconds_total``: every thread,
    the engine's included) and :class:`ProcessesCollector` on ``registry``."""
    ProcessCollector(registry=registry)
    registry.register(ProcessesCollector(processes))


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4, names exactly as collected."""
    lines: list[str] = []
    for family in registry.collect():
        kind = "untyped" if family.type == "unknown" else family.type
        lines.append(f"# HELP {family.name} {_escape(family.documentation, help_text=True)}")
        lines.append(f"# TYPE {family.name} {kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(
                f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}"
                if labels
                else f"{sample.name} {floatToGoString(sample.value)}"
            )
    return ("\n".join(lines) + "\n").encode()


def _escape(text: str, help_text: bool = False) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text if help_text else text.replace('"', '\\"')


class MetricsServer:
    """``GET /metrics`` on its own port, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        handler = type("MetricsHandler", (_Handler,), {"registry": registry})
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._httpd = server_class((host.strip("[]"), port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] not in ("/metrics", "/metrics/"):
            self.send_error(404, "only /metrics is served here")
            return
        body = render(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics: " + format, *args)
