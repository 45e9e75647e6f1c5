"""Run settings, grouped in small frozen objects; each field is also its command-line option
(:mod:`ipsbench.server.flags`): the help text, default and parser are declared here once.

A scenario's own step settings subclass :class:`StepSettings` in the scenario's module
(:mod:`ipsbench.loadgen.scenarios`); every subclass is registered by name as it is defined, so settings sent to a
worker as plain data come back as the same class.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ipsbench.loadgen.arrivals import ARRIVALS, MAX_RATE_PER_S
from ipsbench.loadgen.slo import DEFAULT_PERCENTILE, MIN_SAMPLES, SAMPLE_RULES, parse_objective, with_percentile
from ipsbench.server.flags import duration, option

# Hard upper bounds, so a typo cannot start an unbounded run.
MAX_CONCURRENCY = 1024
MAX_STEP_DURATION_S = 24 * 3600.0
DEFAULT_MAX_WINDOW_S = 600.0
"""How long a step's window may grow to hold its objectives' samples unless --max-duration says: MLPerf's minimum
run length."""
MAX_IMAGES_PER_REQUEST = 1024
MAX_DISTINCT_REQUESTS = 4096
MAX_DEADLINE_S = 3600.0
MAX_IN_FLIGHT = 16_384
MAX_PROCESSES = 64
MAX_TRIALS = 100
MAX_SEARCH_STEPS = 32
MAX_TRACE_ARRIVALS = 1_000_000
MAX_HEADERS = 32

PAYLOADS = ("fp32", "uint8", "jpeg")
"""Payload encodings: fp32 and uint8 are preprocessed by the client, jpeg by the server."""
SHARED_MEMORY_KINDS = ("none", "system")
"""How tensors travel: in the gRPC messages (none), or through system shared memory on this host."""


def header(text: str) -> tuple[str, str]:
    """``--header KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().lower(), value


def host_port(text: str) -> str:
    """``HOST:PORT``, checked (empty: not given; argparse passes string defaults through the parser too)."""
    if not text:
        return text
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return text


def latency_objective(text: str) -> str:
    """``--latency-slo p99=100ms`` (or a bare ``100ms``, at ``--percentile``), checked."""
    try:
        parse_objective(with_percentile(text, DEFAULT_PERCENTILE))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


