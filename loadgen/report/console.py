"""The summary table printed to the terminal after a run, rendered from the report document."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ipsbench.loadgen.report.cells import client_bound, latency_cell, load_cell, load_header, ms, rate
from ipsbench.loadgen.report.schema import has_open_loop_steps, step_load
from ipsbench.loadgen.report.sentences import RESOURCE_WORDS, headline_words, simulated_words

CLIENT_BOUND_MARK = "!"
MAX_TABLE_WIDTH = 400


def _latency(step: dict, name: str) -> str:
    return latency_cell(step, name)


def _open_loop_cells(step: dict) -> list[str]:
    open_loop, service = step["open_loop"], step["service_time_us"] or {}
    mark = CLIENT_BOUND_MARK if client_bound(step) else ""
    return [rate(open_loop["achieved_send_rate_per_s"]) + mark, ms(service.get("p99")), str(open_loop["late_sends"])]


def _objective_words(objective: dict) -> str:
    """``p99 81.2 ms <= 100ms met`` / ``error_rate 2.00% > 1.00% FAIL``."""
    if objective.get("measured_us") is not None or objective.get("target_us") is not None:
        measured = ms(objective.get("measured_us")) + " ms"
        target = str(objective.get("target") or ms(objective.get("target_us")) + " ms")
    else:
        measured, target = f"{objective.get('measured', 0):.2%}", f"{objective.get('target', 0):.2%}"
    short = objective.get("enough_samples") is False
    outcome = "met" if objective.get("met") else "too few samples" if short else "FAIL"
    return f"{objective.get('name')} {measured} (target {target}) {outcome}"


def summary_table(report: dict) -> Table:
    verdict = "VALID" if report["valid"] else "INVALID"
    if report.get("verdict") and report["verdict"] not in ("PASS", verdict):
        verdict += f" ({report['verdict']})"
    is_open_loop = has_open_loop_steps(report)
    simulated = simulated_words(report)
    table = Table(
        title=(f"{simulated}: " if simulated else "")
        + f"{report['model']['name']} @ {report['target']['address']}: {verdict}, {report['status']}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    columns = [load_header(report)] + (["sent/s"] if is_open_loop else [])
    columns += ["requests", "images/sec", "p50 ms", "p90 ms", "p95 ms", "p99 ms"]
    columns += ["service p99 ms", "late"] if is_open_loop else []
    for column in [*columns, "errors"]:
        table.add_column(column, justify="right", no_wrap=True)
    for step in report["steps"]:
        extra = _open_loop_cells(step) if is_open_loop else []
        table.add_row(
            load_cell(step),
            *extra[:1],
            str(step["window_requests"]["ok"]),
            rate(step["images_per_s"]),
            *[_latency(step, name) for name in ("p50", "p90", "p95", "p99")],
            *extra[1:],
            str(step["errors_total"]),
        )
    return table


def print_summary(report: dict, markdown_path, console: Console | None = None) -> None:
    console = console or Console()
    table = summary_table(report)
    needed = Measurement.get(console, console.options.update_width(MAX_TABLE_WIDTH), table).maximum
    if needed > console.width:  # wrap in a narrow terminal rather than cut numbers short
        console = Console(width=needed, file=console.file)
    console.print(table)
    if simulated := simulated_words(report):
        console.print(f"{simulated}: no device computed; each batch took the time a measured profile states",
                      markup=False, soft_wrap=True)
    if headline := headline_words(report):
        console.print(f"headline: {headline}", markup=False)
    if any(step["latency_us"] and step["unsupported_percentiles"] for step in report["steps"]):
        console.print("* fewer samples than needed to claim this percentile")
    if has_open_loop_steps(report):
        console.print("latency from each request's intended send time; service time from its actual send")
    for step in report["steps"]:
        bottleneck = step.get("bottleneck") or {}
        if bottleneck.get("resource"):
            console.print(f"bottleneck at {step_load(step)}: {RESOURCE_WORDS.get(bottleneck['resource'])}: "
                          f"{bottleneck.get('sentence')}", markup=False, soft_wrap=True)
        if client_bound(step):
            reasons = (step.get("client") or {}).get("reasons") or ["sent below the scheduled requests"]
            console.print(f"{CLIENT_BOUND_MARK} client-bound at {step_load(step)}: {'; '.join(reasons)}; "
                          "not a measure of the server's capacity", markup=False)
        stability = step.get("stability")
        if stability and not stability.get("stable"):
            console.print(f"UNSTABLE at {step_load(step)}: windows did not agree within "
                          f"{stability.get('tolerance', 0):.0%} after {stability.get('trials')} trials", markup=False)
    slo = report.get("slo")
    if slo:
        objectives = ", ".join(_objective_words(objective) for objective in slo.get("objectives") or [])
        console.print(f"SLO {slo.get('verdict')}: {objectives}", markup=False)
    workers = report.get("workers") or []
    if workers:
        lost = sum(worker["lost"] is not None for worker in workers)
        console.print(f"{len(workers)} worker processes" + (f", {lost} lost" if lost else ""))
    for reason in report["invalid_reasons"]:
        console.print(f"invalid: {reason}", markup=False)
    where = markdown_path if markdown_path is not None else "not written to any folder (report.json printed above)"
    console.print(f"report: {where}", markup=False, soft_wrap=True)
