"""Run settings, grouped in small frozen objects; each field's help text is the CLI's help text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from loadgen.arrivals import ARRIVALS, MAX_RATE_PER_S

# Hard upper bounds, so a typo cannot start an unbounded run.
MAX_CONCURRENCY = 1024
MAX_STEP_DURATION_S = 24 * 3600.0
MAX_IMAGES_PER_REQUEST = 1024
MAX_DISTINCT_REQUESTS = 4096
MAX_DEADLINE_S = 3600.0
MAX_IN_FLIGHT = 16_384
MAX_PROCESSES = 64

PAYLOADS = ("fp32",)
"""Payload encodings the load generator can send (``jpeg`` and ``uint8`` come later)."""


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
    """Where the load goes."""

    target: str = field(metadata=_help("KServe v2 gRPC endpoint, host:port"))
    model: str = field(metadata=_help("model name on the target"))
    model_version: str = field(default="", metadata=_help("model version; empty means the server's choice"))
    deadline_s: float = field(default=30.0, metadata=_help("deadline of every RPC (e.g. 30s, 500ms)"))
    metrics_url: str = field(default="", metadata=_help(
        "the server's Prometheus endpoint (e.g. http://127.0.0.1:8002/metrics), scraped at each step's window "
        "start and end for batch size, queue/compute time and GPU power; empty: not scraped"
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


@dataclass(frozen=True)
class WorkloadSettings:
    """What each request carries."""

    payload: str = field(default="fp32", metadata=_help("request encoding: fp32 (preprocessed NCHW tensor)"))
    images_per_request: int = field(default=1, metadata=_help("images per request (the request's batch size)"))
    distinct_requests: int = field(default=16, metadata=_help("distinct requests built before the run, sent in rotation"))
    seed: int = field(default=0, metadata=_help("seed of the synthetic images and of the arrival process"))

    def __post_init__(self) -> None:
        if self.payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {', '.join(PAYLOADS)}, got {self.payload!r}")
        if not 1 <= self.images_per_request <= MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"images per request must be in [1, {MAX_IMAGES_PER_REQUEST}]")
        if not 1 <= self.distinct_requests <= MAX_DISTINCT_REQUESTS:
            raise ValueError(f"distinct requests must be in [1, {MAX_DISTINCT_REQUESTS}]")


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


@dataclass(frozen=True, kw_only=True)
class SweepSettings(StepSettings):
    """Closed-loop concurrency sweep: one step per level, warm-up then a measured window."""

    concurrency: tuple[int, ...] = field(metadata=_help("comma-separated concurrency levels, e.g. 1,2,4"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.concurrency:
            raise ValueError("at least one concurrency level is needed")
        for level in self.concurrency:
            if not 1 <= level <= MAX_CONCURRENCY:
                raise ValueError(f"concurrency must be in [1, {MAX_CONCURRENCY}], got {level}")

    @property
    def step_count(self) -> int:
        return len(self.concurrency)


@dataclass(frozen=True, kw_only=True)
class RateSettings(StepSettings):
    """Open-loop arrivals at fixed rates: one step per rate; latency from each request's intended send time."""

    rates_per_s: tuple[float, ...] = field(metadata=_help("comma-separated arrival rates in requests/s, e.g. 20,40"))
    arrival: str = field(default="poisson", metadata=_help("arrival process: poisson (MLPerf Server) or constant"))
    max_in_flight: int = field(
        default=256, metadata=_help("cap on requests in flight; an arrival held back by it is sent late")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rates_per_s:
            raise ValueError("at least one rate is needed")
        for rate in self.rates_per_s:
            if not 0 < rate <= MAX_RATE_PER_S:
                raise ValueError(f"rate must be in (0, {MAX_RATE_PER_S:g}] requests/s, got {rate:g}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max in flight must be in [1, {MAX_IN_FLIGHT}], got {self.max_in_flight}")

    @property
    def step_count(self) -> int:
        return len(self.rates_per_s)


@dataclass(frozen=True)
class ValiditySettings:
    """When a step counts as valid."""

    max_error_rate: float = field(
        default=0.0, metadata=_help("largest share of issued requests that may end in an error (0..1)")
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max error rate must be in [0, 1], got {self.max_error_rate:g}")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything one run needs: exactly one scenario (``sweep`` or ``rate``)."""

    target: TargetSettings
    workload: WorkloadSettings
    validity: ValiditySettings
    out_dir: Path
    sweep: SweepSettings | None = None
    rate: RateSettings | None = None
    processes: int = field(
        default=1, metadata=_help("locust worker processes on this box (1: the load runs in this process)")
    )

    def __post_init__(self) -> None:
        if (self.sweep is None) == (self.rate is None):
            raise ValueError("a run has exactly one scenario: sweep or rate")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be in [1, {MAX_PROCESSES}], got {self.processes}")

    @property
    def scenario(self) -> str:
        return "sweep" if self.sweep is not None else "rate"

    @property
    def steps(self) -> StepSettings:
        """The scenario's settings."""
        return self.sweep if self.sweep is not None else self.rate

    def to_dict(self) -> dict:
        """Plain-data form for the report and for workers (durations in seconds, paths as strings)."""
        data = dataclasses.asdict(self)
        data["out_dir"] = str(self.out_dir)
        for scenario in ("sweep", "rate"):
            if data[scenario] is None:
                del data[scenario]
        if self.sweep is not None:
            data["sweep"]["concurrency"] = list(self.sweep.concurrency)
        if self.rate is not None:
            data["rate"]["rates_per_s"] = list(self.rate.rates_per_s)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunSettings:
        """Inverse of :meth:`to_dict`."""
        sweep, rate = data.get("sweep"), data.get("rate")
        return cls(
            target=TargetSettings(**data["target"]),
            workload=WorkloadSettings(**data["workload"]),
            validity=ValiditySettings(**data["validity"]),
            out_dir=Path(data["out_dir"]),
            sweep=None if sweep is None else SweepSettings(**{**sweep, "concurrency": tuple(sweep["concurrency"])}),
            rate=None if rate is None else RateSettings(**{**rate, "rates_per_s": tuple(rate["rates_per_s"])}),
            processes=data["processes"],
        )
