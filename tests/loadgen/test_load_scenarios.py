"""Scenarios against a real ipsbench-serve, as a user sees them: stability windows (L10), SLO verdicts and the
SLO search (L11), offline, single-stream, ramp, spike and trace, the partial report of a killed run (L06)."""
import json
import signal
import time

import pytest
from load_helpers import assert_accounted

from ipsbench.loadgen.report.cells import ms

QUICK = ("--warmup", "300ms", "--drain", "5s")


def test_a_level_is_measured_in_windows_until_three_agree(server, start_load):
    # A wide tolerance and many trials: this shared test machine is noisy; the rule itself has unit tests.
    run = start_load(server.grpc_url, "--concurrency", "2", "--duration", "1s", "--max-trials", "10",
                     "--stability", "1.0", *QUICK)
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["verdict"] == "PASS" and report["stable"]
    assert_accounted(report)
    (step,) = report["steps"]
    stability = step["stability"]
    assert stability["stable"] and 3 <= stability["trials"] <= 10 and stability["tolerance"] == 1.0
    assert len(stability["windows"]) == stability["trials"]
    assert step["window_s"] == pytest.approx(3.0)  # the last 3 windows together
    last_three = [window["images_per_s"] for window in stability["windows"][-3:]]
    assert step["images_per_s"] == pytest.approx(sum(last_three) / 3, rel=1e-3)
    assert step["latency_us"]["max"] >= max(window["p99_us"] for window in stability["windows"][-3:])
    assert step["client"]["cpu_percent"] > 0 and not step["client"]["client_bound"]


WINDOW_S = 6
"""Long beside the partial report's 2 s cadence, so that a stall told by it covers most of a window."""


def test_a_server_that_stalls_in_one_window_makes_the_level_unstable(server, start_load):
    """L10: windows that disagree after the last trial: UNSTABLE, exit 1, still a valid measurement."""
    run = start_load(server.grpc_url, "--concurrency", "2", "--duration", f"{WINDOW_S}s", "--max-trials", "3",
                     "--stability", "0.2", "--warmup", "500ms", "--drain", "5s")
    def windows_begun(report: dict) -> int:
        return report["steps"] and len((report["steps"][0].get("stability") or {}).get("windows", []))

    # The server is stopped once the second window shows in the partial report (rewritten every 2 s), and goes on
    # only once the load generator's own clock, in a later partial report, has run half a window further: most of
    # the second window gets no answers, however slow this machine.
    seen = run.wait_for_report(lambda r: windows_begun(r) >= 2, "the second measured window")
    server.process.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        run.wait_for_report(lambda r: r["duration_s"] >= seen["duration_s"] + WINDOW_S / 2,
                            "half a window of the run's own time with the server stopped")
    finally:
        server.process.send_signal(signal.SIGCONT)
    stall_s = time.monotonic() - stopped
    assert run.finish(timeout=90) == 1, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"] and report["verdict"] == "UNSTABLE" and report["unstable_steps"] == [0]
    (step,) = report["steps"]
    assert step["stability"]["trials"] == 3 and not step["stability"]["stable"]
    rates = [window["images_per_s"] for window in step["stability"]["windows"]]
    assert min(rates) < 0.7 * max(rates), rates  # the stalled window served far less
    assert step["latency_us"]["max"] >= 0.8 * stall_s * 1e6  # a request in flight waited the whole stall
    assert "UNSTABLE" in run.stdout


def test_slo_verdict_states_each_objective_and_refuses_an_unsupported_percentile(server, start_load):
    """L11: p10 has the samples it needs and is met; p99 has not, so it is neither met nor missed: the run is
    INCONCLUSIVE (exit 4), and says the duration that would settle it. (--max-duration 3s: the window may not
    grow to hold them.)"""
    run = start_load(server.grpc_url, "--concurrency", "2", "--duration", "3s", "--latency-slo", "p10=60s",
                     "--latency-slo", "p99=60s", "--max-error-rate", "0.5", "--max-duration", "3s", *QUICK)
    assert run.finish(timeout=90) == 4, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"] and report["verdict"] == "INCONCLUSIVE" and report["slo"]["verdict"] == "INCONCLUSIVE"
    # the step's rate, held for the settling duration, would bring p99's 10,000 samples and their margin
    step = report["steps"][0]
    rate_per_s = step["latency_us"]["count"] / step["window_s"]
    assert rate_per_s * report["slo"]["settle_duration_s"] >= 10_300
    p10, p99, error_rate = report["slo"]["objectives"]
    samples = report["steps"][0]["latency_us"]["count"]
    assert p10["name"] == "p10" and p10["target_us"] == 60_000_000 and p10["samples"] == samples
    if samples >= 112:  # 100 / (1 - 0.10) samples claim p10
        assert p10["met"] and p10["enough_samples"] and 0 < p10["measured_us"] < 60_000_000
    assert not p99["met"] and not p99["enough_samples"] and p99["samples_needed"] == 10_000
    assert f"{samples} samples, 10000 needed" in p99["why"]
    assert error_rate == {**error_rate, "name": "error_rate", "target": 0.5, "measured": 0.0, "met": True}
    assert report["steps"][0]["slo"]["met"] is False and report["steps"][0]["slo"]["inconclusive"]