@dataclass(frozen=True)
class TargetSettings:
    """Where the load goes, and how the connection is secured."""

    target: str = option(help="KServe v2 gRPC endpoint, host:port")
    model: str = option(help="model name on the target")
    model_version: str = option("", "model version; empty means the server's choice")
    deadline_s: float = option(30.0, "deadline of every RPC (e.g. 30s, 500ms)", flag="--deadline", parse=duration)
    metrics_url: str = option("", (
        "the server's Prometheus endpoint (e.g. http://127.0.0.1:8002/metrics), scraped at each step's window "
        "start and end for batch size, queue/compute time and GPU power; empty: not scraped"
    ))
    tls_ca: str = option("", "PEM file of the CA that signed the target's certificate: connect with TLS (verified)",
                         metavar="FILE")
    tls_cert: str = option("", "PEM client certificate for mutual TLS (with --tls-key)", metavar="FILE")
    tls_key: str = option("", "PEM private key of the client certificate", metavar="FILE")
    headers: tuple[tuple[str, str], ...] = option(
        (), "gRPC metadata KEY=VALUE sent with every RPC (repeatable); values are never written to reports",
        flag="--header", parse=header, repeat=True, metavar="KEY=VALUE",
    )

    def __post_init__(self) -> None:
        if not self.target or ":" not in self.target:
            raise ValueError(f"target must be host:port, got {self.target!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        if not 0 < self.deadline_s <= MAX_DEADLINE_S:
            raise ValueError(f"deadline must be in (0, {MAX_DEADLINE_S:g}] s, got {self.deadline_s:g} s")
        if self.metrics_url and not self.metrics_url.startswith(("http://", "https://")):
            raise ValueError(f"metrics URL must start with http:// or https://, got {self.metrics_url!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if len(self.headers) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        for key, _ in self.headers:
            if not key or key != key.lower() or not all(c.isalnum() or c in "-_." for c in key):
                raise ValueError(f"header key {key!r} must be lower-case letters, digits, '-', '_' or '.'")
        object.__setattr__(self, "headers", tuple(tuple(pair) for pair in self.headers))

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def redacted(self) -> dict:
        """Plain data for reports: header values hidden (they may be credentials)."""
        data = dataclasses.asdict(self)
        data["headers"] = [[key, "<redacted>"] for key, _ in self.headers]
        return data


@dataclass(frozen=True)
class WorkloadSettings:
    """What each request carries."""

    payload: str = option("fp32", (
        "request encoding: fp32 (preprocessed tensor), uint8 (resized and cropped RGB), jpeg (encoded bytes, "
        "the server preprocesses); the input's datatype and shape come from the model's metadata, the "
        "preprocessing from its config where it states one"
    ), choices=PAYLOADS)
    images_per_request: int = option(1, "images per request (the request's batch size)")
    distinct_requests: int = option(16, "distinct requests built before the run, sent in rotation")
    seed: int = option(0, "seed of the synthetic images and of the arrival process")
    images_dir: str = option("", (
        "folder of JPEG/PNG images (ImageNet validation layout with synset folders gives labels); "
        "empty: synthetic ImageNet-style photos"
    ), flag="--images", metavar="DIR")
    strict_images: bool = option(False, (
        "refuse the run when an --images file does not decode (truncated, not an image, over the decode limits) "
        "instead of skipping it with a warning"
    ))
    cache_dir: str = option("", "where synthetic images are cached (default ~/.cache/ipsbench/images/<seed>-<count>)")
    accuracy_every: int = option(0, (
        "accuracy under load, with a labelled --images folder: every Nth request asks for its top 5 classes "
        "(Triton's classification extension) and is checked against the labels; 0: off"
    ), metavar="N")
    shared_memory: str = option("none", (
        "system: tensors travel through POSIX shared memory instead of the gRPC messages (Triton's shared-memory "
        "extension; the target must be on this host): each distinct request's input is written once into a region "
        "registered with the target, outputs come back into regions; the regions are unregistered and removed at "
        "the end. none: in the messages"
    ), choices=SHARED_MEMORY_KINDS)

    def __post_init__(self) -> None:
        if self.shared_memory not in SHARED_MEMORY_KINDS:
            kinds = ", ".join(SHARED_MEMORY_KINDS)
            raise ValueError(f"shared memory must be one of {kinds}, got {self.shared_memory!r}")
        if self.payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {', '.join(PAYLOADS)}, got {self.payload!r}")
        if not 1 <= self.images_per_request <= MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"images per request must be in [1, {MAX_IMAGES_PER_REQUEST}]")
        if not 1 <= self.distinct_requests <= MAX_DISTINCT_REQUESTS:
            raise ValueError(f"distinct requests must be in [1, {MAX_DISTINCT_REQUESTS}]")
        if self.accuracy_every < 0:
            raise ValueError("accuracy-every must be 0 (off) or a positive number of requests")
        if self.strict_images and not self.images_dir:
            raise ValueError("--strict-images checks an --images folder; none was given")
        if self.accuracy_every and not self.images_dir:
            raise ValueError("accuracy under load needs a labelled --images folder")


@dataclass(frozen=True, kw_only=True)
class StepSettings:
    """Timing shared by every stepped scenario: each step warms up, is measured, then drains. A scenario's
    settings subclass this in the scenario's module."""

    registered: ClassVar[dict[str, type[StepSettings]]] = {}
    """Every subclass by its name, for :meth:`RunSettings.from_dict`."""

    window_s: float = option(10.0, "measured window per step (e.g. 10s, 2m)", flag="--duration", parse=duration)
    warmup_s: float = option(2.0, "warm-up per step, counted but not measured", flag="--warmup", parse=duration)
    drain_s: float = option(10.0, "bound on waiting for in-flight requests after a step or on Ctrl-C",
                            flag="--drain", parse=duration)
    max_window_s: float = option(0.0, (
        "longest a step's measured window may grow past --duration to hold the samples its --latency-slo "
        f"objectives need (0: the larger of --duration and {DEFAULT_MAX_WINDOW_S:g} s; equal to --duration: "
        "never grow)"
    ), flag="--max-duration", parse=duration)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        StepSettings.registered[cls.__name__] = cls

    def __post_init__(self) -> None:
        if not 0 < self.window_s <= MAX_STEP_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_STEP_DURATION_S:g}] s")
        if not 0 <= self.warmup_s <= MAX_STEP_DURATION_S:
            raise ValueError(f"warm-up must be in [0, {MAX_STEP_DURATION_S:g}] s")
        if not 0 <= self.drain_s <= MAX_DEADLINE_S:
            raise ValueError(f"drain must be in [0, {MAX_DEADLINE_S:g}] s")
        if self.max_window_s and not self.window_s <= self.max_window_s <= MAX_STEP_DURATION_S:
            raise ValueError(f"max duration must be in [--duration, {MAX_STEP_DURATION_S:g}] s, "
                             f"got {self.max_window_s:g} s")

    @property
    def longest_window_s(self) -> float:
        """The longest a step's measured window may grow to hold its objectives' samples."""
        return self.max_window_s or max(self.window_s, DEFAULT_MAX_WINDOW_S)

    @property
    def open_loop(self) -> bool:
        """Whether requests go out at the intended times of an arrival process (latency from those times)."""
        return False

    @property
    def step_count(self) -> int:
        raise NotImplementedError

    @property
    def windows_per_step(self) -> int:
        """Upper bound on measured windows per step (stability trials)."""
        return 1


