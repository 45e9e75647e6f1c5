"""The report document of one run, built section by section from its steps and what the run knows about itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ipsbench.loadgen.outcomes import IDENTITY
from ipsbench.loadgen.recorder import LATE_TOLERANCE_US, StepRecord
from ipsbench.loadgen.report.schema import (
    COUNT_FIELDS,
    INCOMPLETE,
    PERCENTILES,
    SCHEMA_VERSION,
    is_open_loop,
    step_load,
)
from ipsbench.loadgen.report.steps import (
    CLIENT_BOUND_SHARE,
    CLIENT_CPU_BOUND_PERCENT,
    SERVER_SATURATED,
    bottleneck_entry,
    step_entry,
)
from ipsbench.loadgen.slo import MIN_SAMPLES, LatencyObjective, min_samples, worst
from ipsbench.loadgen.stability import DEFAULT_STABILITY_METRICS
from ipsbench.loadgen.trials import STABLE_WINDOWS

HEADLINE_PERCENTILES = {"single-stream": "p90"}
"""Scenarios whose figure is one latency percentile of successful requests: MLPerf SingleStream reports the 90th."""
LATENCY_METHOD = (
    "HDR histogram (1 us to 60 s, 3 significant digits, error <= 0.1%), microseconds, monotonic clock, "
    "over requests that completed inside the measured window"
)
OPEN_LOOP_LATENCY_METHOD = (
    "latency from each request's intended send time (the arrival process's schedule, so a stalled server "
    "or a held-back send shows in the latency), over requests intended inside the measured window; "
    "service time separately, from the actual send"
)
THROUGHPUT_METHOD = "images of successful requests completed inside the measured window / window length"
SERVER_METHOD = (
    "the server's Prometheus counters (Triton's names) differenced between a scrape just before the measured "
    "window opens and one just after it ends, so they cover slightly more than the window; per request: "
    "duration counters / successful requests; average batch size: inferences / executions; GPU: utilization "
    "and power averaged over the two scrapes, energy from the energy counter, images per joule from the "
    "server's inference count over the same interval; ipsbench-serve's front end (before the queue and after "
    "the compute) per answered request, its request time's p50/p99 interpolated within its histogram's buckets, "
    "the engine's busy share (execution compute time / interval / instances), each serving process's CPU and "
    "event-loop lag; the load generator's CPUs (its affinity set, psutil) at the same two instants. Each step's "
    "bottleneck is the first saturated of: engine (busy or GPU utilization >= 90%), the load generator "
    "(client-bound), a host the server shares with it (its CPUs >= 90% busy), the server's front end (an event "
    "loop >= 85% of a core, or a serving process >= 90% of the CPUs it may run on), the load generator's CPUs "
    "(>= 90% busy), else none"
)
STABILITY_METHOD = (
    f"each level runs measured windows back to back until the last {STABLE_WINDOWS} agree within the tolerance "
    f"of their mean on each stability metric (images/sec and p50 unless --stability-metric says; a percentile "
    f"only when each window holds the samples it needs, 100/(1-p)) (at most max_trials windows, else UNSTABLE); "
    f"the step's figures are those {STABLE_WINDOWS} windows' histograms together"
)
CLIENT_METHOD = (
    "the load generator's own CPU time (all threads of each load-generating process) over the time it issued "
    f"into the step, warm-up included; client-bound at {CLIENT_CPU_BOUND_PERCENT:g}% of a core or more, or "
    f"when an open-loop step sent below {CLIENT_BOUND_SHARE:.0%} of its scheduled arrivals (those the in-flight cap "
    "held back not counted)"
)
SLO_METHOD = (
    "a latency objective is met when the percentile of successful requests' latency in the measured window is "
    "at most its target and the window holds at least 100 / (1 - p) samples; the error-rate objective over all "
    "requests the step issued"
)

PARTIAL_REASON = (
    "a partial report, rewritten every few seconds while the run goes on: the run had not ended when it was written "
    "(if it is still here, the run was killed), so it states no verdict"
)


@dataclass(frozen=True)
class RunFacts:
    """What a run knows about itself beside its steps, as the report states it."""

    settings: dict
    target: dict
    model: dict
    payload: dict
    scenario: str
    started_at: str
    duration_s: float
    interrupted_by: str | None
    max_error_rate: float
    workers: list[dict] = field(default_factory=list)
    """A distributed run's workers, as the master describes them."""
    unix_s: Callable[[int], float] | None = None
    """Wall-clock time of a reading of the run's monotonic clock."""
    server: dict | None = None
    """The scraped server metrics (``metrics_url``, ``steps`` by step index, ``warnings``), if any."""
    objectives: Sequence[LatencyObjective] | None = None
    """The run's latency SLO (an error-rate objective is added); None and no ``search``: no SLO."""
    search: dict | None = None
    """The ``slo`` search as :meth:`ipsbench.loadgen.slo.Search.describe` gives it."""
    tolerance: float | None = None
    """The stability tolerance of a run whose steps are judged for stability."""
    sample_rule: str = MIN_SAMPLES
    """When a step holds the samples to judge a percentile (``--sample-rule``)."""
    stability_metrics: Sequence[str] = DEFAULT_STABILITY_METRICS
    """What a stability-judged step's last windows must agree on (``--stability-metric``)."""
    engine: dict | None = None
    """``ipsbench-serve bench --json`` results, for the engine vs end-to-end table."""
    running: bool = False
    """A partial report, written while the run goes on."""
    request_log: dict | None = None
    """Where the per-request logs went (:func:`ipsbench.loadgen.request_log.describe`), if the run wrote any."""
    simulated: dict | None = None
    """The target's device-time model (``backend``, ``device``, ``label``), if it serves one: no device computed."""

    @property
    def judged(self) -> bool:
        """Whether the run has an SLO to pass or fail."""
        return self.objectives is not None or self.search is not None


