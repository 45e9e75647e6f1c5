"""``report.md``: the report document rendered as Markdown (from the JSON, never from live objects)."""

from __future__ import annotations

from loadgen.report.schema import COUNT_FIELDS, PERCENTILES, check_report, step_load


def ms(latency_us: int | float | None) -> str:
    """Milliseconds with about three significant digits."""
    if latency_us is None:
        return "–"
    value = latency_us / 1000
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def load_header(report: dict) -> str:
    """The first column of every step table: what the step varied."""
    return "rate/s" if report["scenario"] == "rate" else "concurrency"


def load_cell(step: dict) -> str:
    rate_per_s = step.get("target_rate_per_s")
    return f"{rate_per_s:g}" if rate_per_s is not None else str(step["concurrency"])


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _latency_cell(step: dict, name: str) -> str:
    latency = step["latency_us"]
    if latency is None:
        return "–"
    mark = "*" if name in step.get("unsupported_percentiles", []) else ""
    return ms(latency[name]) + mark


def render_markdown(report: dict) -> str:
    check_report(report)
    settings, model, payload = report["settings"], report["model"], report["payload"]
    scenario_settings = settings[report["scenario"]]
    verdict = "VALID" if report["valid"] else "INVALID"
    lines = [
        f"# ipsbench-load {report['scenario']}: {model['name']} on {report['target']['address']}",
        "",
        f"**{verdict}**, {report['status']}"
        + (f" ({report['interrupted_by']})" if report.get("interrupted_by") else "")
        + f"; started {report['started_at']}, {report['duration_s']:.1f} s.",
    ]
    for reason in report.get("invalid_reasons", []):
        lines.append(f"- {reason}")
    lines += [
        "",
        f"Model `{model['name']}` input `{model['input']['name']}` {model['input']['datatype']} "
        f"{model['input']['shape']}; payload {payload['encoding']}, {payload['images_per_request']} image(s) per "
        f"request, {payload['distinct_requests']} distinct requests of {payload['request_bytes']:,} bytes "
        f"({payload['source']}).",
        f"Each step: {scenario_settings['warmup_s']:g} s warm-up (counted, not measured), then the measured window; "
        f"RPC deadline {settings['target']['deadline_s']:g} s; drain bound {scenario_settings['drain_s']:g} s.",
    ]
    if report["scenario"] == "rate":
        lines.append(
            f"Open loop: {scenario_settings['arrival']} arrivals, at most {scenario_settings['max_in_flight']} "
            "requests in flight; latency from each request's intended send time."
        )
    for warning in report.get("warnings", []):
        lines.append(f"- warning: {warning}")
    lines += ["", "## Throughput and latency (successful requests, measured window)", ""]
    header = [load_header(report), "window s", "requests", "images", "images/s", "requests/s"]
    header += [f"{name} ms" for name, _ in PERCENTILES] + ["max ms", "errors", "valid"]
    rows = []
    for step in report["steps"]:
        latency = step["latency_us"] or {}
        rows.append([
            load_cell(step), f"{step['window_s']:.2f}", str(step["window_requests"]["ok"]),
            str(step["images_ok"]), rate(step["images_per_s"]), rate(step["requests_per_s"]),
            *[_latency_cell(step, name) for name, _ in PERCENTILES], ms(latency.get("max")),
            str(step["errors_total"]), "yes" if step["valid"] else "**no**",
        ])
    lines += _table(header, rows)
    lines += [
        "",
        "\\* fewer samples than needed to claim this percentile (needed: "
        + ", ".join(f"{name} {n:,}" for name, n in report["method"]["percentile_min_samples"].items())
        + ").",
        "",
    ]
    if report["scenario"] == "rate":
        lines += _open_loop_section(report)
    if any(step.get("server") for step in report["steps"]):
        lines += _server_section(report)
    lines += ["## Accounting (whole step, warm-up included)", ""]
    rows = [[load_cell(step), *[str(step[name]) for name in COUNT_FIELDS],
             "yes" if step["identity_holds"] else "**no**"] for step in report["steps"]]
    lines += _table([load_header(report), *COUNT_FIELDS, "issued = sum"], rows)
    if report.get("workers"):
        lines += _workers_section(report)
    error_rows = [
        [load_cell(step), error["outcome"], error["code"], error["message"].replace("|", "\\|"),
         str(error["count"]), f"{error['first_s']:.3f}", f"{error['last_s']:.3f}"]
        for step in report["steps"] for error in step["errors"]
    ]
    if error_rows:
        lines += ["", "## Errors", ""]
        lines += _table([load_header(report), "outcome", "code", "message", "count", "first s", "last s"], error_rows)
    invalid_steps = [step for step in report["steps"] if not step["valid"]]
    if invalid_steps:
        lines += ["", "## Invalid steps", ""]
        lines += [f"- {step_load(step)}: {'; '.join(step['invalid_reasons'])}" for step in invalid_steps]
    lines += [
        "",
        "## Method",
        "",
        f"- Latency: {report['method']['latency']}.",
        f"- Throughput: {report['method']['throughput']}.",
        f"- Accounting: {report['method']['accounting']}.",
    ]
    if report["method"].get("open_loop"):
        lines.append(f"- Open loop: {report['method']['open_loop']}.")
    if report["method"].get("server"):
        lines.append(f"- Server side: {report['method']['server']}.")
    return "\n".join([*lines, ""])