@dataclass(frozen=True, kw_only=True)
class OpenLoopSettings(StepSettings):
    """Timing and arrivals of a scenario whose requests go out on an arrival process's schedule."""

    arrival: str = option("poisson", "arrival process: poisson (MLPerf Server) or constant", choices=tuple(ARRIVALS))
    max_in_flight: int = option(256, (
        "cap on requests in flight; an arrival that finds it reached is not sent (counted, and in the latency as a "
        "miss: the server is saturated)"
    ))
    interarrivals_s: tuple[float, ...] = option((), "a trace's recorded inter-arrival times, in seconds", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arrival not in (*ARRIVALS, "trace"):
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if (self.arrival == "trace") != bool(self.interarrivals_s):
            raise ValueError("a trace run needs its inter-arrival times (and only a trace run has them)")
        check_in_flight(self.max_in_flight)

    @property
    def open_loop(self) -> bool:
        return True


def check_concurrency(levels: tuple[int, ...]) -> None:
    if not levels:
        raise ValueError("at least one concurrency level is needed")
    for level in levels:
        if not 1 <= level <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in [1, {MAX_CONCURRENCY}], got {level}")


def check_in_flight(max_in_flight: int) -> None:
    if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
        raise ValueError(f"max in flight must be in [1, {MAX_IN_FLIGHT}], got {max_in_flight}")


@dataclass(frozen=True)
class ValiditySettings:
    """When a step counts as valid, and the service-level objectives a run is judged against."""

    max_error_rate: float = option(0.0, "largest share of issued requests that may end in an error (0..1)")
    latency_slo: tuple[str, ...] = option(
        (), (
            "latency objective PERCENTILE=DURATION over successful requests, e.g. p99=100ms, or a bare DURATION "
            "judged at --percentile (repeatable)"
        ), parse=latency_objective, repeat=True, metavar="pNN=DURATION",
    )
    percentile: float = option(DEFAULT_PERCENTILE, (
        "the percentile a bare --latency-slo DURATION is judged at, so the verdict and the slo search use it "
        "(perf_analyzer's --percentile)"
    ))
    sample_rule: str = option(MIN_SAMPLES, (
        "when a step holds enough samples to judge a percentile: min-samples (100/(1-p), e.g. 10,000 for p99) or "
        "early-stopping (a binomial test at 99% confidence, as MLPerf LoadGen's early stopping: a few hundred "
        "when far from the target); each step's window grows until it does, up to --max-duration"
    ), choices=SAMPLE_RULES)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max error rate must be in [0, 1], got {self.max_error_rate:g}")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile:g}")
        if self.sample_rule not in SAMPLE_RULES:
            raise ValueError(f"sample rule must be one of {', '.join(SAMPLE_RULES)}, got {self.sample_rule!r}")
        objectives = tuple(with_percentile(text, self.percentile) for text in self.latency_slo)
        for text in objectives:
            parse_objective(text)  # the parser's errors are the settings' errors
        object.__setattr__(self, "latency_slo", objectives)


UI_SCENARIO = "ui"
"""The report's scenario name of an ``ipsbench-load ui`` run."""


