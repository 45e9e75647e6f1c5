"""report.json is built from recorded steps, judged valid or not, and rendered to Markdown and a table."""
import csv
import io
import json

import grpc
import pytest
from load_helpers import report_from
from rich.console import Console

from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.report.console import print_summary
from ipsbench.loadgen.report.files import write_reports
from ipsbench.loadgen.report.markdown import render_markdown
from ipsbench.loadgen.report.schema import COUNT_FIELDS, SCHEMA_VERSION, read_report, write_report

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
    return report_from(
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


def rate_step(index=0, rate_per_s=100.0, scheduled=200, sent=200, late_ms=0, capped=0) -> StepRecord:
    """An open-loop step (window [1 s, 3 s)) whose sender sent ``sent`` of ``scheduled`` arrivals; of the rest,
    the first ``capped`` found the in-flight cap reached."""
    step = StepRecord(index=index, concurrency=1, warmup_s=1.0, window_s=2.0, start_ns=0, rate_per_s=rate_per_s)
    for number in range(scheduled):
        intended = 1_000 * MS + number * 10 * MS // 2
        step.record_scheduled(intended)
        if number >= sent:
            step.record_not_sent(intended, capped=number < sent + capped)
            continue
        step.record_issued()
        step.record_send(intended, intended + late_ms * MS)
        step.record_ok(intended + late_ms * MS, intended + (late_ms + 4) * MS, images=1, intended_ns=intended)
    return step


def rate_report(steps, workers=None) -> dict:
    report = report_of(steps)
    report = report_from(
        steps=steps,
        settings={"target": {"deadline_s": 30.0},
                  "rate": {"warmup_s": 1.0, "drain_s": 10.0, "arrival": "poisson", "max_in_flight": 256}},
        target=report["target"], model=report["model"], payload=report["payload"], scenario="rate",
        started_at=report["started_at"], duration_s=7.0, interrupted_by=None, max_error_rate=0.0, workers=workers,
    )
    return json.loads(json.dumps(report))


def test_rate_steps_report_sends_lateness_and_client_bound():
    report = rate_report([rate_step(0, 100.0), rate_step(1, 200.0, scheduled=400, sent=300, late_ms=3)])
    on_time, behind = report["steps"]
    assert on_time["concurrency"] is None and on_time["target_rate_per_s"] == 100.0
    assert on_time["open_loop"] | {"send_lateness_us": None} == {
        "senders": 1, "scheduled": 200, "sent": 200, "scheduled_rate_per_s": 100.0, "achieved_send_rate_per_s": 100.0,
        "late_sends": 0, "not_sent": 0, "not_sent_in_flight_cap": 0, "censored": 0, "unsent_cause": None,
        "send_lateness_us": None, "client_bound": False,
    }
    assert on_time["latency_scheduled_us"]["censored"] == 0 and on_time["latency_scheduled_us"]["lower_bound"] == []
    assert on_time["latency_scheduled_us"]["p99"] == on_time["latency_us"]["p99"]
    assert behind["open_loop"]["late_sends"] == 300 and behind["open_loop"]["not_sent"] == 100
    assert behind["open_loop"]["send_lateness_us"]["max"] == pytest.approx(3_000, rel=1e-3)
    assert behind["open_loop"]["client_bound"]  # 300 of 400 sent: 75%
    assert behind["open_loop"]["unsent_cause"] == "client" and behind["open_loop"]["censored"] == 100
    assert behind["latency_us"]["min"] == pytest.approx(7_000, rel=1e-3)  # from the intended time
    assert behind["service_time_us"]["max"] == pytest.approx(4_000, rel=1e-3)  # from the send
    assert report["valid"] and len(report["warnings"]) == 1 and "client-bound" in report["warnings"][0]
    assert "200 requests/s" in report["warnings"][0]
    assert "intended send time" in report["method"]["open_loop"]


def test_L21_arrivals_the_in_flight_cap_held_back_are_a_saturated_server_counted_as_misses():
    """The target did not keep up: 100 of 400 arrivals found --max-in-flight requests in flight. That is the
    server's result, not a fault of the run: the step stays valid, those arrivals enter the latency as misses
    censored at the window's end, and the report says the server was saturated."""
    report = rate_report([rate_step(0, 100.0), rate_step(1, 200.0, scheduled=400, sent=300, capped=100)])
    on_time, held = report["steps"]
    assert on_time["valid"] and on_time["open_loop"]["not_sent_in_flight_cap"] == 0
    assert held["open_loop"]["not_sent"] == held["open_loop"]["not_sent_in_flight_cap"] == 100
    assert held["open_loop"]["unsent_cause"] == "server_saturated"
    assert not held["open_loop"]["client_bound"] and not held["client"]["client_bound"]
    assert held["valid"] and report["valid"] and held["invalid_reasons"] == []
    (warning,) = report["warnings"]
    assert warning.startswith("step 1 (200 requests/s): the server was saturated, 100 of 400 scheduled arrivals")
    assert warning in render_markdown(report)
    # the answered 300 took 4 ms; the held-back 100 were due from 2.5 s into the 3 s window: at least 5..500 ms
    answered, everyone = held["latency_us"], held["latency_scheduled_us"]
    assert answered["count"] == 300 and answered["p99"] == pytest.approx(4_000, rel=1e-3)
    assert everyone["count"] == 400 and everyone["censored"] == 100
    assert everyone["p50"] == pytest.approx(4_000, rel=1e-3)  # rank 200 of 400: answered
    assert everyone["p90"] == pytest.approx(300_000, rel=1e-2)  # rank 360: the 60th-shortest censored bound
    assert everyone["p99"] == pytest.approx(480_000, rel=1e-2) and everyone["max"] == pytest.approx(500_000, rel=1e-2)
    assert everyone["lower_bound"] == ["mean", "p90", "p95", "p99", "p99.9", "max"]


def test_rate_report_renders_rate_columns(tmp_path):
    report = rate_report([rate_step(0, 100.0), rate_step(1, 200.0, scheduled=400, sent=300, late_ms=3)])
    markdown = render_markdown(report)
    assert "| rate/s | window s | requests |" in markdown and "## Open-loop sends (measured window)" in markdown
    assert "| 200 | 400 | 300 | 150.0 | 300 | 100 |" in markdown
    assert "warning: step 1 (200 requests/s): client-bound" in markdown

    out = io.StringIO()
    print_summary(report, "r/report.md", Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if "rate/s" in line).split()
    assert header[:3] == ["rate/s", "sent/s", "requests"] and header[-2:] == ["late", "errors"]
    assert "service p99 ms" in out.getvalue()
    assert any(line.split()[:2] == ["200", "150.0!"] for line in lines)
    assert any(line.startswith("! client-bound") for line in lines)

    write_reports(report, tmp_path)
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert [row["target_rate_per_s"] for row in rows] == ["100.0", "200.0"]
    assert rows[1]["client_bound"] == "True" and rows[1]["not_sent"] == "100" and rows[0]["concurrency"] == ""
    assert int(rows[1]["latency_p99_us"]) >= int(rows[1]["service_p99_us"])


def test_sweep_steps_csv_has_one_row_per_step(tmp_path):
    report = json.loads(json.dumps(report_of([recorded_step(0, 1), recorded_step(1, 4, rejected=3)],
                                             max_error_rate=1.0)))
    write_reports(report, tmp_path)
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert [(row["step"], row["concurrency"], row["issued"], row["rejected"]) for row in rows] == [
        ("0", "1", "300", "0"), ("1", "4", "303", "3")]
    assert rows[0]["images_per_s"] == "600.0" and rows[0]["sent"] == "" and rows[0]["valid"] == "True"
    assert int(rows[0]["latency_p50_us"]) <= int(rows[0]["latency_p99_us"]) <= int(rows[0]["latency_max_us"])


def test_a_lost_worker_makes_the_run_invalid_and_is_named():
    lost = {"because": "locust marked it missing (no heartbeat)", "lost_after_s": 5.7, "last_report_after_s": 3.0,
            "unreported_s": 2.7, "issued_per_s": 40.0, "issued_per_s_from": "its own reports",
            "may_have_lost_requests": 108, "in_flight_at_last_report": 2}
    workers = [
        {"id": "a", "index": 0, "pid": 11, "final_report": True, "lost": None,
         "steps": [{"index": 0, "issued": 200, **{name: 0 for name in COUNT_FIELDS[1:]}, "ok": 200}]},
        {"id": "b", "index": 1, "pid": 12, "final_report": False, "lost": lost, "steps": []},
    ]
    report = rate_report([rate_step()], workers=workers)
    assert not report["valid"]
    (reason,) = report["invalid_reasons"]
    assert reason.startswith("worker 1 (pid 12) lost 5.7 s into the run") and "up to 108 requests" in reason
    assert "## Workers" in render_markdown(report)


def single_stream_report(ok: int) -> dict:
    run = {key: value for key, value in report_of([]).items() if key in (
        "settings", "target", "model", "payload", "started_at", "duration_s", "interrupted_by")}
    report = report_from(steps=[recorded_step(0, 1, ok=ok)], **run, scenario="single-stream", max_error_rate=0.0)
    return json.loads(json.dumps(report))


def test_single_stream_has_p90_as_its_headline_everywhere_it_is_summed_up():
    from ipsbench.loadgen.report.html import render_html

    single = single_stream_report(ok=1000)  # 100 / (1 - 0.9) samples claim p90
    latency = single["steps"][0]["latency_us"]
    assert single["headline"] == {
        "metric": "p90_latency_us", "percentile": "p90", "value_us": latency["p90"], "step": 0, "samples": 1000,
        "enough_samples": True, "description": single["headline"]["description"],
    }
    words = f"p90 latency {latency['p90'] / 1000:.2f} ms over 1000 successful requests (MLPerf SingleStream's figure)"
    assert f"**Headline: {words}.**" in render_markdown(single)
    assert f"<strong>Headline: {words}</strong>" in render_html(single).replace("&#x27;", "'")
    out = io.StringIO()
    print_summary(single, "report.md", Console(file=out, width=200))
    assert f"headline: {words}" in out.getvalue()

    few = single_stream_report(ok=5)
    assert few["headline"]["samples"] == 5 and not few["headline"]["enough_samples"]
    assert "over 5 successful requests, too few to claim p90" in render_markdown(few)
    sweep = json.loads(json.dumps(report_of([recorded_step(0, 1)])))
    assert sweep["headline"] is None and "Headline" not in render_markdown(sweep)


def test_the_report_says_where_the_request_logs_went():
    from ipsbench.loadgen.request_log import COLUMNS, describe

    one = describe("logs/requests.csv", None)
    assert one["files"] == ["logs/requests.csv"] and one["columns"] == list(COLUMNS)
    workers = describe("logs/requests.csv", [0, 1])
    assert workers["files"] == ["logs/requests.worker0.csv", "logs/requests.worker1.csv"]
    report = json.loads(json.dumps(report_from(steps=[recorded_step()], **{
        key: value for key, value in report_of([recorded_step()]).items() if key in (
            "settings", "target", "model", "payload", "scenario", "started_at", "duration_s", "interrupted_by")},
        max_error_rate=0.0, request_log=workers)))
    assert report["request_log"] == workers
    assert ("Per-request log (one CSV row per request, raw timings): logs/requests.worker0.csv, "
            "logs/requests.worker1.csv (written by each worker, on its host).") in render_markdown(report)
    assert report_of([recorded_step()])["request_log"] is None


@pytest.mark.parametrize("scenario", ["rate", "trace", "slo"])
def test_every_open_loop_scenario_states_its_open_loop_method(scenario):
    """A trace, or an slo search over rates, measures from intended send times as a rate run does: its report
    says so, in the method and in every rendering."""
    steps = [rate_step()]
    report = json.loads(json.dumps(report_from(
        steps, settings={"target": {"deadline_s": 30.0}, scenario: {"warmup_s": 1.0, "drain_s": 10.0}},
        target={"address": "127.0.0.1:8001", "server": {}}, model={"name": "m", "input": {}}, payload={},
        scenario=scenario, started_at="", duration_s=7.0, interrupted_by=None, max_error_rate=0.0,
    )))
    assert "intended send time" in report["method"]["open_loop"]
    assert "- Open loop: latency from each request's intended send time" in render_markdown(report)
    closed = json.loads(json.dumps(report_of([recorded_step()])))
    assert closed["method"]["open_loop"] is None
