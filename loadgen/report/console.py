"""The summary table printed to the terminal after a run, rendered from the report document."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from loadgen.report.markdown import ms, rate


def _latency(step: dict, name: str) -> str:
    latency = step["latency_us"]
    if latency is None:
        return "–"
    return ms(latency[name]) + ("*" if name in step["unsupported_percentiles"] else "")


def summary_table(report: dict) -> Table:
    verdict = "VALID" if report["valid"] else "INVALID"
    table = Table(
        title=f"{report['model']['name']} @ {report['target']['address']}: {verdict}, {report['status']}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for column in ("concurrency", "requests", "images/sec", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right", no_wrap=True)
    for step in report["steps"]:
        table.add_row(
            str(step["concurrency"]),
            str(step["window_requests"]["ok"]),
            rate(step["images_per_s"]),
            *[_latency(step, name) for name in ("p50", "p90", "p95", "p99")],
            str(step["errors_total"]),
        )
    return table


def print_summary(report: dict, markdown_path, console: Console | None = None) -> None:
    console = console or Console()
    table = summary_table(report)
    needed = Measurement.get(console, console.options, table).maximum
    if needed > console.width:  # wrap in a narrow terminal rather than cut numbers short
        console = Console(width=needed, file=console.file)
    console.print(table)
    if any(step["latency_us"] and step["unsupported_percentiles"] for step in report["steps"]):
        console.print("* fewer samples than needed to claim this percentile")
    for reason in report["invalid_reasons"]:
        console.print(f"invalid: {reason}", markup=False)
    console.print(f"report: {markdown_path}", markup=False, soft_wrap=True)
