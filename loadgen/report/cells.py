"""How the report's numbers are written in every rendering: units, precision, and the cells that flag a problem."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsbench.loadgen.report.schema import has_open_loop_steps, is_open_loop

DASH = "–"


class Flag(str):
    """A cell that points at a problem (INVALID, UNSTABLE, client-bound): bold in Markdown, highlighted in HTML."""


@dataclass
class TableData:
    """A table as plain strings, rendered the same way in Markdown and HTML."""

    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    """Footnotes printed under the table."""


def ms(latency_us: int | float | None) -> str:
    """Milliseconds with about three significant digits."""
    if latency_us is None:
        return DASH
    value = latency_us / 1000
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def rate(value: float | None) -> str:
    return DASH if value is None else f"{value:,.1f}"


def number(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def percent(share: float | None, digits: int = 1) -> str:
    return DASH if share is None else f"{share * 100:.{digits}f}%"


def signed(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:+,.{digits}f}"


def duration_words(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: how long something takes, for a reader."""
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def load_header(report: dict) -> str:
    """The first column of every step table: what the step varied."""
    return "rate/s" if has_open_loop_steps(report) else "concurrency"


def load_cell(step: dict) -> str:
    return f"{step['target_rate_per_s']:g}" if is_open_loop(step) else str(step["concurrency"])


def reported_latency(step: dict) -> dict | None:
    """The latency a step's tables show: closed loop, its successful requests'; open loop, every scheduled
    arrival's, those never sent or never answered counted as misses (``latency_scheduled_us``)."""
    return step.get("latency_scheduled_us") or step["latency_us"]


def latency_cell(step: dict, name: str) -> str:
    """A percentile (or ``max``) of the step's latency, starred when too few samples back it, ``≥`` when it is a
    lower bound (it falls among arrivals never answered in the window)."""
    latency = reported_latency(step)
    if latency is None:
        return DASH
    mark = "*" if name in step.get("unsupported_percentiles", []) else ""
    at_least = "≥" if name in latency.get("lower_bound", ()) else ""
    return at_least + ms(latency.get(name)) + mark


def stability_cell(step: dict) -> str:
    """``stable (3)`` or a flagged ``UNSTABLE (10)``: the windowed stability verdict and the trials it took."""
    stability = step.get("stability")
    if not stability:
        return DASH
    trials = stability.get("trials")
    suffix = f" ({trials})" if trials is not None else ""
    return f"stable{suffix}" if stability.get("stable") else Flag(f"UNSTABLE{suffix}")


def client_bound(step: dict) -> bool:
    """Whether the load generator, not the server, limited the step (its own check or the open-loop one)."""
    client = step.get("client") or {}
    open_loop = step.get("open_loop") or {}
    return bool(client.get("client_bound") or open_loop.get("client_bound"))


def client_cell(step: dict) -> str:
    client = step.get("client") or {}
    cpu = client.get("cpu_percent")
    cpu_text = f"CPU {cpu:.0f}%" if cpu is not None else ""
    if client_bound(step):
        return Flag(" ".join(["client-bound", cpu_text]).strip())
    return cpu_text or "ok"


def run_verdict(report: dict) -> str:
    """PASS, FAIL, UNSTABLE or INVALID when the report states it; VALID or INVALID in older reports."""
    return str(report.get("verdict") or ("VALID" if report["valid"] else "INVALID"))


def verdict_is_good(verdict: str) -> bool:
    return verdict in ("PASS", "VALID")


def yes_no(value: bool) -> str:
    return "yes" if value else Flag("no")


def payload_mode(payload: dict) -> str:
    """The payload's encoding (``mode`` in newer reports, ``encoding`` before)."""
    return str(payload.get("mode") or payload.get("encoding") or DASH)
