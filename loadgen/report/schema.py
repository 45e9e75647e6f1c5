"""The versioned report document: built from a run's recorder, checked, written and read back."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from loadgen.recorder import COMPLETED, ERRORS, Outcome, StepRecord, add_histogram, new_histogram

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
COUNT_FIELDS = ("issued", "ok", "rejected", "failed", "deadline", "cancelled", "abandoned")
LATENCY_METHOD = (
    "HDR histogram (1 us to 60 s, 3 significant digits, error <= 0.1%), microseconds, monotonic clock, "
    "over requests that completed inside the measured window"
)
THROUGHPUT_METHOD = "images of successful requests completed inside the measured window / window length"


def min_samples(percentile: float) -> int:
    """Samples needed before a percentile is claimed: 100 / (1 - p), e.g. 10,000 for p99."""
    return math.ceil(round(100 / (1 - percentile / 100), 6))


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


def step_entry(step: StepRecord, max_error_rate: float) -> dict:
    """A step as the report states it, with its validity."""
    window_s = step.measured_window_s
    counts = {"issued": step.issued, **{o.value: step.counts[o] for o in Outcome}}
    all_completed = new_histogram()
    for outcome in COMPLETED:
        add_histogram(all_completed, step.histograms[outcome])
    latency = latency_summary(step.histograms[Outcome.OK])
    ok_in_window = step.window_counts[Outcome.OK]
    errors = sum(step.counts[o] for o in ERRORS)
    entry = {
        "index": step.index,
        "concurrency": step.concurrency,
        "warmup_s": step.warmup_s,
        "planned_window_s": step.window_s,
        "window_s": round(window_s, 6),
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
        "unsupported_percentiles": [name for name, p in PERCENTILES if ok_in_window < min_samples(p)],
        "latencies_clamped": step.latencies_clamped,
    }
    reasons = step_invalid_reasons(entry, max_error_rate)
    entry["valid"] = not reasons
    entry["invalid_reasons"] = reasons
    return entry


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
) -> dict:
    """The report document of one run."""
    entries = [step_entry(step, max_error_rate) for step in steps]
    totals = {name: sum(entry[name] for entry in entries) for name in COUNT_FIELDS}
    totals["images_ok"] = sum(entry["images_ok"] for entry in entries)
    reasons = [f"step {entry['index']} (concurrency {entry['concurrency']}): {reason}"
               for entry in entries for reason in entry["invalid_reasons"]]
    if not entries:
        reasons.append("no step ran")
    if totals["ok"] == 0:
        reasons.append("no successful request at all")
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "ipsbench-load",
        "scenario": scenario,
        "status": "interrupted" if interrupted_by else "complete",
        "interrupted_by": interrupted_by,
        "valid": not reasons,
        "invalid_reasons": reasons,
        "started_at": started_at,
        "duration_s": round(duration_s, 3),
        "settings": settings,
        "target": target,
        "model": model,
        "payload": payload,
        "method": {
            "latency": LATENCY_METHOD,
            "throughput": THROUGHPUT_METHOD,
            "percentile_min_samples": {name: min_samples(p) for name, p in PERCENTILES},
            "accounting": "issued = ok + rejected + failed + deadline + cancelled + abandoned, per step",
        },
        "steps": entries,
        "totals": totals,
    }


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
