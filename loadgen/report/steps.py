"""A step as the report states it: its counts, latency percentiles, throughput, open-loop sends, the client's own
load, its bottleneck, its SLO judgement and its validity, from the step's record."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ipsbench.loadgen.bottleneck import classify, figures_of
from ipsbench.loadgen.censoring import scheduled_summary
from ipsbench.loadgen.histograms import add_histogram, encode_histogram, new_histogram
from ipsbench.loadgen.outcomes import COMPLETED, ERRORS, Outcome
from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.report.schema import COUNT_FIELDS, PERCENTILES
from ipsbench.loadgen.slo import MIN_SAMPLES, LatencyObjective, duration_to_hold, judge_step, min_samples
from ipsbench.loadgen.stability import DEFAULT_STABILITY_METRICS, stability_entry

CLIENT_CPU_BOUND_PERCENT = 90.0
"""A step where a load-generating process used at least this much of a core is client-bound."""
CLIENT_BOUND_SHARE = 0.95
"""A rate step whose sends in the window fall below this share of the scheduled arrivals is client-bound."""


def latency_summary(histogram) -> dict | None:
    """min/mean/percentiles/max of a histogram in microseconds, or None when it is empty."""
    count = histogram.get_total_count()
    if count == 0:
        return None
    summary = {"count": count, "min": histogram.get_min_value(), "mean": round(histogram.get_mean_value(), 1)}
    for name, percentile in PERCENTILES:
        summary[name] = histogram.get_value_at_percentile(percentile)
    summary["max"] = histogram.get_max_value()
    return summary


def step_entry(
    step: StepRecord,
    max_error_rate: float,
    unix_s: Callable[[int], float] | None = None,
    objectives: Sequence[LatencyObjective] | None = None,
    tolerance: float | None = None,
    errors_invalidate: bool = True,
    sample_rule: str = MIN_SAMPLES,
    stability_metrics: Sequence[str] = DEFAULT_STABILITY_METRICS,
) -> dict:
    """A step as the report states it, with its validity; ``unix_s`` maps the monotonic clock to wall-clock time;
    ``objectives`` (None: no SLO) judge it; ``tolerance``: of a stability-judged step; ``errors_invalidate``:
    an error rate above ``max_error_rate`` makes the step invalid (in an SLO search it only fails the SLO)."""
    windows = [step.trial_figures(number) for number in range(step.trials_used or len(step.trials))]
    step = step.settled()
    window_s = step.measured_window_s
    counts = {"issued": step.issued, **{o.value: step.counts[o] for o in Outcome}}
    ok_in_window = step.window_counts[Outcome.OK]
    errors = sum(step.counts[o] for o in ERRORS)
    open_loop = step.open_loop
    entry = {
        "index": step.index,
        "concurrency": None if open_loop else step.concurrency,
        "target_rate_per_s": step.rate_per_s,
        "warmup_s": step.warmup_s,
        "planned_window_s": step.window_s,
        "window_grown": step.grown,
        "window_s": round(window_s, 6),
        "window_start_unix": round(unix_s(step.window_start_ns), 3) if unix_s else None,
        "window_end_unix": round(unix_s(step.window_end_ns), 3) if unix_s else None,
        "interrupted": step.interrupted,
        **counts,
        "identity_holds": step.identity_holds(),
        "errors_total": errors,
        "error_rate": round(errors / step.issued, 6) if step.issued else 0.0,
        "errors": error_entries(step),
        "window_requests": {o.value: step.window_counts[o] for o in COMPLETED},
        "images_ok": step.window_images_ok,
        "images_per_s": round(step.window_images_ok / window_s, 3) if window_s > 0 else None,
        "requests_per_s": round(ok_in_window / window_s, 3) if window_s > 0 else None,
        **latency_entries(step),
        "latency_scheduled_us": scheduled_summary(step.histograms[Outcome.OK], step.censored_latencies())
        if open_loop else None,
        "latencies_clamped": step.latencies_clamped,
        "service_time_us": latency_summary(step.service_histogram) if open_loop else None,
        "open_loop": open_loop_entry(step, window_s) if open_loop else None,
        "phase": step.phase,
        "stability": None if step.trials_max <= 1 else stability_entry(
            windows, step.stable, step.trials_used or len(step.trials), tolerance if tolerance is not None else 0.10,
            stability_metrics,
        ),
    }
    entry["client"] = client_entry(step, entry["open_loop"])
    entry["slo"] = slo_entry(step, objectives, entry["error_rate"], max_error_rate, sample_rule)
    # Arrivals the in-flight cap held back are the server's result (saturation), counted in latency_scheduled_us
    # and against the SLO, not a fault of the run; those the client itself failed to send make it client-bound.
    reasons = step_invalid_reasons(entry, max_error_rate if errors_invalidate else 1.0)
    entry["valid"] = not reasons
    entry["invalid_reasons"] = reasons
    return entry


def latency_entries(step: StepRecord) -> dict:
    """The successes' latency (its summary, and the histogram itself for ``compare``'s confidence intervals), every
    completed request's, and the percentiles too few successes cannot support."""
    all_completed = new_histogram()
    for outcome in COMPLETED:
        add_histogram(all_completed, step.histograms[outcome])
    latency = latency_summary(step.histograms[Outcome.OK])
    measured = latency["count"] if latency else 0
    return {
        "latency_us": latency,
        "latency_histogram": encode_histogram(step.histograms[Outcome.OK]) if measured else None,
        "latency_all_us": latency_summary(all_completed),
        "unsupported_percentiles": [name for name, p in PERCENTILES if measured < min_samples(p)],
    }


