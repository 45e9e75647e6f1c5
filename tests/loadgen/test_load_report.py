"""report.json is built from recorded steps, judged valid or not, and rendered to Markdown and a table."""
import io
import json

import grpc
import pytest
from rich.console import Console

from loadgen.recorder import StepRecord
from loadgen.report.console import print_summary
from loadgen.report.markdown import render_markdown
from loadgen.report.schema import COUNT_FIELDS, SCHEMA_VERSION, build_report, read_report, write_report

MS = 1_000_000


def recorded_step(index=0, concurrency=2, ok=300, rejected=0, abandoned=0) -> StepRecord:
    step = StepRecord(index=index, concurrency=concurrency, warmup_s=1.0, window_s=2.0, start_ns=0)
    for number in range(ok):
        step.record_issued()
        step.record_ok(1_500 * MS, 1_500 * MS + (3 + number % 5) * MS, images=4)
    for _ in range(rejected):
        step.record_issued()
        step.record_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size", 1_500 * MS, 1_501 * MS)
    for _ in range(abandoned):
        step.record_issued()
        step.record_abandoned()
    return step


def report_of(steps, max_error_rate=0.0, interrupted_by=None) -> dict:
    return build_report(
        steps=steps,
        settings={"target": {"deadline_s": 30.0}, "sweep": {"warmup_s": 1.0, "drain_s": 10.0}},
        target={"address": "127.0.0.1:8001", "server": {}},
        model={"name": "resnet18", "input": {"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}},
        payload={"encoding": "fp32", "images_per_request": 4, "distinct_requests": 16, "request_bytes": 196_608,
                 "source": "synthetic"},
        scenario="sweep",
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=7.0,
        interrupted_by=interrupted_by,
        max_error_rate=max_error_rate,
    )


def test_valid_report_states_counts_rates_and_latency(tmp_path):
    report = report_of([recorded_step(0, 1), recorded_step(1, 2, abandoned=2)])
    assert report["schema_version"] == SCHEMA_VERSION and report["valid"] and report["status"] == "complete"
    first, second = report["steps"]
    assert first["issued"] == sum(first[name] for name in COUNT_FIELDS[1:]) == 300
    assert second["abandoned"] == 2 and second["valid"]
    assert first["images_ok"] == 1200 and first["images_per_s"] == 600.0 and first["requests_per_s"] == 150.0
    latency = first["latency_us"]
    assert 3000 <= latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"] <= 7010
    assert report["totals"]["issued"] == 602

    path = write_report(report, tmp_path / "out")
    assert read_report(path) == json.loads(json.dumps(report))


def test_errors_broken_down_and_error_rate_bound():
    report = report_of([recorded_step(rejected=30)], max_error_rate=0.05)
    step = report["steps"][0]
    assert step["rejected"] == 30 and step["errors_total"] == 30 and step["identity_holds"]
    assert step["errors"][0] | {"first_s": 0, "last_s": 0} == {
        "outcome": "rejected", "code": "UNAVAILABLE", "message": "Exceeds maximum queue size", "count": 30,
        "first_s": 0, "last_s": 0,
    }
    assert not report["valid"] and "error rate" in report["invalid_reasons"][0]
    assert report_of([recorded_step(rejected=30)], max_error_rate=0.5)["valid"]


def test_broken_identity_or_no_success_is_invalid():
    broken = recorded_step()
    broken.record_issued()  # a request that was never resolved
    report = report_of([broken])
    assert not report["valid"] and "issued 301 != accounted 300" in report["invalid_reasons"][0]

    report = report_of([recorded_step(ok=0, rejected=5)], max_error_rate=1.0)
    assert not report["valid"]
    assert "no successful request at all" in report["invalid_reasons"]


def test_markdown_and_console_are_rendered_from_the_json():
    report = json.loads(json.dumps(report_of([recorded_step(0, 1), recorded_step(1, 4, rejected=3)])))
    markdown = render_markdown(report)
    assert "| concurrency | window s | requests | images | images/s |" in markdown
    assert "| 4 | 2.00 | 300 | 1200 | 600.0 | 150.0 |" in markdown
    assert "UNAVAILABLE" in markdown and "Exceeds maximum queue size" in markdown
    assert "**INVALID**" in markdown

    out = io.StringIO()
    print_summary(report, "reports/x/report.md", Console(file=out, width=80))
    text = out.getvalue()
    for column in ("concurrency", "requests", "images/sec", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors"):
        assert column in text
    assert "600.0" in text and text.rstrip().endswith("report: reports/x/report.md")


def test_unknown_schema_version_is_refused(tmp_path):
    report = report_of([recorded_step()])
    with pytest.raises(ValueError, match="schema_version"):
        render_markdown({**report, "schema_version": 99})
    with pytest.raises(ValueError, match="lacks"):
        render_markdown({**report, "steps": [{"concurrency": 1}]})
