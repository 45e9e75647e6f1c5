"""``report.md``: the report document rendered as Markdown (from the JSON, never from live objects)."""

from __future__ import annotations

from ipsbench.loadgen.report.cells import Flag, TableData
from ipsbench.loadgen.report.p40 import p40_table
from ipsbench.loadgen.report.schema import check_report, has_open_loop_steps, step_load
from ipsbench.loadgen.report.sentences import (
    Code,
    Sentence,
    Strong,
    bottleneck_lines,
    headline_words,
    method_lines,
    report_title,
    setup_lines,
    simulated_line,
    slo_search_line,
    verdict_line,
    what_numbers_mean,
)
from ipsbench.loadgen.report.tables import (
    accounting_table,
    breakdown_table,
    errors_table,
    open_loop_table,
    server_table,
    slo_table,
    steps_table,
    workers_table,
)


def inline(sentence: Sentence) -> str:
    """A sentence in Markdown: strong parts in ``**``, code in backticks."""
    return "".join(f"**{part}**" if isinstance(part, Strong) else f"`{part}`" if isinstance(part, Code) else part
                   for part in sentence)


def _cell(text: str) -> str:
    escaped = str(text).replace("|", "\\|").replace("\n", " ")
    return f"**{escaped}**" if isinstance(text, Flag) else escaped


def table_lines(table: TableData) -> list[str]:
    header = table.header
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += ["\\" + note if note.startswith("*") else note for note in table.notes]  # a literal star
    return lines


def render_markdown(report: dict) -> str:
    check_report(report)
    lines = [f"# {report_title(report)}", ""]
    if simulated := simulated_line(report):
        lines += [inline(simulated), ""]
    lines.append(inline(verdict_line(report)))
    if headline := headline_words(report):
        lines += ["", f"**Headline: {headline}.**"]
    lines += [f"- {reason}" for reason in report.get("invalid_reasons", [])]
    if report.get("slo"):
        lines += ["", *_slo_section(report["slo"])]
    lines += ["", *(inline(line) for line in setup_lines(report))]
    lines += [f"- warning: {warning}" for warning in report.get("warnings", [])]
    lines += ["", "## Throughput and latency (successful requests, measured window)", "",
              *table_lines(steps_table(report)), ""]
    if bottlenecks := bottleneck_lines(report):
        lines += ["## Bottleneck per step", "", *(f"- {inline(line)}" for line in bottlenecks), ""]
    if has_open_loop_steps(report):
        lines += ["## Open-loop sends (measured window)", "", *table_lines(open_loop_table(report)), ""]
    if any(step.get("server") for step in report["steps"]):
        lines += [f"## Server side (scraped from {report.get('server_metrics_url')})", "",
                  *table_lines(server_table(report)), ""]
        lines += ["## Where the time went (mean per request)", "", *table_lines(breakdown_table(report)), ""]
    if p40 := p40_table(report):
        lines += ["## Engine and end to end (P40-style)", "", *table_lines(p40), "", "### What these numbers mean", ""]
        for paragraph in what_numbers_mean(report):
            lines += [inline(paragraph), ""]
    lines += ["## Accounting (whole step, warm-up included)", "", *table_lines(accounting_table(report))]
    if workers := workers_table(report):
        lines += ["", "## Workers (their counts add up to the steps')", "", *table_lines(workers)]
    if errors := errors_table(report):
        lines += ["", "## Errors", "", *table_lines(errors)]
    invalid_steps = [step for step in report["steps"] if not step["valid"]]
    if invalid_steps:
        lines += ["", "## Invalid steps", ""]
        lines += [f"- {step_load(step)}: {'; '.join(step.get('invalid_reasons', []))}" for step in invalid_steps]
    lines += ["", "## Method", "", *[f"- {inline(line)}" for line in method_lines(report)]]
    return "\n".join([*lines, ""])


def _slo_section(slo: dict) -> list[str]:
    lines = [f"## SLO: {slo.get('verdict', '–')}", "", *table_lines(slo_table(slo))]
    if search := slo_search_line(slo):
        lines += ["", search]
    return [*lines, ""]
