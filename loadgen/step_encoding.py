"""A step's record as plain data (JSON- and msgpack-safe) and back, and the merge of another process's record of
the same step into one (counts add, histograms add): how a distributed run's workers report to the master."""

from __future__ import annotations

from ipsbench.loadgen.histograms import add_encoded, encode_histogram
from ipsbench.loadgen.outcomes import Outcome
from ipsbench.loadgen.recorder import ErrorKind, StepRecord


def encode_step(step: StepRecord) -> dict:
    """Plain data for sending ``step``'s state elsewhere."""
    return {
        "index": step.index,
        "concurrency": step.concurrency,
        "rate_per_s": step.rate_per_s,
        "warmup_s": step.warmup_s,
        "window_s": step.window_s,
        "measured_window_s": step.measured_window_s,
        "interrupted": step.interrupted,
        "issued": step.issued,
        "counts": {o.value: n for o, n in step.counts.items()},
        "window_counts": {o.value: n for o, n in step.window_counts.items()},
        "window_images_ok": step.window_images_ok,
        "latencies_clamped": step.latencies_clamped,
        "histograms": {o.value: encode_histogram(h) for o, h in step.histograms.items()},
        "errors": [[*key, kind.count, kind.first_ns, kind.last_ns] for key, kind in step.errors.items()],
        "open_loop": [step.scheduled, step.window_sends, step.late_sends, step.not_sent, step.capped],
        "service_histogram": encode_histogram(step.service_histogram),
        "lateness_histogram": encode_histogram(step.lateness_histogram),
        "censored_offsets": encode_histogram(step.censored_offsets),
        "trials_max": step.trials_max,
        "trials": [trial.encode() for trial in step.trials],
        # count windows end at their last completion: as an offset into the window (clocks differ per process)
        "trial_ends_s": [(trial.end_ns - step.window_start_ns) / 1e9 if trial.end_ns else None
                         for trial in step.trials],
        "window_requests": step.window_requests,
        "trials_used": step.trials_used,
        "stable": step.stable,
        "phase": step.phase,
        "cpu_percent": list(step.cpu_percent),
        "accuracy": list(step.accuracy),
    }


def decode_step(data: dict, start_ns: int = 0) -> StepRecord:
    """Inverse of :func:`encode_step`; the decoded step is placed at ``start_ns`` on the local clock."""
    window_start_ns = start_ns + round(data["warmup_s"] * 1e9)
    step = StepRecord(
        index=data["index"],
        concurrency=data["concurrency"],
        rate_per_s=data["rate_per_s"],
        warmup_s=data["warmup_s"],
        window_s=data["window_s"],
        start_ns=start_ns,
        window_end_ns=window_start_ns + round(data["measured_window_s"] * 1e9),
        interrupted=data["interrupted"],
        trials_max=data.get("trials_max", 1),
        window_requests=data.get("window_requests", 0),
        trials_used=data.get("trials_used"),
        stable=data.get("stable"),
        phase=data.get("phase"),
    )
    step.cpu_percent = []
    merge_step(step, data)
    return step


def merge_step(step: StepRecord, data: dict) -> None:
    """Add another recorder's encoded state of the same step into ``step``."""
    if data["index"] != step.index:
        raise ValueError(f"cannot merge step {data['index']} into step {step.index}")
    step.issued += data["issued"]
    for name, n in data["counts"].items():
        step.counts[Outcome(name)] += n
    for name, n in data["window_counts"].items():
        step.window_counts[Outcome(name)] += n
    step.window_images_ok += data["window_images_ok"]
    step.latencies_clamped += data["latencies_clamped"]
    for name, encoded in data["histograms"].items():
        add_encoded(step.histograms[Outcome(name)], encoded)
    add_encoded(step.service_histogram, data["service_histogram"])
    add_encoded(step.lateness_histogram, data["lateness_histogram"])
    if "censored_offsets" in data:  # a worker of an older version censors nothing
        add_encoded(step.censored_offsets, data["censored_offsets"])
    scheduled, window_sends, late_sends, not_sent, capped = data["open_loop"]
    step.scheduled += scheduled
    step.window_sends += window_sends
    step.late_sends += late_sends
    step.not_sent += not_sent
    step.capped += capped
    for outcome, code, message, count, first_ns, last_ns in data["errors"]:
        kind = step.errors.setdefault((outcome, code, message), ErrorKind(first_ns=first_ns, last_ns=last_ns))
        kind.count += count
        kind.first_ns = min(kind.first_ns, first_ns)
        kind.last_ns = max(kind.last_ns, last_ns)
    step.interrupted = step.interrupted or data["interrupted"]
    ends = data.get("trial_ends_s") or ()
    for number, trial in enumerate(data.get("trials", ())):
        step.trial(number).merge_encoded(trial)
        if number < len(ends) and ends[number] is not None:
            local_end_ns = step.window_start_ns + round(ends[number] * 1e9)
            step.trial(number).end_ns = max(step.trial(number).end_ns, local_end_ns)
    step.cpu_percent = [*step.cpu_percent, *data.get("cpu_percent", ())]
    step.accuracy = [mine + theirs for mine, theirs in zip(step.accuracy, data.get("accuracy", (0, 0, 0)))]