@dataclass(frozen=True, kw_only=True)
class UiLoopSettings(OpenLoopSettings):
    """What a test started in ``ipsbench-load ui`` runs: a closed loop over the form's users, or with ``--rate``
    open-loop arrivals at that rate (latency from each request's intended send time), split evenly among the
    form's users, whose requests in flight together stay within ``--max-in-flight``. Each test is one step,
    measured from its start (no warm-up) until it is stopped in the UI, for at most a day."""

    rate_per_s: float = option(0.0, (
        "open loop: each test the UI starts sends at this arrival rate in requests/s (the form's users share it; "
        "the UI's custom parameter 'rate' changes it per test); 0: closed loop, the form's users"
    ), flag="--rate")
    window_s: float = option(MAX_STEP_DURATION_S, "a test's measured window at most (stopped in the UI before)",
                             cli=False)
    warmup_s: float = option(0.0, "no warm-up: a test is measured from its start", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ui_rate(self.rate_per_s, allow_closed=True)

    @property
    def open_loop(self) -> bool:
        return self.rate_per_s > 0

    @property
    def step_count(self) -> int:
        return 1


def check_ui_rate(rate_per_s: float, allow_closed: bool = False) -> None:
    """A UI test's arrival rate: in (0, MAX_RATE_PER_S] requests/s (or 0, closed loop, where ``allow_closed``)."""
    if allow_closed and rate_per_s == 0:
        return
    if not 0 < rate_per_s <= MAX_RATE_PER_S:  # false for nan too
        raise ValueError(f"rate must be in (0, {MAX_RATE_PER_S:g}] requests/s, got {rate_per_s:g}")


@dataclass(frozen=True)
class UiSettings:
    """Where ``ipsbench-load ui`` serves locust's web UI."""

    web_host: str = option("127.0.0.1", "address of the web UI")
    web_port: int = option(8089, "port of the web UI")

    def __post_init__(self) -> None:
        if not 0 <= self.web_port <= 65535:
            raise ValueError(f"web port must be in 0..65535, got {self.web_port}")


def default_out_dir() -> Path:
    return Path("reports") / time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything one run needs: one scenario and its step settings."""

    target: TargetSettings = option(cli=False)
    workload: WorkloadSettings = option(cli=False)
    validity: ValiditySettings = option(cli=False)
    scenario: str = option(cli=False)
    steps: StepSettings = option(cli=False)
    out_dir: Path = option(None, "report folder (default: reports/<timestamp>)", flag="--out", parse=Path)
    processes: int = option(1, "locust worker processes on this box (1: the load runs in this process)")
    remote_workers: int = option(0, (
        "workers from other hosts to wait for (each started as: ipsbench-load worker --master HOST:PORT)"
    ), metavar="N")
    master_bind: str = option("", (
        "host:port the master listens on for workers (default 127.0.0.1:5557 with --remote-workers; "
        "0.0.0.0:5557 in a container)"
    ), parse=host_port, metavar="HOST:PORT")
    engine_bench: str = option("", (
        "JSON written by ipsbench-serve bench --json, copied into the report for the engine vs end-to-end table"
    ), metavar="FILE")
    request_log: str = option("", (
        "CSV file with one row per request that ended: step, outcome, status code, whether measured, times and "
        "the latency exactly as recorded (with --processes or workers: one file per worker, e.g. "
        "requests.worker0.csv, each on its worker's host); empty: none"
    ), metavar="PATH")

    def __post_init__(self) -> None:
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be in [1, {MAX_PROCESSES}], got {self.processes}")
        if not 0 <= self.remote_workers <= MAX_PROCESSES:
            raise ValueError(f"remote workers must be in [0, {MAX_PROCESSES}], got {self.remote_workers}")
        if self.remote_workers and self.workload.shared_memory != "none":
            raise ValueError("--shared-memory needs the load on the target's host: not with --remote-workers")
        object.__setattr__(self, "out_dir", Path(self.out_dir) if self.out_dir is not None else default_out_dir())

    @property
    def open_loop(self) -> bool:
        return self.steps.open_loop

    @property
    def distributed(self) -> bool:
        return self.processes > 1 or self.remote_workers > 0

    @property
    def worker_count(self) -> int:
        """Workers the master waits for: those it starts on this box and those from other hosts."""
        return (self.processes if self.processes > 1 else 0) + self.remote_workers

    def to_dict(self) -> dict:
        """Plain data for workers (durations in seconds, paths as strings)."""
        data = dataclasses.asdict(self)
        data["out_dir"] = str(self.out_dir)
        data[self.scenario] = _listed(data.pop("steps"))
        data["steps_settings"] = type(self.steps).__name__
        data["target"]["headers"] = [list(pair) for pair in self.target.headers]
        data["validity"]["latency_slo"] = list(self.validity.latency_slo)
        return data

    def to_report(self) -> dict:
        """Plain data for the report: header values redacted, a trace's arrivals summarized."""
        data = self.to_dict()
        del data["steps_settings"]
        data["target"] = self.target.redacted()
        scenario = data[self.scenario]
        if scenario.get("interarrivals_s"):
            scenario["interarrivals_s"] = {"count": len(scenario["interarrivals_s"])}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunSettings:
        """Inverse of :meth:`to_dict` (the scenario's module must be imported: its settings class registers)."""
        scenario = data["scenario"]
        steps_class = StepSettings.registered[data["steps_settings"]]
        tuples = {f.name for f in dataclasses.fields(steps_class) if str(f.type).startswith("tuple")}
        steps = {key: tuple(value) if key in tuples else value for key, value in data[scenario].items()}
        target = dict(data["target"])
        target["headers"] = tuple(tuple(pair) for pair in target.get("headers", ()))
        validity = dict(data["validity"])
        validity["latency_slo"] = tuple(validity.get("latency_slo", ()))
        return cls(
            target=TargetSettings(**target),
            workload=WorkloadSettings(**data["workload"]),
            validity=ValiditySettings(**validity),
            out_dir=Path(data["out_dir"]),
            scenario=scenario,
            steps=steps_class(**steps),
            processes=data["processes"],
            remote_workers=data.get("remote_workers", 0),
            master_bind=data.get("master_bind", ""),
            engine_bench=data.get("engine_bench", ""),
            request_log=data.get("request_log", ""),
        )


def _listed(data: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}
