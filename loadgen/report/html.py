"""``report.html``: one self-contained page rendered from the report document — inline CSS, inline SVG plots, no
scripts and nothing fetched (its Content-Security-Policy forbids any request), so it opens offline and can be mailed.
"""

from __future__ import annotations

import html

from ipsbench.loadgen.report.cells import Flag, TableData, payload_mode, verdict_is_good
from ipsbench.loadgen.report.p40 import p40_table
from ipsbench.loadgen.report.plots import Plot, all_plots
from ipsbench.loadgen.report.schema import check_report, has_open_loop_steps
from ipsbench.loadgen.report.sentences import (
    NO_ERRORS,
    NO_SCRAPE,
    NO_SLO,
    ONE_PROCESS,
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

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 78rem;
       padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 0.2rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; } td.text { text-align: left; } td.wrap { white-space: normal; }
td.flag, .bad { color: #b42318; font-weight: 600; }
.verdict { display: inline-block; padding: 0.1rem 0.6rem; border-radius: 0.3rem; font-weight: 700; color: #fff; }
.verdict.good { background: #1a7f37; } .verdict.bad { background: #b42318; color: #fff; }
.note { color: #57606a; font-size: 0.85rem; } figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; } figcaption { font-weight: 600; }
code { background: #f6f8fa; padding: 0 0.2rem; }
"""
_TEXT_COLUMNS = {"message", "measured", "outcome", "code", "objective", "model", "precision", "phase", "client",
                 "stability", "report", "why", "SLO"}
_WRAPPED_COLUMNS = {"message", "why"}


def _inline(sentence: Sentence) -> str:
    """A sentence in HTML, each part escaped: strong parts in ``<strong>``, code in ``<code>``."""
    return "".join(
        f"<strong>{html.escape(part)}</strong>" if isinstance(part, Strong)
        else f"<code>{html.escape(part)}</code>" if isinstance(part, Code) else html.escape(part)
        for part in sentence
    )


def table_html(table: TableData, table_id: str) -> str:
    header = "".join(f"<th>{html.escape(name)}</th>" for name in table.header)
    rows = []
    for row in table.rows:
        cells = []
        for name, cell in zip(table.header, row):
            classes = [c for c in ("flag" if isinstance(cell, Flag) else "",
                                   "text" if name in _TEXT_COLUMNS else "",
                                   "wrap" if name in _WRAPPED_COLUMNS else "") if c]
            class_attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{class_attr}>{html.escape(str(cell))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in table.notes)
    return (f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            + notes)


def _section(section_id: str, title: str, *parts: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def _note(sentence: Sentence) -> str:
    return f'<p class="note">{_inline(sentence)}</p>'


def _badge(text: str, good: bool) -> str:
    return f'<span class="verdict {"good" if good else "bad"}">{html.escape(text)}</span>'


def _figure(plot: Plot) -> str:
    if plot.svg is None:
        return f'<p class="note" id="plot-{plot.name}-absent">{html.escape(plot.title)}: {html.escape(plot.note)}</p>'
    note = f'<p class="note">{html.escape(plot.note)}</p>' if plot.note else ""
    return (f'<figure id="plot-{plot.name}"><figcaption>{html.escape(plot.title)}</figcaption>{plot.svg}'
            f"{note}</figure>")


def _summary(report: dict) -> str:
    model = report["model"]
    status = report["status"] + (f" ({report['interrupted_by']})" if report.get("interrupted_by") else "")
    badges = [_badge("VALID" if report["valid"] else "INVALID", report["valid"])]
    if report.get("verdict"):
        badges.append(_badge(f"verdict {report['verdict']}", verdict_is_good(report["verdict"])))
    if (report.get("slo") or {}).get("verdict"):
        badges.append(_badge(f"SLO {report['slo']['verdict']}", report["slo"]["verdict"] == "PASS"))
    parts = [
        f"<p>{' '.join(badges)} "
        + f"status <strong>{html.escape(status)}</strong>; {html.escape(report['scenario'])} of "
        f"<code>{html.escape(model['name'])}</code> on <code>{html.escape(report['target']['address'])}</code>, "
        f"started {html.escape(report['started_at'])}, {report['duration_s']:.1f} s; payload "
        f"{html.escape(payload_mode(report['payload']))}.</p>",
    ]
    if headline := headline_words(report):
        parts.append(f'<p id="headline"><strong>Headline: {html.escape(headline)}</strong></p>')
    if report.get("invalid_reasons"):
        parts.append('<ul class="bad" id="invalid-reasons">'
                     + "".join(f"<li>{html.escape(reason)}</li>" for reason in report["invalid_reasons"]) + "</ul>")
    parts += [f"<p>{_inline(line)}</p>" for line in setup_lines(report)]
    if report.get("warnings"):
        parts.append("<ul>" + "".join(f"<li>warning: {html.escape(w)}</li>" for w in report["warnings"]) + "</ul>")
    slo = report.get("slo")
    if slo:
        parts.append(f"<h3>SLO: {html.escape(str(slo.get('verdict')))}</h3>" + table_html(slo_table(slo), "slo-table"))
        if search := slo_search_line(slo):
            parts.append(f"<p>{html.escape(search)}</p>")
    else:
        parts.append(_note(NO_SLO))
    return _section("summary", "Run summary", *parts)


def render_html(report: dict) -> str:
    check_report(report)
    title = report_title(report)
    plots = {plot.name: plot for plot in all_plots(report)}
    simulated = simulated_line(report)
    body = [f"<h1>{html.escape(title)}</h1>",
            *([f'<p id="simulated" class="bad">{_inline(simulated)}</p>'] if simulated else []),
            _summary(report),
            _section("steps", "Throughput and latency (successful requests, measured window)",
                     table_html(steps_table(report), "steps-table"))]
    if bottlenecks := bottleneck_lines(report):
        body.append(_section("bottleneck", "Bottleneck per step",
                             "<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in bottlenecks) + "</ul>"))
    if has_open_loop_steps(report):
        body.append(_section("open-loop", "Open-loop sends (measured window)",
                             table_html(open_loop_table(report), "open-loop-table")))
    body.append(_section("plots", "Plots", *(_figure(plot) for plot in plots.values())))
    if any(step.get("server") for step in report["steps"]):
        body.append(_section("time-breakdown", "Where the time went (mean per request)",
                             table_html(breakdown_table(report), "breakdown-table")))
        body.append(_section("server", f"Server side (scraped from {report.get('server_metrics_url')})",
                             table_html(server_table(report), "server-table")))
    else:
        body.append(_section("time-breakdown", "Where the time went",
                             _note(NO_SCRAPE)))
    if p40 := p40_table(report):
        meaning = "".join(f"<p>{_inline(paragraph)}</p>" for paragraph in what_numbers_mean(report))
        body.append(_section("p40", "Engine and end to end (P40-style)", table_html(p40, "p40-table"),
                             "<h3>What these numbers mean</h3>", meaning))
    body.append(_section("accounting", "Accounting (whole step, warm-up included)",
                         table_html(accounting_table(report), "accounting-table")))
    errors = errors_table(report)
    body.append(_section("errors", "Errors by code and message",
                         table_html(errors, "errors-table") if errors else _note(NO_ERRORS)))
    workers = workers_table(report)
    body.append(_section("workers", "Workers",
                         table_html(workers, "workers-table") if workers else
                         _note(ONE_PROCESS)))
    body.append(_section("method", "Method",
                         "<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in method_lines(report)) + "</ul>"))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
