"""The report's tables as plain strings (header, rows, notes), built once from the document for Markdown and HTML."""

from __future__ import annotations

from ipsbench.loadgen.report.cells import (
    DASH,
    Flag,
    TableData,
    client_bound,
    client_cell,
    latency_cell,
    load_cell,
    load_header,
    ms,
    number,
    percent,
    rate,
    stability_cell,
    yes_no,
)
from ipsbench.loadgen.report.schema import COUNT_FIELDS, PERCENTILES


def steps_table(report: dict) -> TableData:
    """Throughput and latency of the successful requests in each step's measured window."""
    steps = report["steps"]
    with_phase = any(step.get("phase") for step in steps)
    with_stability = any(step.get("stability") for step in steps)
    with_client = any(client_bound(step) or (step.get("client") or {}).get("cpu_percent") is not None
                      for step in steps)
    with_slo = any(step.get("slo") for step in steps)
    header = [load_header(report), *(["phase"] if with_phase else []), "window s", "requests", "images",
              "images/s", "requests/s", *[f"{name} ms" for name, _ in PERCENTILES], "max ms", "errors", "valid"]
    header += ["stability"] if with_stability else []
    header += ["client"] if with_client else []
    header += ["SLO"] if with_slo else []
    rows = []
    for step in steps:
        row = [load_cell(step), *([str(step.get("phase") or DASH)] if with_phase else []),
               f"{step['window_s']:.2f}", str(step["window_requests"]["ok"]), str(step["images_ok"]),
               rate(step["images_per_s"]), rate(step["requests_per_s"]),
               *[latency_cell(step, name) for name, _ in PERCENTILES], latency_cell(step, "max"),
               str(step["errors_total"]), yes_no(step["valid"])]
        row += [stability_cell(step)] if with_stability else []
        row += [client_cell(step)] if with_client else []
        row += [_step_slo_cell(step)] if with_slo else []
        rows.append(row)
    needed = ", ".join(f"{name} {n:,}" for name, n in report["method"]["percentile_min_samples"].items())
    notes = [f"* fewer samples than needed to claim this percentile (needed: {needed})."]
    if with_stability:
        notes.append("stability: the last windows of the step agreed within the tolerance (trials: windows run); "
                     "UNSTABLE: they never did, so the step's figures are not a steady state.")
    notes += [f"{load_cell(step)}: client-bound: {'; '.join(reasons)}" for step in steps
              if client_bound(step) and (reasons := (step.get("client") or {}).get("reasons"))]
    return TableData(header, rows, notes)


def _step_slo_cell(step: dict) -> str:
    slo = step.get("slo")
    if not slo:
        return DASH
    return "met" if slo.get("met") else Flag("not met")


UNSENT_CAUSE_WORDS = {"client": Flag("load generator"), "server_saturated": "server saturated"}


def open_loop_table(report: dict) -> TableData:
    header = ["rate/s", "scheduled", "sent", "sent/s", "late", "not sent", "unsent because", "lateness p99 ms",
              "lateness max ms", "service p50 ms", "service p99 ms", "client-bound"]
    rows = []
    for step in report["steps"]:
        open_loop, service = step.get("open_loop") or {}, step.get("service_time_us") or {}
        lateness = open_loop.get("send_lateness_us") or {}
        rows.append([
            load_cell(step), str(open_loop.get("scheduled", DASH)), str(open_loop.get("sent", DASH)),
            rate(open_loop.get("achieved_send_rate_per_s")), str(open_loop.get("late_sends", DASH)),
            str(open_loop.get("not_sent", DASH)), UNSENT_CAUSE_WORDS.get(open_loop.get("unsent_cause"), DASH),
            ms(lateness.get("p99")), ms(lateness.get("max")),
            ms(service.get("p50")), ms(service.get("p99")),
            Flag("yes") if open_loop.get("client_bound") else "no",
        ])
    return TableData(header, rows)


def server_table(report: dict) -> TableData:
    header = [load_header(report), "interval s", "inferences", "avg batch", "queue ms", "compute ms",
              "server p50 ms", "server p99 ms", "engine busy %", "GPU util %", "GPU W", "images/J"]
    rows = []
    for step in report["steps"]:
        server = step.get("server")
        if not server:
            rows.append([load_cell(step), *[DASH] * (len(header) - 1)])
            continue
        gpu = server.get("gpu") or {}
        utilization, busy = gpu.get("utilization_mean"), server.get("engine_busy")
        rows.append([
            load_cell(step), number(server.get("scrape_interval_s")), str(server.get("inference_count", DASH)),
            number(server.get("avg_batch_size")), number(server.get("queue_ms"), 3),
            number(server.get("compute_ms"), 3), number(server.get("request_p50_ms"), 3),
            number(server.get("request_p99_ms"), 3), number(None if busy is None else busy * 100, 1),
            number(None if utilization is None else utilization * 100, 1),
            number(gpu_watts(gpu), 1), number(gpu.get("images_per_joule")),
        ])
    return TableData(header, rows, [
        "Per successful request, over the scrape interval around each measured window. server p50/p99: the "
        "server's own time per request (receipt to response written), from its request-duration histogram, "
        "interpolated within a bucket. engine busy: the instances' compute time over the interval and instances."])


def gpu_watts(gpu: dict) -> float | None:
    """Mean power over the interval from the energy counter, else the mean of the two scrapes' power gauges."""
    watts = gpu.get("power_w_from_energy")
    return watts if watts is not None else gpu.get("power_w_mean_of_scrapes")


