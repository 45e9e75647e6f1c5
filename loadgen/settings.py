"""Run settings, grouped in small frozen objects; each field's help text is the CLI's help text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ipsbench.loadgen.arrivals import ARRIVALS, MAX_RATE_PER_S

# Hard upper bounds, so a typo cannot start an unbounded run.
MAX_CONCURRENCY = 1024
MAX_STEP_DURATION_S = 24 * 3600.0
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
CLOSED_LOOP_SCENARIOS = ("sweep", "offline", "single-stream", "ramp", "spike")
OPEN_LOOP_SCENARIOS = ("rate", "trace")
SEARCH_KINDS = ("rate", "concurrency")


def _help(text: str) -> dict:
    return {"help": text}


def help_for(settings_class: type, name: str) -> str:
    """The help text declared on a settings field (one source for CLI help and docs)."""
    for f in dataclasses.fields(settings_class):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(f"{settings_class.__name__} has no field {name!r}")


@dataclass(frozen=True)
class TargetSettings:
    """Where the load goes, and how the connection is secured."""

    target: str = field(metadata=_help("KServe v2 gRPC endpoint, host:port"))
    model: str = field(metadata=_help("model name on the target"))
    model_version: str = field(default="", metadata=_help("model version; empty means the server's choice"))
    deadline_s: float = field(default=30.0, metadata=_help("deadline of every RPC (e.g. 30s, 500ms)"))
    metrics_url: str = field(default="", metadata=_help(
        "the server's Prometheus endpoint (e.g. http://127.0.0.1:8002/metrics), scraped at each step's window "
        "start and end for batch size, queue/compute time and GPU power; empty: not scraped"
    ))
    tls_ca: str = field(default="", metadata=_help(
        "PEM file of the CA that signed the target's certificate: connect with TLS (verified)"
    ))
    tls_cert: str = field(default="", metadata=_help("PEM client certificate for mutual TLS (with --tls-key)"))
    tls_key: str = field(default="", metadata=_help("PEM private key of the client certificate"))
    headers: tuple[tuple[str, str], ...] = field(default=(), metadata=_help(
        "gRPC metadata KEY=VALUE sent with every RPC (repeatable); values are never written to reports"
    ))

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

    payload: str = field(default="fp32", metadata=_help(
        "request encoding: fp32 (preprocessed tensor), uint8 (resized and cropped RGB), jpeg (encoded bytes, "
        "the server preprocesses); the input's datatype and shape come from the model's metadata"
    ))
    images_per_request: int = field(default=1, metadata=_help("images per request (the request's batch size)"))
    distinct_requests: int = field(default=16, metadata=_help("distinct requests built before the run, sent in rotation"))
    seed: int = field(default=0, metadata=_help("seed of the synthetic images and of the arrival process"))
    images_dir: str = field(default="", metadata=_help(
        "folder of JPEG/PNG images (ImageNet validation layout with synset folders gives labels); "
        "empty: synthetic ImageNet-style photos"
    ))
    cache_dir: str = field(default="", metadata=_help(
        "where synthetic images are cached (default ~/.cache/ipsbench/images/<seed>-<count>)"
    ))
    accuracy_every: int = field(default=0, metadata=_help(
        "accuracy under load, with a labelled --images folder: every Nth request asks for its top 5 classes "
        "(Triton's classification extension) and is checked against the labels; 0: off"
    ))

    def __post_init__(self) -> None:
        if self.payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {', '.join(PAYLOADS)}, got {self.payload!r}")
        if not 1 <= self.images_per_request <= MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"images per request must be in [1, {MAX_IMAGES_PER_REQUEST}]")
        if not 1 <= self.distinct_requests <= MAX_DISTINCT_REQUESTS:
            raise ValueError(f"distinct requests must be in [1, {MAX_DISTINCT_REQUESTS}]")
        if self.accuracy_every < 0:
            raise ValueError("accuracy-every must be 0 (off) or a positive number of requests")
        if self.accuracy_every and not self.images_dir:
            raise ValueError("accuracy under load needs a labelled --images folder")


@dataclass(frozen=True, kw_only=True)
class StepSettings:
    """Timing shared by every stepped scenario: each step warms up, is measured, then drains."""

    window_s: float = field(default=10.0, metadata=_help("measured window per step (e.g. 10s, 2m)"))
    warmup_s: float = field(default=2.0, metadata=_help("warm-up per step, counted but not measured"))
    drain_s: float = field(
        default=10.0, metadata=_help("bound on waiting for in-flight requests after a step or on Ctrl-C")
    )

    def __post_init__(self) -> None:
        if not 0 < self.window_s <= MAX_STEP_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_STEP_DURATION_S:g}] s")
        if not 0 <= self.warmup_s <= MAX_STEP_DURATION_S:
            raise ValueError(f"warm-up must be in [0, {MAX_STEP_DURATION_S:g}] s")
        if not 0 <= self.drain_s <= MAX_DEADLINE_S:
            raise ValueError(f"drain must be in [0, {MAX_DEADLINE_S:g}] s")

    @property
    def step_count(self) -> int:
        raise NotImplementedError

    @property
    def windows_per_step(self) -> int:
        """Upper bound on measured windows per step (stability trials)."""
        return 1


def _check_concurrency(levels: tuple[int, ...]) -> None:
    if not levels:
        raise ValueError("at least one concurrency level is needed")
    for level in levels:
        if not 1 <= level <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in [1, {MAX_CONCURRENCY}], got {level}")


@dataclass(frozen=True, kw_only=True)
class SweepSettings(StepSettings):
    """Closed-loop concurrency sweep: one step per level; each level runs measured windows until the last 3
    agree (images/sec and p99) or the trials run out (perf_analyzer's stability rule)."""

    concurrency: tuple[int, ...] = field(metadata=_help("comma-separated concurrency levels, e.g. 1,2,4"))
    stability: float = field(default=0.10, metadata=_help(
        "the last 3 windows of a level must agree within this fraction of their mean, for images/sec and p99"
    ))
    max_trials: int = field(default=10, metadata=_help(
        "measured windows per level at most before it is marked UNSTABLE (1: a single window, not judged)"
    ))
    phases: tuple[str, ...] = field(default=(), metadata=_help("a name per level (ramp and spike steps)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_concurrency(self.concurrency)
        if not 0 <= self.stability <= 1:
            raise ValueError(f"stability must be in [0, 1], got {self.stability:g}")
        if not 1 <= self.max_trials <= MAX_TRIALS:
            raise ValueError(f"max trials must be in [1, {MAX_TRIALS}], got {self.max_trials}")
        if self.phases and len(self.phases) != len(self.concurrency):
            raise ValueError("one phase name per level")

    @property
    def step_count(self) -> int:
        return len(self.concurrency)

    @property
    def windows_per_step(self) -> int:
        return self.max_trials


def ramp_levels(start: int, end: int, steps: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``steps`` levels from ``start`` to ``end`` (evenly spaced, whole users); the last is the peak."""
    if steps < 2:
        return (end,), ("peak",)
    levels = tuple(round(start + (end - start) * number / (steps - 1)) for number in range(steps))
    return levels, (*["ramp"] * (steps - 1), "peak")


def spike_levels(base: int, spike: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Baseline, spike, then the baseline again to see whether latency recovers."""
    return (base, spike, base), ("baseline", "spike", "recovery")


def _check_rate(rate: float) -> None:
    if not 0 < rate <= MAX_RATE_PER_S:
        raise ValueError(f"rate must be in (0, {MAX_RATE_PER_S:g}] requests/s, got {rate:g}")


@dataclass(frozen=True, kw_only=True)
class RateSettings(StepSettings):
    """Open-loop arrivals at fixed rates: one step per rate; latency from each request's intended send time."""

    rates_per_s: tuple[float, ...] = field(metadata=_help("comma-separated arrival rates in requests/s, e.g. 20,40"))
    arrival: str = field(default="poisson", metadata=_help("arrival process: poisson (MLPerf Server) or constant"))
    max_in_flight: int = field(
        default=256, metadata=_help("cap on requests in flight; an arrival held back by it is sent late")
    )
    interarrivals_s: tuple[float, ...] = field(default=(), metadata=_help(
        "trace: one inter-arrival time in seconds per line, or a CSV column interarrival_s"
    ))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rates_per_s:
            raise ValueError("at least one rate is needed")
        for rate in self.rates_per_s:
            _check_rate(rate)
        if self.arrival not in (*ARRIVALS, "trace"):
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if (self.arrival == "trace") != bool(self.interarrivals_s):
            raise ValueError("a trace run needs its inter-arrival times (and only a trace run has them)")
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max in flight must be in [1, {MAX_IN_FLIGHT}], got {self.max_in_flight}")

    @property
    def step_count(self) -> int:
        return len(self.rates_per_s)


@dataclass(frozen=True, kw_only=True)
class SearchSettings(StepSettings):
    """``slo``: the highest rate (or concurrency) meeting every objective, by bracketing and bisection."""

    search: str = field(default="rate", metadata=_help("what to search: rate (open loop) or concurrency"))
    low: float = field(metadata=_help("lower end of the bracket searched"))
    high: float = field(metadata=_help("upper end of the bracket searched"))
    max_steps: int = field(default=8, metadata=_help("measured steps at most (the bracket's two ends included)"))
    resolution: float = field(default=0.05, metadata=_help(
        "stop bisecting when the bracket is narrower than this fraction of its lower end (concurrency: 1)"
    ))
    arrival: str = field(default="poisson", metadata=_help("arrival process of a rate search"))
    max_in_flight: int = field(default=256, metadata=_help("cap on requests in flight (rate search)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search not in SEARCH_KINDS:
            raise ValueError(f"search must be one of {', '.join(SEARCH_KINDS)}, got {self.search!r}")
        if self.search == "rate":
            _check_rate(self.low)
            _check_rate(self.high)
        else:
            _check_concurrency((int(self.low), int(self.high)))
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError("a concurrency search needs whole numbers for --low and --high")
        if not self.low < self.high:
            raise ValueError(f"--low must be below --high, got {self.low:g} and {self.high:g}")
        if not 2 <= self.max_steps <= MAX_SEARCH_STEPS:
            raise ValueError(f"max steps must be in [2, {MAX_SEARCH_STEPS}], got {self.max_steps}")
        if not 0 < self.resolution < 1:
            raise ValueError(f"resolution must be in (0, 1), got {self.resolution:g}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max in flight must be in [1, {MAX_IN_FLIGHT}], got {self.max_in_flight}")

    @property
    def step_count(self) -> int:
        return self.max_steps


@dataclass(frozen=True)
class ValiditySettings:
    """When a step counts as valid, and the service-level objectives a run is judged against."""

    max_error_rate: float = field(
        default=0.0, metadata=_help("largest share of issued requests that may end in an error (0..1)")
    )
    latency_slo: tuple[str, ...] = field(default=(), metadata=_help(
        "latency objective PERCENTILE=DURATION over successful requests, e.g. p99=100ms (repeatable)"
    ))

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max error rate must be in [0, 1], got {self.max_error_rate:g}")
        from ipsbench.loadgen.slo import parse_objective  # the parser's errors are the settings' errors

        for text in self.latency_slo:
            parse_objective(text)


SCENARIO_SETTINGS: dict[str, type[StepSettings]] = {
    "sweep": SweepSettings, "offline": SweepSettings, "single-stream": SweepSettings, "ramp": SweepSettings,
    "spike": SweepSettings, "rate": RateSettings, "trace": RateSettings, "slo": SearchSettings,
}
"""Each scenario's settings class (the settings travel under the scenario's name)."""
_TUPLE_FIELDS = ("concurrency", "phases", "rates_per_s", "interarrivals_s")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything one run needs: one scenario and its step settings."""

    target: TargetSettings
    workload: WorkloadSettings
    validity: ValiditySettings
    out_dir: Path
    scenario: str
    steps: StepSettings
    processes: int = field(
        default=1, metadata=_help("locust worker processes on this box (1: the load runs in this process)")
    )
    remote_workers: int = field(default=0, metadata=_help(
        "workers from other hosts to wait for (each started as: ipsbench-load worker --master HOST:PORT)"
    ))
    master_bind: str = field(default="", metadata=_help(
        "host:port the master listens on for workers (default 127.0.0.1:5557 with --remote-workers; "
        "0.0.0.0:5557 in a container)"
    ))
    engine_bench: str = field(default="", metadata=_help(
        "JSON written by ipsbench-serve bench --json, copied into the report for the engine vs end-to-end table"
    ))
    request_log: str = field(default="", metadata=_help(
        "CSV file with one row per request that ended: step, outcome, status code, whether measured, times and "
        "the latency exactly as recorded (with --processes or workers: one file per worker, e.g. "
        "requests.worker0.csv, each on its worker's host); empty: none"
    ))

    def __post_init__(self) -> None:
        expected = SCENARIO_SETTINGS.get(self.scenario)
        if expected is None:
            raise ValueError(f"unknown scenario {self.scenario!r}")
        if not isinstance(self.steps, expected):
            raise ValueError(f"scenario {self.scenario} takes {expected.__name__}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be in [1, {MAX_PROCESSES}], got {self.processes}")
        if not 0 <= self.remote_workers <= MAX_PROCESSES:
            raise ValueError(f"remote workers must be in [0, {MAX_PROCESSES}], got {self.remote_workers}")

    @property
    def sweep(self) -> SweepSettings | None:
        return self.steps if isinstance(self.steps, SweepSettings) else None

    @property
    def rate(self) -> RateSettings | None:
        return self.steps if isinstance(self.steps, RateSettings) else None

    @property
    def search(self) -> SearchSettings | None:
        return self.steps if isinstance(self.steps, SearchSettings) else None

    @property
    def open_loop(self) -> bool:
        return self.rate is not None or (self.search is not None and self.search.search == "rate")

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
        data["target"]["headers"] = [list(pair) for pair in self.target.headers]
        data["validity"]["latency_slo"] = list(self.validity.latency_slo)
        return data

    def to_report(self) -> dict:
        """Plain data for the report: header values redacted, a trace's arrivals summarized."""
        data = self.to_dict()
        data["target"] = self.target.redacted()
        scenario = data[self.scenario]
        if scenario.get("interarrivals_s"):
            scenario["interarrivals_s"] = {"count": len(scenario["interarrivals_s"])}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunSettings:
        """Inverse of :meth:`to_dict`."""
        scenario = data["scenario"]
        steps = {key: tuple(value) if key in _TUPLE_FIELDS else value for key, value in data[scenario].items()}
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
            steps=SCENARIO_SETTINGS[scenario](**steps),
            processes=data["processes"],
            remote_workers=data.get("remote_workers", 0),
            master_bind=data.get("master_bind", ""),
            engine_bench=data.get("engine_bench", ""),
            request_log=data.get("request_log", ""),
        )


def _listed(data: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}