def build_report(steps: list[StepRecord], run: RunFacts) -> dict:
    """The report document of one run."""
    entries = step_entries(steps, run)
    totals = {name: sum(entry[name] for entry in entries) for name in COUNT_FIELDS}
    totals["images_ok"] = sum(entry["images_ok"] for entry in entries)
    reasons = invalid_reasons(entries, totals, run.workers)
    unstable = [entry["index"] for entry in entries
                if entry["stability"] is not None and not entry["stability"]["stable"] and not entry["interrupted"]]
    slo = slo_block(entries, run.search) if run.judged else None
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": "ipsbench-load",
        "scenario": run.scenario,
        "status": "interrupted" if run.interrupted_by else "complete",
        "interrupted_by": run.interrupted_by,
        "valid": not reasons,
        "invalid_reasons": reasons,
        "verdict": verdict(reasons, slo, unstable),
        "stable": not unstable,
        "unstable_steps": unstable,
        "simulated": run.simulated,
        "headline": headline_entry(run.scenario, entries),
        "slo": slo,
        "engine": run.engine,
        "accuracy": accuracy_block(steps, run.payload),
        "warnings": run_warnings(entries, run.server),
        "started_at": run.started_at,
        "duration_s": round(run.duration_s, 3),
        "settings": run.settings,
        "target": run.target,
        "server_metrics_url": run.server["metrics_url"] if run.server else None,
        "model": run.model,
        "payload": run.payload,
        "method": method_block(run, entries),
        "steps": entries,
        "totals": totals,
        "workers": run.workers,
        "request_log": run.request_log,
    }
    return unjudged(document) if run.running else document


def unjudged(document: dict) -> dict:
    """A partial report as the run writes it while it goes on: incomplete, with no run-level judgement (valid,
    stable, the verdict, the SLO's verdict) until the run has ended, so a report left by a killed run claims none."""
    document.update(status="incomplete", incomplete_reason=PARTIAL_REASON, valid=None, stable=None,
                    verdict=INCOMPLETE)
    if document["slo"] is not None:
        document["slo"] = {**document["slo"], "verdict": INCOMPLETE}
    return document


