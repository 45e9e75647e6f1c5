"""The versioned report document: built from a run's recorder, checked, written and read back."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ipsbench.loadgen.histograms import add_histogram, new_histogram
from ipsbench.loadgen.outcomes import COMPLETED, ERRORS, Outcome
from ipsbench.loadgen.recorder import LATE_TOLERANCE_US, StepRecord
from ipsbench.loadgen.trials import STABLE_WINDOWS
from ipsbench.loadgen.slo import LatencyObjective, judge, min_samples, worst
from ipsbench.loadgen.stability import stability_entry

SCHEMA_VERSION = 3
"""2: open-loop (rate) steps, workers of distributed runs, warnings. 3: stability windows, the client's own
CPU, SLO objectives and the search, phases, the engine bench, payload modes, verdict, running/incomplete; later
added to 3, both optional for readers (None when absent): ``headline`` (the run's one figure where its scenario
has one, e.g. single-stream's p90) and ``request_log`` (where the per-request logs went)."""
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
VERDICT_EXIT_CODES = {"PASS": 0, "FAIL": 1, "UNSTABLE": 1, "INVALID": 2}
"""Exit code of a run that ended on its own, by its verdict."""
CLIENT_CPU_BOUND_PERCENT = 90.0
"""A step where a load-generating process used at least this much of a core is client-bound."""

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
HEADLINE_PERCENTILES = {"single-stream": "p90"}
"""Scenarios whose figure is one latency percentile of successful requests: MLPerf SingleStream reports the 90th."""
COUNT_FIELDS = ("issued", "ok", "rejected", "failed", "deadline", "cancelled", "abandoned")
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
    "server's inference count over the same interval"
)
CLIENT_BOUND_SHARE = 0.95
"""A rate step whose sends in the window fall below this share of the scheduled arrivals is client-bound."""
STABILITY_METHOD = (
    f"each level runs measured windows back to back until the last {STABLE_WINDOWS} agree within the tolerance "
    f"of their mean for images/sec and p99 (at most max_trials windows, else UNSTABLE); the step's figures are "
    f"those {STABLE_WINDOWS} windows' histograms together"
)
CLIENT_METHOD = (
    "the load generator's own CPU time (all threads of each load-generating process) over the time it issued "
    f"into the step, warm-up included; client-bound at {CLIENT_CPU_BOUND_PERCENT:g}% of a core or more, or "
    f"when an open-loop step sent below {CLIENT_BOUND_SHARE:.0%} of its scheduled arrivals"
)
SLO_METHOD = (
    "a latency objective is met when the percentile of successful requests' latency in the measured window is "
    "at most its target and the window holds at least 100 / (1 - p) samples; the error-rate objective over all "
    "requests the step issued"
)


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
) -> dict:
    """A step as the report states it, with its validity; ``unix_s`` maps the monotonic clock to wall-clock time;
    ``objectives`` (None: no SLO) judge it; ``tolerance``: of a stability-judged step; ``errors_invalidate``:
    an error rate above ``max_error_rate`` makes the step invalid (in an SLO search it only fails the SLO)."""
    windows = [step.trial_figures(number) for number in range(step.trials_used or len(step.trials))]
    step = step.settled()
    window_s = step.measured_window_s
    counts = {"issued": step.issued, **{o.value: step.counts[o] for o in Outcome}}
    all_completed = new_histogram()
    for outcome in COMPLETED:
        add_histogram(all_completed, step.histograms[outcome])
    latency = latency_summary(step.histograms[Outcome.OK])
    ok_in_window = step.window_counts[Outcome.OK]
    errors = sum(step.counts[o] for o in ERRORS)
    open_loop = step.rate_per_s is not None
    measured = latency["count"] if latency else 0
    entry = {
        "index": step.index,
        "concurrency": None if open_loop else step.concurrency,
        "target_rate_per_s": step.rate_per_s,
        "warmup_s": step.warmup_s,
        "planned_window_s": step.window_s,
        "window_s": round(window_s, 6),
        "window_start_unix": round(unix_s(step.window_start_ns), 3) if unix_s else None,
        "window_end_unix": round(unix_s(step.window_end_ns), 3) if unix_s else None,
        "interrupted": step.interrupted,
        **counts,
        "identity_holds": step.identity_holds(),
        "errors_total": errors,
        "error_rate": round(errors / step.issued, 6) if step.issued else 0.0,
        "errors": [
            {
                "outcome": outcome, "code": code, "message": message, "count": kind.count,
                "first_s": round(kind.first_ns / 1e9, 3), "last_s": round(kind.last_ns / 1e9, 3),
            }
            for (outcome, code, message), kind in sorted(step.errors.items(), key=lambda kv: -kv[1].count)
        ],
        "window_requests": {o.value: step.window_counts[o] for o in COMPLETED},
        "images_ok": step.window_images_ok,
        "images_per_s": round(step.window_images_ok / window_s, 3) if window_s > 0 else None,
        "requests_per_s": round(ok_in_window / window_s, 3) if window_s > 0 else None,
        "latency_us": latency,
        "latency_all_us": latency_summary(all_completed),
        "unsupported_percentiles": [name for name, p in PERCENTILES if measured < min_samples(p)],
        "latencies_clamped": step.latencies_clamped,
        "service_time_us": latency_summary(step.service_histogram) if open_loop else None,
        "open_loop": open_loop_entry(step, window_s) if open_loop else None,
        "phase": step.phase,
        "stability": None if step.trials_max <= 1 else stability_entry(
            windows, step.stable, step.trials_used or len(step.trials), tolerance if tolerance is not None else 0.10
        ),
    }
    entry["client"] = client_entry(step, entry["open_loop"])
    entry["slo"] = None
    if objectives is not None:
        judged = judge(list(objectives), step.histograms[Outcome.OK], entry["error_rate"], step.issued,
                       max_error_rate)
        entry["slo"] = {"met": all(o["met"] for o in judged), "objectives": judged}
    reasons = step_invalid_reasons(entry, max_error_rate if errors_invalidate else 1.0)
    entry["valid"] = not reasons
    entry["invalid_reasons"] = reasons
    return entry