@pytest.mark.parametrize(("objectives", "verdict", "exit_code"), [
    (("--max-error-rate", "0.5"), "PASS", 0),  # an error-rate objective only: met at both ends
    # never met: the lower end, measured until it holds p10's 112 samples, fails, so nothing in the bracket is
    (("--latency-slo", "p10=1us"), "FAIL", 1),
])
def test_slo_search_reports_the_bracket_every_step_and_the_best(server, start_load, objectives, verdict, exit_code):
    run = start_load(server.grpc_url, "--search", "concurrency", "--low", "1", "--high", "2", *objectives,
                     "--duration", "1s", "--max-steps", "4", *QUICK, scenario="slo")
    code = run.finish(timeout=90)
    report = run.report()
    assert code == exit_code, run.stdout + run.stderr()
    assert report["valid"] and report["verdict"] == verdict and report["slo"]["verdict"] == verdict
    assert_accounted(report)
    search = report["slo"]["search"]
    assert search["kind"] == "concurrency" and search["bracket"] == [1.0, 2.0] and search["stopped_because"]
    values = [step["value"] for step in search["steps"]]
    assert [step["concurrency"] for step in report["steps"]] == values and values == [1.0, 2.0][:len(values)]
    for searched, step in zip(search["steps"], report["steps"]):
        assert searched["met"] == step["slo"]["met"] and step["phase"] == "search"
    if verdict == "FAIL":
        assert report["steps"][0]["latency_us"]["count"] >= 112
        assert values == [1.0] and search["best"] is None and "lower end" in search["stopped_because"]
        return
    assert values == [1.0, 2.0] and search["best"] == 2.0 and "upper end meets" in search["stopped_because"]
    (error_rate,) = report["slo"]["objectives"]
    assert error_rate["name"] == "error_rate" and error_rate["met"] and error_rate["target"] == 0.5


def test_slo_search_over_rates_runs_open_loop_steps(server, start_load):
    run = start_load(server.grpc_url, "--search", "rate", "--low", "5", "--high", "10", "--max-error-rate", "0.5",
                     "--arrival", "constant", "--duration", "1s", *QUICK, scenario="slo")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    search = report["slo"]["search"]
    assert search["kind"] == "rate" and search["best"] == 10.0
    assert [step["target_rate_per_s"] for step in report["steps"]] == [5.0, 10.0]
    assert all(step["open_loop"]["scheduled"] > 0 for step in report["steps"])


def test_offline_sends_large_requests_and_single_stream_one_at_a_time(server, start_load):
    offline = start_load(server.grpc_url, "--concurrency", "2", "--duration", "1s", *QUICK, scenario="offline")
    single = start_load(server.grpc_url, "--duration", "1s", *QUICK, scenario="single-stream")
    assert offline.finish(timeout=60) == 0, offline.stdout + offline.stderr()
    assert single.finish(timeout=60) == 0, single.stdout + single.stderr()
    (step,) = offline.report()["steps"]
    assert offline.report()["payload"]["images_per_request"] == 8
    assert step["images_ok"] == 8 * step["window_requests"]["ok"] > 0
    report = single.report()
    assert report["scenario"] == "single-stream" and [s["concurrency"] for s in report["steps"]] == [1]
    assert report["steps"][0]["latency_us"]["p90"] > 0
    # MLPerf SingleStream's figure, p90, is the run's headline wherever the run is summed up.
    headline, latency = report["headline"], report["steps"][0]["latency_us"]
    assert headline["metric"] == "p90_latency_us" and headline["percentile"] == "p90"
    assert headline["value_us"] == latency["p90"] and headline["samples"] == latency["count"] and headline["step"] == 0
    p90 = f"p90 latency {ms(latency['p90'])} ms over {latency['count']} successful requests"
    assert f"headline: {p90}" in " ".join(single.stdout.split())
    assert f"**Headline: {p90}" in (single.out / "report.md").read_text()
    assert f'<p id="headline"><strong>Headline: {p90}' in (single.out / "report.html").read_text()
    assert offline.report()["headline"] is None and "headline" not in offline.stdout