def step_entries(steps: list[StepRecord], run: RunFacts) -> list[dict]:
    """Each step as the report states it, judged against the run's SLO, with the server's side where scraped. In
    an SLO search an error rate above the bound fails the SLO instead of invalidating the step."""
    entries = [
        step_entry(step, run.max_error_rate, run.unix_s,
                   objectives=list(run.objectives or ()) if run.judged else None, tolerance=run.tolerance,
                   errors_invalidate=run.search is None, sample_rule=run.sample_rule,
                   stability_metrics=run.stability_metrics)
        for step in steps
    ]
    for entry in entries:
        entry["server"] = run.server["steps"].get(entry["index"]) if run.server else None
        entry["bottleneck"] = bottleneck_entry(entry)
    return entries


def invalid_reasons(entries: list[dict], totals: dict, workers: list[dict]) -> list[str]:
    """Why the run is INVALID: its invalid steps, no success at all, workers lost."""
    reasons = [f"step {entry['index']} ({step_load(entry)}): {reason}"
               for entry in entries for reason in entry["invalid_reasons"]]
    if not entries:
        reasons.append("no step ran")
    if totals["ok"] == 0:
        reasons.append("no successful request at all")
    for worker in workers:
        if lost := worker["lost"]:
            reasons.append(
                f"worker {worker['index']} (pid {worker['pid']}) lost {lost['lost_after_s']:.1f} s into the run "
                f"({lost['because']}): up to {lost['may_have_lost_requests']} requests unreported, "
                f"{lost['in_flight_at_last_report']} in flight at its last report counted abandoned"
            )
    return reasons


def run_warnings(entries: list[dict], server: dict | None) -> list[str]:
    """What a reader must know before trusting a figure: client-bound steps, failed scrapes."""
    found = [
        f"step {entry['index']} ({step_load(entry)}): client-bound, {'; '.join(entry['client']['reasons'])}; "
        "not a measure of the server's capacity"
        for entry in entries if entry["client"]["client_bound"]
    ]
    found += [
        f"step {entry['index']} ({step_load(entry)}): the server was saturated, "
        f"{entry['open_loop']['not_sent_in_flight_cap']} of {entry['open_loop']['scheduled']} scheduled arrivals "
        "found --max-in-flight requests still in flight and were not sent; they count in the latency as misses "
        "(lower bounds at the window's end), so this rate is above what the server serves"
        for entry in entries
        if (entry.get("open_loop") or {}).get("unsent_cause") == SERVER_SATURATED and not entry["client"]["client_bound"]
    ]
    return found + (server["warnings"] if server else [])


def verdict(reasons: list[str], slo: dict | None, unstable: list[int]) -> str:
    """INVALID before FAIL before INCONCLUSIVE (too few samples to judge) before UNSTABLE before PASS."""
    if reasons:
        return "INVALID"
    if slo is not None and slo["verdict"] in ("FAIL", "INCONCLUSIVE"):
        return slo["verdict"]
    return "UNSTABLE" if unstable else "PASS"


def method_block(run: RunFacts, entries: list[dict]) -> dict:
    """How each figure was measured, for the methods the run used."""
    open_loop = any(is_open_loop(entry) for entry in entries)
    return {
        "latency": LATENCY_METHOD,
        "throughput": THROUGHPUT_METHOD,
        "percentile_min_samples": {name: min_samples(p) for name, p in PERCENTILES},
        "accounting": f"{IDENTITY}, per step",
        "open_loop": (
            f"{OPEN_LOOP_LATENCY_METHOD}; a send more than {LATE_TOLERANCE_US / 1000:g} ms after its intended "
            f"time is late; an arrival that finds --max-in-flight requests still in flight is not sent (the server "
            f"is saturated at that rate); every arrival of the window counts in latency_scheduled_us and in the "
            f"SLO judgement, one never sent or never answered as a miss whose latency is at least the time from "
            f"its intended send to the window's end (a lower bound, flagged); client-bound below "
            f"{CLIENT_BOUND_SHARE:.0%} of the other scheduled arrivals sent"
        ) if open_loop else None,
        "server": SERVER_METHOD if run.server else None,
        "stability": STABILITY_METHOD if any(entry["stability"] for entry in entries) else None,
        "client": CLIENT_METHOD,
        "slo": SLO_METHOD if run.judged else None,
    }


