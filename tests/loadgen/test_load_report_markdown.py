"""report.md and the terminal summary: the SLO verdict beside its targets, stability and client-bound flags, the
P40-style table, and reports without the newer fields."""
import io
import json

import pytest
from load_helpers import sweep_report
from rich.console import Console

from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.report.console import print_summary
from ipsbench.loadgen.report.markdown import render_markdown
from ipsbench.loadgen.slo import parse_objective

MS = 1_000_000


def recorded_step(index=0, concurrency=1, ok=300, cpu_percent=None) -> StepRecord:
    """A 2 s window of ``ok`` one-image requests of 3 to 7 ms; ``cpu_percent``: the load generator's own CPU."""
    step = StepRecord(index=index, concurrency=concurrency, warmup_s=1.0, window_s=2.0, start_ns=0)
    for number in range(ok):
        step.record_issued()
        step.record_ok(1_500 * MS, 1_500 * MS + (3 + number % 5) * MS, images=1)
    if cpu_percent is not None:
        step.cpu_percent = [cpu_percent]
    return step


def report_of(steps, objectives=None, engine=None) -> dict:
    """The report as its JSON file holds it (read back, as renderers see it)."""
    return json.loads(json.dumps(sweep_report(steps, objectives=objectives, engine=engine)))


def cells(markdown: str, first: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_slo_section_puts_each_measurement_beside_its_target():
    report = report_of([recorded_step()], objectives=[parse_objective("p50=10ms"), parse_objective("p99=10ms")])
    markdown = render_markdown(report)
    assert "## SLO: INCONCLUSIVE" in markdown and "SLO **INCONCLUSIVE**" in markdown
    assert "--duration" in markdown  # the duration that would settle it
    assert cells(markdown, "objective") == ["objective", "target", "measured", "samples", "verdict", "why"]
    assert cells(markdown, "p50") == ["p50", "10ms", "5.00 ms", "300", "PASS", ""]
    # p99 is under its target but 300 samples cannot claim it: neither met nor missed, and the table says why
    assert cells(markdown, "p99") == ["p99", "10ms", "7.00 ms", "**300 (too few to claim)**", "**INCONCLUSIVE**",
                                      "300 samples, 10000 needed to claim p99"]
    assert cells(markdown, "error_rate")[1:5] == ["0.00%", "0.00%", "300", "PASS"]


def test_a_met_slo_passes():
    report = report_of([recorded_step()], objectives=[parse_objective("p50=10ms")])
    assert "## SLO: PASS" in render_markdown(report)


def test_stability_column_and_client_bound_flags():
    report = report_of([recorded_step(0, 1), recorded_step(1, 2, cpu_percent=97.0)])
    report["steps"][0]["stability"] = {"stable": True, "trials": 3, "tolerance": 0.1, "windows": []}
    report["steps"][1]["stability"] = {"stable": False, "trials": 10, "tolerance": 0.1, "windows": []}
    markdown = render_markdown(report)
    header = cells(markdown, "concurrency")
    assert header[-2:] == ["stability", "client"]
    assert cells(markdown, "1")[-2:] == ["stable (3)", "ok"]  # no CPU reading for it, and not bound
    assert cells(markdown, "2")[header.index("stability")] == "**UNSTABLE (10)**"
    assert cells(markdown, "2")[header.index("client")] == "**client-bound CPU 97%**"
    assert "2: client-bound: the load generator used 97% of a core" in markdown

    out = io.StringIO()
    print_summary(report, "r/report.md", Console(file=out, width=100))
    text = out.getvalue()
    assert "! client-bound at concurrency 2: the load generator used 97% of a core" in text
    assert "UNSTABLE at concurrency 2" in text and "after 10 trials" in text


def test_engine_figures_give_the_p40_table_and_what_the_numbers_mean():
    engine = {"kind": "engine_bench", "model": "resnet18", "precision": "fp16", "device": "cuda",
              "device_name": "NVIDIA H100", "results": [
                  {"batch_size": 1, "images_per_s": 600.0, "latency_ms": {"p50": 1.6, "p99": 1.9}},
                  {"batch_size": 8, "images_per_s": 2400.0, "latency_ms": {"p50": 3.3, "p99": 3.5}}]}
    report = report_of([recorded_step()], engine=engine)  # 150 images/s end to end
    markdown = render_markdown(report)
    assert "## Engine and end to end (P40-style)" in markdown
    assert cells(markdown, "resnet18")[:6] == ["resnet18", "fp16", "1", "engine (forward pass, in-process)",
                                                "600.0", "1.60"]
    end_to_end = next(line for line in markdown.splitlines() if "end to end, concurrency 1" in line)
    assert "| 150.0 |" in end_to_end and "0.25 (vs batch 1)" in end_to_end
    assert "is 6% of the best engine rate, 2,400.0 images/sec (batch 8)" in markdown
    # 50,000 images at 150/s and at 2,400/s
    assert "take 5.6 min; at the engine's 2,400.0 images/sec, 21 s." in markdown


def test_a_report_without_the_newer_fields_still_renders():
    report = report_of([recorded_step()])
    for key in ("slo", "engine", "verdict", "accuracy"):
        report.pop(key, None)
    for step in report["steps"]:
        for key in ("stability", "client", "phase", "slo"):
            step.pop(key, None)
    report["payload"] = {"encoding": "fp32", "images_per_request": 1}
    markdown = render_markdown(report)
    assert "## SLO" not in markdown and "stability" not in cells(markdown, "concurrency")
    assert "payload fp32, 1 image(s) per request." in markdown
    assert "**Engine** figures are absent" in markdown
    with pytest.raises(ValueError, match="schema_version"):
        render_markdown({**report, "schema_version": 1})