@pytest.mark.parametrize(("scenario", "args", "levels", "phases"), [
    ("ramp", ("--from", "1", "--to", "3", "--steps", "3"), [1, 2, 3], ["ramp", "ramp", "peak"]),
    ("spike", ("--base", "1", "--spike", "3"), [1, 3, 1], ["baseline", "spike", "recovery"]),
])
def test_ramp_and_spike_name_the_phase_of_each_step(server, start_load, scenario, args, levels, phases):
    run = start_load(server.grpc_url, *args, "--duration", "700ms", *QUICK, scenario=scenario)
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    assert [step["concurrency"] for step in report["steps"]] == levels
    assert [step["phase"] for step in report["steps"]] == phases


def test_trace_replays_its_inter_arrival_times(server, start_load, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("interarrival_s\n" + "0.025\n" * 80)  # 40 requests/s for 2 s
    run = start_load(server.grpc_url, "--trace", str(trace), "--warmup", "500ms", "--drain", "5s", scenario="trace")
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    # Every arrival of the trace is sent or counted not sent: a scheduler that a busy machine holds up past the
    # window's end counts the trace's last arrival not sent rather than send it after the window.
    not_sent = step["open_loop"]["not_sent"]
    assert step["issued"] + not_sent == 80 and step["ok"] == step["issued"] and not_sent <= 1
    assert step["target_rate_per_s"] == 40.0 and step["window_s"] == pytest.approx(1.5, abs=0.01)
    assert step["open_loop"]["scheduled"] == pytest.approx(60, abs=1)
    assert report["settings"]["trace"]["interarrivals_s"] == {"count": 80}


def test_a_killed_run_leaves_a_partial_report_marked_incomplete_by_the_next(server, start_load, tmp_path):
    """L06: the partial report.json is rewritten while the run goes on; SIGKILL leaves it incomplete, with no
    verdict; the next run into the same folder keeps it aside."""
    out = tmp_path / "same"
    killed = start_load(server.grpc_url, "--concurrency", "1", "--duration", "30s", "--out", str(out), *QUICK)
    killed.wait_for_log("step 1/1", timeout=60)
    killed.wait_for_report(lambda r: r["status"] == "incomplete" and r["steps"] and r["steps"][0]["issued"] > 0,
                           "a partial report with requests in it")
    killed.process.kill()
    killed.finish(timeout=10)
    partial = json.loads((out / "report.json").read_text())
    assert partial["status"] == "incomplete" and partial["verdict"] == "INCOMPLETE"
    assert partial["steps"][0]["issued"] > 0

    again = start_load(server.grpc_url, "--concurrency", "1", "--duration", "500ms", "--out", str(out), *QUICK)
    assert again.finish(timeout=60) == 0, again.stdout + again.stderr()
    assert json.loads((out / "report.json").read_text())["status"] == "complete"
    (kept,) = out.glob("report.incomplete-*.json")
    incomplete = json.loads(kept.read_text())
    assert incomplete["status"] == "incomplete" and incomplete["steps"][0]["issued"] == partial["steps"][0]["issued"]


def test_a_terminal_sees_a_live_progress_line(server, tmp_path):
    """On a terminal the run shows the current step, images/sec, p99 and errors while it goes (a pipe, as in
    every other test, gets only the final table)."""
    import os
    import pty
    import subprocess
    import sys

    from load_helpers import REPO_ROOT

    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "ipsbench.loadgen", "sweep", "--target", server.grpc_url, "--model", "resnet18",
               "--concurrency", "1", "--max-trials", "1", "--duration", "2s", "--out", str(tmp_path / "r"), *QUICK]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=secondary, stderr=subprocess.DEVNULL, env=env)
    os.close(secondary)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
        assert process.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "step 1/1 concurrency 1" in text and "images/s, p99" in text and "errors" in text
    assert "report: " in text


def test_count_windows_hold_their_requests_and_stability_is_judged_on_the_chosen_metrics(server, start_load):
    """--window-requests 250: each stability window ends after 250 completed requests (perf_analyzer's count
    windows), however long that takes; judged on images/sec and p50 (which 250 samples can support) and, asked for
    p99 too, not on p99, which they cannot (10,000 needed): the report says so."""
    run = start_load(server.grpc_url, "--concurrency", "2", "--duration", "60s", "--max-trials", "4",
                     "--window-requests", "250", "--stability", "1.0", "--stability-metric", "images_per_s,p50,p99",
                     *QUICK)
    assert run.finish(timeout=180) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    stability = step["stability"]
    assert stability["stable"] and stability["trials"] == 3
    assert [window["requests"] for window in stability["windows"]] == [250, 250, 250]
    assert stability["judged_metrics"] == ["images_per_s", "p50"]
    assert stability["unjudged_metrics"] == {"p99": "a window held 250 samples, 10000 needed to judge p99"}
    assert step["window_requests"]["ok"] == 750 and step["window_s"] < 60  # ended by its count, not its time