def _open_loop_section(report: dict) -> list[str]:
    header = ["rate/s", "scheduled", "sent", "sent/s", "late", "not sent", "lateness p99 ms", "lateness max ms",
              "service p50 ms", "service p99 ms", "client-bound"]
    rows = []
    for step in report["steps"]:
        open_loop, service = step["open_loop"], step["service_time_us"] or {}
        lateness = open_loop["send_lateness_us"] or {}
        rows.append([
            load_cell(step), str(open_loop["scheduled"]), str(open_loop["sent"]),
            rate(open_loop["achieved_send_rate_per_s"]), str(open_loop["late_sends"]), str(open_loop["not_sent"]),
            ms(lateness.get("p99")), ms(lateness.get("max")), ms(service.get("p50")), ms(service.get("p99")),
            "**yes**" if open_loop["client_bound"] else "no",
        ])
    return ["## Open-loop sends (measured window)", "", *_table(header, rows), ""]


def _workers_section(report: dict) -> list[str]:
    rows = []
    for worker in report["workers"]:
        for step in worker["steps"]:
            rows.append([
                str(worker["index"]), str(worker["pid"]), str(step["index"]),
                *[str(step[name]) for name in COUNT_FIELDS], "lost" if worker["lost"] else "complete",
            ])
    return ["", "## Workers (their counts add up to the steps')", "",
            *_table(["worker", "pid", "step", *COUNT_FIELDS, "report"], rows)]


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _server_section(report: dict) -> list[str]:
    header = [load_header(report), "interval s", "inferences", "avg batch", "queue ms", "compute ms",
              "GPU util %", "GPU W", "images/J"]
    rows = []
    for step in report["steps"]:
        server = step.get("server")
        if not server:
            rows.append([load_cell(step), *["–"] * (len(header) - 1)])
            continue
        gpu = server["gpu"] or {}
        utilization = gpu.get("utilization_mean")
        watts = gpu.get("power_w_from_energy")
        rows.append([
            load_cell(step), f"{server['scrape_interval_s']:.2f}", str(server["inference_count"]),
            _number(server["avg_batch_size"]), _number(server["queue_ms"], 3), _number(server["compute_ms"], 3),
            _number(None if utilization is None else utilization * 100, 1),
            _number(watts if watts is not None else gpu.get("power_w_mean_of_scrapes"), 1),
            _number(gpu.get("images_per_joule")),
        ])
    return [f"## Server side (scraped from {report.get('server_metrics_url')})", "",
            "Per successful request, over the scrape interval around each measured window.", "",
            *_table(header, rows), ""]