def error_entries(step: StepRecord) -> list[dict]:
    """The step's errors by (outcome, status code, message), most frequent first, with when each was first and last
    seen."""
    return [
        {
            "outcome": outcome, "code": code, "message": message, "count": kind.count,
            "first_s": round(kind.first_ns / 1e9, 3), "last_s": round(kind.last_ns / 1e9, 3),
        }
        for (outcome, code, message), kind in sorted(step.errors.items(), key=lambda kv: -kv[1].count)
    ]


def slo_entry(step: StepRecord, objectives: Sequence[LatencyObjective] | None, error_rate: float,
              max_error_rate: float, sample_rule: str = MIN_SAMPLES) -> dict | None:
    """The step judged against the latency objectives (None: the run has no SLO)."""
    if objectives is None:
        return None
    judged = judge_step(step, objectives, error_rate, max_error_rate, sample_rule)
    met = all(o["met"] for o in judged)
    unmet = [o for o in judged if not o["met"]]
    # short of samples and nothing else: the step neither meets nor misses its objectives; a saturated server
    # misses them, however few the samples
    inconclusive = (bool(unmet) and all(o.get("enough_samples") is False for o in unmet)
                    and unsent_cause(step) != SERVER_SATURATED)
    return {"met": met, "inconclusive": inconclusive,
            "settle_duration_s": settle_duration_s(step, unmet) if inconclusive else None, "objectives": judged}


def settle_duration_s(step: StepRecord, short: list[dict]) -> int | None:
    """The ``--duration`` at which this step, at the rate it ran, would hold the samples ``short`` objectives need
    (samples grow with each window's length; a 3 σ margin for Poisson arrivals); None without a sample."""
    samples = max(o["samples"] for o in short)
    if samples <= 0:
        return None
    return duration_to_hold(max(o["samples_needed"] for o in short), samples / step.window_s)