def client_entry(step: StepRecord, open_loop: dict | None) -> dict:
    """The load generator watching itself: its busiest process's CPU and whether it kept up."""
    cpu = max(step.cpu_percent) if step.cpu_percent else None
    reasons = []
    if cpu is not None and cpu >= CLIENT_CPU_BOUND_PERCENT:
        busiest = step.cpu_percent.index(cpu)
        who = f"load-generating process {busiest}" if len(step.cpu_percent) > 1 else "the load generator"
        reasons.append(f"{who} used {cpu:g}% of a core (at least {CLIENT_CPU_BOUND_PERCENT:g}%)")
    if open_loop and open_loop["client_bound"]:
        reasons.append(
            f"sent {open_loop['sent']} of {open_loop['scheduled']} scheduled requests in the window "
            f"(below {CLIENT_BOUND_SHARE:.0%})"
        )
    return {"cpu_percent": cpu, "cpu_percent_per_process": list(step.cpu_percent), "client_bound": bool(reasons),
            "reasons": reasons}


def open_loop_entry(step: StepRecord, window_s: float) -> dict:
    """What the sender did against what the arrival process asked for, in the measured window."""
    lateness = step.lateness_histogram
    sent_share = step.window_sends / step.scheduled if step.scheduled else 0.0
    return {
        "senders": step.concurrency,
        "scheduled": step.scheduled,
        "sent": step.window_sends,
        "scheduled_rate_per_s": round(step.scheduled / window_s, 3) if window_s > 0 else None,
        "achieved_send_rate_per_s": round(step.window_sends / window_s, 3) if window_s > 0 else None,
        "late_sends": step.late_sends,
        "not_sent": step.not_sent,
        "send_lateness_us": None if lateness.get_total_count() == 0 else {
            "p50": lateness.get_value_at_percentile(50.0),
            "p99": lateness.get_value_at_percentile(99.0),
            "max": lateness.get_max_value(),
        },
        "client_bound": window_s > 0 and sent_share < CLIENT_BOUND_SHARE,
    }


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


