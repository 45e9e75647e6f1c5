"""``steps.csv``: one row per step, rendered from the report document (never from live objects)."""

from __future__ import annotations

import csv
import io

from ipsbench.loadgen.report.schema import COUNT_FIELDS, PERCENTILES, check_report

LATENCY_FIELDS = ("min", *(name for name, _ in PERCENTILES), "max")
COLUMNS = (
    "step", "concurrency", "target_rate_per_s", "warmup_s", "window_s", "interrupted", *COUNT_FIELDS,
    "errors_total", "error_rate", "images_ok", "images_per_s", "requests_per_s",
    *(f"latency_{name}_us" for name in LATENCY_FIELDS), "latency_count",
    "service_p50_us", "service_p99_us",
    "scheduled", "sent", "achieved_send_rate_per_s", "late_sends", "not_sent", "send_lateness_p99_us",
    "send_lateness_max_us", "scheduled_p99_us", "scheduled_p99_lower_bound", "censored", "unsent_cause",
    "client_cpu_percent", "client_bound", "phase", "stable", "trials", "slo_met",
    "valid", "invalid_reasons",
)
"""Units in the names; empty cells where a value does not apply (closed-loop steps have no send columns). The
``latency_*`` columns are the successful requests'; ``scheduled_p99_us`` every scheduled arrival's (open loop)."""


def _row(step: dict) -> dict:
    latency = step["latency_us"] or {}
    service = step.get("service_time_us") or {}
    open_loop = step.get("open_loop") or {}
    lateness = open_loop.get("send_lateness_us") or {}
    scheduled = step.get("latency_scheduled_us") or {}
    return {
        "step": step["index"], "concurrency": step["concurrency"], "target_rate_per_s": step["target_rate_per_s"],
        "warmup_s": step["warmup_s"], "window_s": step["window_s"], "interrupted": step["interrupted"],
        **{name: step[name] for name in COUNT_FIELDS},
        "errors_total": step["errors_total"], "error_rate": step["error_rate"], "images_ok": step["images_ok"],
        "images_per_s": step["images_per_s"], "requests_per_s": step["requests_per_s"],
        **{f"latency_{name}_us": latency.get(name) for name in LATENCY_FIELDS},
        "latency_count": latency.get("count", 0),
        "service_p50_us": service.get("p50"), "service_p99_us": service.get("p99"),
        "scheduled": open_loop.get("scheduled"), "sent": open_loop.get("sent"),
        "achieved_send_rate_per_s": open_loop.get("achieved_send_rate_per_s"),
        "late_sends": open_loop.get("late_sends"), "not_sent": open_loop.get("not_sent"),
        "send_lateness_p99_us": lateness.get("p99"), "send_lateness_max_us": lateness.get("max"),
        "scheduled_p99_us": scheduled.get("p99"),
        "scheduled_p99_lower_bound": "p99" in scheduled["lower_bound"] if scheduled else None,
        "censored": open_loop.get("censored"), "unsent_cause": open_loop.get("unsent_cause"),
        "client_cpu_percent": (step.get("client") or {}).get("cpu_percent"),
        "client_bound": (step.get("client") or {}).get("client_bound", open_loop.get("client_bound")),
        "phase": step.get("phase"),
        "stable": (step.get("stability") or {}).get("stable"),
        "trials": (step.get("stability") or {}).get("trials"),
        "slo_met": (step.get("slo") or {}).get("met"),
        "valid": step["valid"], "invalid_reasons": "; ".join(step["invalid_reasons"]),
    }


def render_steps_csv(report: dict) -> str:
    check_report(report)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in report["steps"]:
        writer.writerow(_row(step))
    return out.getvalue()