def client_entry(step: StepRecord, open_loop: dict | None) -> dict:
    """The load generator watching itself: its busiest process's CPU and whether it kept up."""
    cpu = max(step.cpu_percent) if step.cpu_percent else None
    reasons = []
    if cpu is not None and cpu >= CLIENT_CPU_BOUND_PERCENT:
        busiest = step.cpu_percent.index(cpu)
        who = f"load-generating process {busiest}" if len(step.cpu_percent) > 1 else "the load generator"
        reasons.append(f"{who} used {cpu:g}% of a core (at least {CLIENT_CPU_BOUND_PERCENT:g}%)")
    if open_loop and open_loop["client_bound"]:
        capped = open_loop["not_sent_in_flight_cap"]
        held = f", not counting {capped} the in-flight cap held back" if capped else ""
        reasons.append(
            f"sent {open_loop['sent']} of {open_loop['scheduled']} scheduled requests in the window{held} "
            f"(below {CLIENT_BOUND_SHARE:.0%})"
        )
    return {"cpu_percent": cpu, "cpu_percent_per_process": list(step.cpu_percent), "client_bound": bool(reasons),
            "reasons": reasons}


CLIENT = "client"
SERVER_SATURATED = "server_saturated"


def unsent_cause(step: StepRecord) -> str | None:
    """Why a rate step's arrivals went unsent: ``server_saturated`` when most found the in-flight cap's worth
    of requests in flight, answers slow to come back, and the load generator was not short of CPU; ``client``
    when the load generator fell behind its schedule or was too busy to take answers; None when all were sent."""
    if not step.not_sent:
        return None
    client_busy = bool(step.cpu_percent) and max(step.cpu_percent) >= CLIENT_CPU_BOUND_PERCENT
    held_back = step.capped
    return SERVER_SATURATED if held_back * 2 >= step.not_sent and not client_busy else CLIENT


def bottleneck_entry(entry: dict) -> dict:
    """The resource that limited the step (:mod:`ipsbench.loadgen.bottleneck`), from the entry's client and
    open-loop blocks and its ``server`` block (set it first; None: not scraped)."""
    return classify(figures_of(entry), scraped=entry.get("server") is not None)


def open_loop_entry(step: StepRecord, window_s: float) -> dict:
    """What the sender did against what the arrival process asked for, in the measured window."""
    lateness = step.lateness_histogram
    sendable = step.scheduled - step.capped  # the in-flight cap's doing is the target's, not the client's
    sent_share = step.window_sends / sendable if sendable else 1.0
    return {
        "senders": step.concurrency,
        "scheduled": step.scheduled,
        "sent": step.window_sends,
        "scheduled_rate_per_s": round(step.scheduled / window_s, 3) if window_s > 0 else None,
        "achieved_send_rate_per_s": round(step.window_sends / window_s, 3) if window_s > 0 else None,
        "late_sends": step.late_sends,
        "not_sent": step.not_sent,
        "not_sent_in_flight_cap": step.capped,
        "censored": step.censored_offsets.get_total_count(),
        "unsent_cause": unsent_cause(step),
        "send_lateness_us": None if lateness.get_total_count() == 0 else {
            "p50": lateness.get_value_at_percentile(50.0),
            "p99": lateness.get_value_at_percentile(99.0),
            "max": lateness.get_max_value(),
        },
        "client_bound": window_s > 0 and sent_share < CLIENT_BOUND_SHARE,
    }


def capped_reason(step: StepRecord) -> str:
    """What a rate step whose arrivals met the in-flight cap says of the target at its rate."""
    return (f"{step.capped} of {step.scheduled} scheduled arrivals were not sent: the in-flight cap "
            "(--max-in-flight) was reached, so the server did not keep up with the rate (saturated); they count "
            "in the latency as misses, at least until the window's end")


def step_invalid_reasons(entry: dict, max_error_rate: float) -> list[str]:
    reasons = []
    accounted = sum(entry[name] for name in COUNT_FIELDS[1:])
    if entry["issued"] != accounted:
        reasons.append(f"issued {entry['issued']} != accounted {accounted}")
    if entry["window_s"] <= 0:
        reasons.append("stopped before its measured window")
    elif entry["window_requests"]["ok"] == 0:
        reasons.append("no successful request in the measured window")
    if entry["error_rate"] > max_error_rate:
        reasons.append(f"error rate {entry['error_rate']:.2%} above the allowed {max_error_rate:.2%}")
    return reasons