def build_report(
    *,
    steps: list[StepRecord],
    settings: dict,
    target: dict,
    model: dict,
    payload: dict,
    scenario: str,
    started_at: str,
    duration_s: float,
    interrupted_by: str | None,
    max_error_rate: float,
    workers: list[dict] | None = None,
    unix_s: Callable[[int], float] | None = None,
    server: dict | None = None,
    objectives: Sequence[LatencyObjective] | None = None,
    search: dict | None = None,
    tolerance: float | None = None,
    engine: dict | None = None,
    accuracy: dict | None = None,
    running: bool = False,
    request_log: dict | None = None,
) -> dict:
    """The report document of one run; ``workers``: those of a distributed run, as the master describes them;
    ``server``: the scraped server metrics (``metrics_url``, ``steps`` by step index, ``warnings``), if any;
    ``objectives``: the run's latency SLO (an error-rate objective is added; None and no ``search``: no SLO);
    ``search``: the ``slo`` search as :meth:`ipsbench.loadgen.slo.Search.describe` gives it; ``running``: a partial report
    written while the run goes on; ``request_log``: where the per-request logs went
    (:func:`ipsbench.loadgen.request_log.describe`), if the run wrote any."""
    judged = objectives is not None or search is not None
    entries = [
        step_entry(step, max_error_rate, unix_s, objectives=list(objectives or ()) if judged else None,
                   tolerance=tolerance, errors_invalidate=search is None)
        for step in steps
    ]
    for entry in entries:
        entry["server"] = server["steps"].get(entry["index"]) if server else None
    totals = {name: sum(entry[name] for entry in entries) for name in COUNT_FIELDS}
    totals["images_ok"] = sum(entry["images_ok"] for entry in entries)
    reasons = [f"step {entry['index']} ({step_load(entry)}): {reason}"
               for entry in entries for reason in entry["invalid_reasons"]]
    if not entries:
        reasons.append("no step ran")
    if totals["ok"] == 0:
        reasons.append("no successful request at all")
    for worker in workers or []:
        if lost := worker["lost"]:
            reasons.append(
                f"worker {worker['index']} (pid {worker['pid']}) lost {lost['lost_after_s']:.1f} s into the run "
                f"({lost['because']}): up to {lost['may_have_lost_requests']} requests unreported, "
                f"{lost['in_flight_at_last_report']} in flight at its last report counted abandoned"
            )
    warnings = [
        f"step {entry['index']} ({step_load(entry)}): client-bound, {'; '.join(entry['client']['reasons'])}; "
        "not a measure of the server's capacity"
        for entry in entries if entry["client"]["client_bound"]
    ]
    if server:
        warnings += server["warnings"]
    unstable = [entry["index"] for entry in entries
                if entry["stability"] is not None and not entry["stability"]["stable"] and not entry["interrupted"]]
    slo = slo_block(entries, search) if judged else None
    if not reasons and slo is None and not unstable:
        verdict = "PASS"
    else:
        verdict = "INVALID" if reasons else "FAIL" if slo and slo["verdict"] == "FAIL" else (
            "UNSTABLE" if unstable else "PASS")
    status = "running" if running else "interrupted" if interrupted_by else "complete"
    if accuracy is None:
        accuracy = accuracy_block(steps, payload)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "ipsbench-load",
        "scenario": scenario,
        "status": status,
        "interrupted_by": interrupted_by,
        "valid": not reasons,
        "invalid_reasons": reasons,
        "verdict": verdict,
        "stable": not unstable,
        "unstable_steps": unstable,
        "headline": headline_entry(scenario, entries),
        "slo": slo,
        "engine": engine,
        "accuracy": accuracy,
        "warnings": warnings,
        "started_at": started_at,
        "duration_s": round(duration_s, 3),
        "settings": settings,
        "target": target,
        "server_metrics_url": server["metrics_url"] if server else None,
        "model": model,
        "payload": payload,
        "method": {
            "latency": LATENCY_METHOD,
            "throughput": THROUGHPUT_METHOD,
            "percentile_min_samples": {name: min_samples(p) for name, p in PERCENTILES},
            "accounting": "issued = ok + rejected + failed + deadline + cancelled + abandoned, per step",
            "open_loop": (
                f"{OPEN_LOOP_LATENCY_METHOD}; a send more than {LATE_TOLERANCE_US / 1000:g} ms after its intended "
                f"time is late; client-bound below {CLIENT_BOUND_SHARE:.0%} of the scheduled sends"
            ) if scenario == "rate" else None,
            "server": SERVER_METHOD if server else None,
            "stability": STABILITY_METHOD if any(entry["stability"] for entry in entries) else None,
            "client": CLIENT_METHOD,
            "slo": SLO_METHOD if judged else None,
        },
        "steps": entries,
        "totals": totals,
        "workers": workers or [],
        "request_log": request_log,
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
        verdict = "PASS" if search["best"] is not None else "FAIL"
    else:
        judged = [entry["slo"]["objectives"] for entry in entries if not entry["interrupted"] or entry["window_s"] > 0]
        objectives = worst(judged)
        verdict = "PASS" if judged and all(o["met"] for objectives_ in judged for o in objectives_) else "FAIL"
    return {"verdict": verdict, "objectives": objectives, "search": search}


def step_load(entry: dict) -> str:
    """How a step loaded the target, in words: ``concurrency 4`` or ``20 requests/s``."""
    if entry.get("target_rate_per_s") is not None:
        return f"{entry['target_rate_per_s']:g} requests/s"
    return f"concurrency {entry['concurrency']}"


REQUIRED_KEYS = ("schema_version", "scenario", "status", "valid", "settings", "target", "model", "payload", "steps")
REQUIRED_STEP_KEYS = (*COUNT_FIELDS, "concurrency", "window_s", "warmup_s", "images_ok", "images_per_s",
                      "requests_per_s", "latency_us", "errors", "valid")


def check_report(report: dict) -> dict:
    """Raise ValueError unless ``report`` is a report of this schema version; return it."""
    if report.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported report schema_version {report.get('schema_version')!r}")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    missing += [f"steps[{i}].{key}" for i, step in enumerate(report["steps"]) for key in REQUIRED_STEP_KEYS
                if key not in step]
    if missing:
        raise ValueError(f"report lacks {', '.join(missing)}")
    return report


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by others (0644)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def write_report(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_JSON
    write_text(path, json.dumps(check_report(report), indent=2) + "\n")
    return path


def read_report(path: Path) -> dict:
    return check_report(json.loads(Path(path).read_text(encoding="utf-8")))
