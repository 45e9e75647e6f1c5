"""``report.md``: the report document rendered as Markdown (from the JSON, never from live objects)."""

from __future__ import annotations

from ipsbench.loadgen.report.cells import (  # noqa: F401 - ms, rate, load_header, load_cell: the console table's helpers
    Flag,
    TableData,
    headline_words,
    load_cell,
    load_header,
    ms,
    open_loop,
    payload_mode,
    rate,
    request_log_words,
)
from ipsbench.loadgen.report.p40 import p40_table, what_numbers_mean
from ipsbench.loadgen.report.schema import check_report, step_load
from ipsbench.loadgen.report.tables import (
    accounting_table,
    breakdown_table,
    errors_table,
    open_loop_table,
    server_table,
    slo_search_line,
    slo_table,
    steps_table,
    workers_table,
)


def _cell(text: str) -> str:
    escaped = str(text).replace("|", "\\|").replace("\n", " ")
    return f"**{escaped}**" if isinstance(text, Flag) else escaped


def _table(table: TableData) -> list[str]:
    header = table.header
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += ["\\" + note if note.startswith("*") else note for note in table.notes]  # a literal star
    return lines


def verdict_line(report: dict) -> str:
    verdict = "VALID" if report["valid"] else "INVALID"
    line = f"**{verdict}**, {report['status']}"
    if report.get("interrupted_by"):
        line += f" ({report['interrupted_by']})"
    if report.get("verdict"):
        line += f"; verdict **{report['verdict']}**"
    slo = report.get("slo")
    if slo and slo.get("verdict"):
        line += f"; SLO **{slo['verdict']}**"
    return line + f"; started {report['started_at']}, {report['duration_s']:.1f} s."


def setup_lines(report: dict) -> list[str]:
    """What was loaded and how: model, payload, warm-up, deadline, open-loop arrivals."""
    settings, model, payload = report["settings"], report["model"], report["payload"]
    scenario_settings = settings.get(report["scenario"]) or {}
    model_input = model.get("input") or {}
    payload_text = f"payload {payload_mode(payload)}, {payload.get('images_per_request', 1)} image(s) per request"
    if payload.get("distinct_requests") is not None:
        payload_text += f", {payload['distinct_requests']} distinct requests"
        if payload.get("request_bytes") is not None:
            payload_text += f" of {payload['request_bytes']:,} bytes"
    if payload.get("description") or payload.get("source"):
        payload_text += f" ({payload.get('description') or payload['source']})"
    lines = []
    target = report.get("target") or {}
    server = target.get("server") or {}
    if server.get("name"):
        lines.append(f"Target `{target.get('address')}`: {server['name']} {server.get('version', '')}".rstrip() + ".")
    lines.append(f"Model `{model['name']}` input `{model_input.get('name')}` {model_input.get('datatype')} "
                 f"{model_input.get('shape')}; {payload_text}.")
    warmup_s, drain_s = scenario_settings.get("warmup_s"), scenario_settings.get("drain_s")
    timing = (f"Each step: {warmup_s:g} s warm-up (counted, not measured), then the measured window"
              if warmup_s is not None else "Each step: the measured window")
    timing += f"; RPC deadline {settings['target']['deadline_s']:g} s"
    timing += f"; drain bound {drain_s:g} s." if drain_s is not None else "."
    lines.append(timing)
    if open_loop(report):
        lines.append(
            f"Open loop: {scenario_settings.get('arrival')} arrivals, at most {scenario_settings.get('max_in_flight')} "
            "requests in flight; latency from each request's intended send time."
        )
    if request_log := request_log_words(report):
        lines.append(request_log)
    return lines


def render_markdown(report: dict) -> str:
    check_report(report)
    model = report["model"]
    lines = [
        f"# ipsbench-load {report['scenario']}: {model['name']} on {report['target']['address']}",
        "",
        verdict_line(report),
    ]
    if headline := headline_words(report):
        lines += ["", f"**Headline: {headline}.**"]
    lines += [f"- {reason}" for reason in report.get("invalid_reasons", [])]
    if report.get("slo"):
        lines += ["", *_slo_section(report["slo"])]
    lines += ["", *setup_lines(report)]
    lines += [f"- warning: {warning}" for warning in report.get("warnings", [])]
    lines += ["", "## Throughput and latency (successful requests, measured window)", "",
              *_table(steps_table(report)), ""]
    if open_loop(report):
        lines += ["## Open-loop sends (measured window)", "", *_table(open_loop_table(report)), ""]
    if any(step.get("server") for step in report["steps"]):
        lines += [f"## Server side (scraped from {report.get('server_metrics_url')})", "",
                  *_table(server_table(report)), ""]
        lines += ["## Where the time went (mean per request)", "", *_table(breakdown_table(report)), ""]
    if p40 := p40_table(report):
        lines += ["## Engine and end to end (P40-style)", "", *_table(p40), "", "### What these numbers mean", ""]
        for paragraph in what_numbers_mean(report):
            lines += [paragraph, ""]
    lines += ["## Accounting (whole step, warm-up included)", "", *_table(accounting_table(report))]
    if workers := workers_table(report):
        lines += ["", "## Workers (their counts add up to the steps')", "", *_table(workers)]
    if errors := errors_table(report):
        lines += ["", "## Errors", "", *_table(errors)]
    invalid_steps = [step for step in report["steps"] if not step["valid"]]
    if invalid_steps:
        lines += ["", "## Invalid steps", ""]
        lines += [f"- {step_load(step)}: {'; '.join(step.get('invalid_reasons', []))}" for step in invalid_steps]
    lines += ["", "## Method", "", *[f"- {line}" for line in method_lines(report)]]
    return "\n".join([*lines, ""])


def method_lines(report: dict) -> list[str]:
    method = report["method"]
    lines = [f"Latency: {method['latency']}.", f"Throughput: {method['throughput']}.",
             f"Accounting: {method['accounting']}."]
    for key, label in (("open_loop", "Open loop"), ("server", "Server side"), ("stability", "Stability"),
                       ("client", "Client"), ("slo", "SLO")):
        if method.get(key):
            lines.append(f"{label}: {method[key]}.")
    return lines


def _slo_section(slo: dict) -> list[str]:
    lines = [f"## SLO: {slo.get('verdict', '–')}", "", *_table(slo_table(slo))]
    if search := slo_search_line(slo):
        lines += ["", search]
    return [*lines, ""]