def headline_entry(scenario: str, entries: list[dict]) -> dict | None:
    """The run's one figure where its scenario has one (single-stream: p90 latency of successful requests, as
    MLPerf SingleStream reports it), from its last step; None for scenarios reported step by step."""
    name = HEADLINE_PERCENTILES.get(scenario)
    if name is None or not entries:
        return None
    step = entries[-1]
    latency = step["latency_us"] or {}
    return {
        "metric": f"{name}_latency_us",
        "percentile": name,
        "value_us": latency.get(name),
        "step": step["index"],
        "samples": latency.get("count", 0),
        "enough_samples": bool(latency) and name not in step["unsupported_percentiles"],
        "description": f"{name} latency of successful requests in the measured window, one request in flight "
                       "(MLPerf SingleStream's figure)",
    }


def accuracy_block(steps: list[StepRecord], payload: dict) -> dict | None:
    """Top-1 and top-5 over the checked responses of every step (warm-up included), or None if none was checked."""
    checked, top1, top5 = (sum(step.accuracy[n] for step in steps) for n in range(3))
    if not payload.get("accuracy_every"):
        return None
    return {
        "every_nth_request": payload["accuracy_every"], "class_count": 5, "checked_images": checked,
        "top1": round(top1 / checked, 6) if checked else None, "top5": round(top5 / checked, 6) if checked else None,
        "method": "every Nth request asks for its top 5 classes (Triton's classification extension); each image's "
                  "answer is compared with its label, the index of its synset folder in sorted order",
    }


def slo_block(entries: list[dict], search: dict | None) -> dict:
    """The run's SLO verdict: a search passes when it found a value meeting every objective (the objectives as
    measured at that step); any other run when every step meets them (the objectives as the worst step has them)."""
    by_index = {entry["index"]: entry for entry in entries}
    if search is not None:
        best_step = next((s["step"] for s in search["steps"] if s["met"] and s["value"] == search["best"]), None)
        shown = by_index.get(best_step) or (entries[0] if entries else None)
        objectives = shown["slo"]["objectives"] if shown else []
        first = by_index.get(search["steps"][0]["step"]) if search["steps"] else None
        if search["best"] is not None:
            outcome = "PASS"
        else:  # the lower end did not meet the objectives: on the merits, or for want of samples
            outcome = "INCONCLUSIVE" if first is not None and first["slo"]["inconclusive"] else "FAIL"
        unsettled = [first] if outcome == "INCONCLUSIVE" else []
    else:
        steps = [entry for entry in entries if not entry["interrupted"] or entry["window_s"] > 0]
        objectives = worst([entry["slo"]["objectives"] for entry in steps])
        missed = [entry for entry in steps if not entry["slo"]["met"] and not entry["slo"]["inconclusive"]]
        unsettled = [entry for entry in steps if entry["slo"]["inconclusive"]]
        outcome = "FAIL" if missed or not steps else "INCONCLUSIVE" if unsettled else "PASS"
    durations = [entry["slo"]["settle_duration_s"] for entry in unsettled if entry["slo"]["settle_duration_s"]]
    return {"verdict": outcome, "objectives": objectives, "search": search,
            "inconclusive_steps": [entry["index"] for entry in unsettled],
            "settle_duration_s": max(durations) if durations else None}