BREAKDOWN_PARTS = (
    ("client_network_ms", "client + network"),
    ("pre_queue_ms", "server front end"),
    ("queue_ms", "server queue"),
    ("compute_ms", "server compute"),
    ("post_compute_ms", "server response"),
)
"""A request's way, in order: the parts of its end-to-end mean (key in :func:`time_breakdown`, label)."""


def time_breakdown(step: dict) -> dict | None:
    """Where a request's time went, in ms: the server's front end before the queue (receipt to enqueued:
    validation, preprocessing), its queue, its compute and its response (batch done to response written), per
    request, and the rest (client, serialization and network) as the end-to-end mean minus those; None without
    server figures. A server without the front-end series (Triton) leaves those two None, in the rest."""
    server = step.get("server") or {}
    # Open loop: the actual send, not the intended time, starts what the server can account for.
    latency = step.get("service_time_us") or step.get("latency_us") or {}
    queue_ms, compute_ms, mean_us = server.get("queue_ms"), server.get("compute_ms"), latency.get("mean")
    if queue_ms is None or compute_ms is None or mean_us is None:
        return None
    pre_ms, post_ms = server.get("pre_queue_ms"), server.get("post_compute_ms")
    end_to_end_ms = mean_us / 1000
    server_ms = queue_ms + compute_ms + (pre_ms or 0.0) + (post_ms or 0.0)
    return {
        "end_to_end_ms": end_to_end_ms,
        "pre_queue_ms": pre_ms,
        "queue_ms": queue_ms,
        "compute_ms": compute_ms,
        "post_compute_ms": post_ms,
        # The scrape interval is a little wider than the window, so the difference can dip below zero.
        "client_network_ms": max(end_to_end_ms - server_ms, 0.0),
    }


def breakdown_table(report: dict) -> TableData:
    header = [load_header(report), "end-to-end mean ms", *[f"{label} ms" for _, label in BREAKDOWN_PARTS],
              "client + network share"]
    rows = []
    for step in report["steps"]:
        parts = time_breakdown(step)
        if parts is None:
            rows.append([load_cell(step), *[DASH] * (len(header) - 1)])
            continue
        share = parts["client_network_ms"] / parts["end_to_end_ms"] if parts["end_to_end_ms"] else None
        rows.append([load_cell(step), number(parts["end_to_end_ms"], 3),
                     *[number(parts[key], 3) for key, _ in BREAKDOWN_PARTS], percent(share)])
    return TableData(header, rows, [
        "server front end: receipt to enqueued (validation, preprocessing); server response: batch done to "
        "response written; client + network = end-to-end mean − the server's parts (a server that does not "
        "export its front end's time leaves it in client + network)."])


def accounting_table(report: dict) -> TableData:
    rows = [[load_cell(step), *[str(step[name]) for name in COUNT_FIELDS], yes_no(step.get("identity_holds", True))]
            for step in report["steps"]]
    return TableData([load_header(report), *COUNT_FIELDS, "issued = sum"], rows)


def errors_table(report: dict) -> TableData | None:
    rows = [
        [load_cell(step), error["outcome"], error["code"], error["message"], str(error["count"]),
         f"{error['first_s']:.3f}", f"{error['last_s']:.3f}"]
        for step in report["steps"] for error in step["errors"]
    ]
    if not rows:
        return None
    return TableData([load_header(report), "outcome", "code", "message", "count", "first s", "last s"], rows)


def workers_table(report: dict) -> TableData | None:
    rows = []
    for worker in report.get("workers") or []:
        for step in worker["steps"]:
            rows.append([str(worker["index"]), str(worker["pid"]), str(step["index"]),
                         *[str(step[name]) for name in COUNT_FIELDS],
                         Flag("lost") if worker["lost"] else "complete"])
        if not worker["steps"]:
            rows.append([str(worker["index"]), str(worker["pid"]), DASH, *[DASH] * len(COUNT_FIELDS),
                         Flag("lost") if worker["lost"] else "complete"])
    if not rows:
        return None
    return TableData(["worker", "pid", "step", *COUNT_FIELDS, "report"], rows)


def slo_table(slo: dict) -> TableData:
    """One row per objective: its target beside what the run measured, and whether it was met."""
    rows = []
    for objective in slo.get("objectives") or []:
        if objective.get("target_us") is not None or objective.get("measured_us") is not None:
            target = str(objective.get("target") or ms(objective.get("target_us")) + " ms")
            measured = ms(objective.get("measured_us")) + " ms" if objective.get("measured_us") is not None else DASH
        else:
            target, measured = _share(objective.get("target")), _share(objective.get("measured"))
        samples = objective.get("samples")
        samples_cell = DASH if samples is None else f"{samples:,}"
        if objective.get("enough_samples") is False:
            samples_cell = Flag(f"{samples_cell} (too few to claim)")
        rows.append([str(objective.get("name", DASH)), target, measured, samples_cell,
                     objective_verdict(objective), str(objective.get("why") or "")])
    return TableData(["objective", "target", "measured", "samples", "verdict", "why"], rows)


def _share(value) -> str:
    """An error-rate target or measurement: shares are shown as percentages, anything else as given."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return percent(value, 2)
    return DASH if value is None else str(value)


def objective_verdict(objective: dict) -> str:
    """PASS, FAIL, or INCONCLUSIVE where the percentile had too few samples to be judged either way."""
    if objective.get("met"):
        return "PASS"
    return Flag("INCONCLUSIVE" if objective.get("enough_samples") is False else "FAIL")
