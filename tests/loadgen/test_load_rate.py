"""ipsbench-load rate (open loop) against a real ipsbench-serve: it sends at the target rate, and its latency,
timed from each request's intended send time, shows a server stall that a closed loop hides."""
import csv
import signal
import subprocess
import sys
import time

import pytest
from load_helpers import assert_accounted

PAUSE_S = 2.0
"""How long the server is stopped (SIGSTOP) in the middle of a measured window."""
WINDOW_S = 8.0
"""The paused run's measured window: the pause begins once the window has successes, and ends well inside it."""


def test_rate_run_sends_at_the_target_rate(server, start_load):
    run = start_load(server.grpc_url, "--rate", "30,60", "--arrival", "constant", "--warmup", "500ms",
                     "--duration", "2500ms", "--drain", "5s", scenario="rate")
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()

    report = run.report()
    assert report["valid"] and report["scenario"] == "rate" and report["warnings"] == []
    assert_accounted(report)
    assert [step["target_rate_per_s"] for step in report["steps"]] == [30.0, 60.0]
    for step in report["steps"]:
        open_loop, target = step["open_loop"], step["target_rate_per_s"]
        assert open_loop["achieved_send_rate_per_s"] == pytest.approx(target, rel=0.15), open_loop
        assert not open_loop["client_bound"] and open_loop["not_sent"] == 0
        assert step["images_per_s"] == pytest.approx(target, rel=0.15)
        assert step["concurrency"] is None and step["errors_total"] == 0
        latency, service = step["latency_us"], step["service_time_us"]
        assert latency["count"] == service["count"] > 0
        assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert latency["p50"] >= service["p50"]  # timed from the intended send, never after the actual one

    header = next(line for line in run.stdout.splitlines() if "rate/s" in line)
    assert header.split()[:3] == ["rate/s", "sent/s", "requests"]
    rows = list(csv.DictReader((run.out / "steps.csv").open()))
    assert [row["target_rate_per_s"] for row in rows] == ["30.0", "60.0"]
    assert (run.out / "report.md").read_text().startswith("# ipsbench-load rate: resnet18")


def paused_run(server, start_load, scenario: str, *load: str) -> dict:
    """One measured step with the server stopped for PAUSE_S once the window is measuring."""
    run = start_load(server.grpc_url, *load, "--warmup", "500ms", "--duration", f"{WINDOW_S:g}s", "--drain", "10s",
                     scenario=scenario)
    run.wait_in_window()
    server.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    assert step["errors_total"] == 0
    return step


def test_open_loop_latency_shows_a_stall_the_closed_loop_hides(server, start_load):
    """Both loops see the stall (their max), but only the open loop's percentiles do: its arrivals keep coming
    during the pause and each waits for it, while the closed loop's one user waits once and sends nothing else.
    The closed loop completes more requests in its window than the open one, so a lighter load does not explain it."""
    pause_us = PAUSE_S * 1e6
    open_step = paused_run(server, start_load, "rate", "--rate", "20")
    open_loop = open_step["latency_us"]
    closed_loop = paused_run(server, start_load, "sweep", "--concurrency", "1")
    closed_latency = closed_loop["latency_us"]
    assert closed_loop["window_requests"]["ok"] > open_step["window_requests"]["ok"]

    assert open_loop["max"] >= 0.8 * pause_us and closed_latency["max"] >= 0.8 * pause_us
    assert open_loop["p99"] >= 0.8 * pause_us, open_loop
    assert open_loop["p90"] >= 0.25 * pause_us, open_loop  # about 40 arrivals (a quarter) waited for the pause
    assert closed_latency["p99"] <= 0.25 * pause_us, closed_latency


LOCUSTFILE = '''
from locust import events

from ipsbench.loadgen.shape import RateShape
from ipsbench.loadgen.users import OpenLoopUser, Workload


class Rates(RateShape):
    rates_per_s = (40,)
    warmup_s = 0.5
    window_s = 1.0
    drain_s = 5.0


class Sender(OpenLoopUser):
    arrival = "constant"


@events.init.add_listener
def connect(environment, **_):
    Sender.workload = Workload.connect(environment.host, "resnet18")
'''


def test_plain_locust_runs_the_rate_shape(server, tmp_path):
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "--host", server.grpc_url,
         "--stop-timeout", "5", "--csv", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    stats = {row["Name"]: row for row in csv.DictReader((tmp_path / "out_stats.csv").open())}
    assert stats["ModelInfer"]["Failure Count"] == "0"
    assert 50 <= int(stats["ModelInfer"]["Request Count"]) <= 70  # 40/s for 1.5 s, on schedule


def test_L21_with_one_request_in_flight_allowed_every_arrival_of_a_gentle_rate_is_sent(server, start_load):
    """--max-in-flight 1 at 5/s, each answer back well before the next arrival: the cap is never met, the step's
    first arrival (due as the window opens, while the sender thread still connects) included."""
    run = start_load(server.grpc_url, "--rate", "5", "--arrival", "constant", "--max-in-flight", "1",
                     "--warmup", "0s", "--duration", "2s", "--drain", "5s", scenario="rate")
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"], report["invalid_reasons"]
    (step,) = report["steps"]
    open_loop = step["open_loop"]
    assert open_loop["scheduled"] == 10 and open_loop["sent"] == 10 and open_loop["not_sent"] == 0, open_loop


def test_open_loop_steps_get_stability_windows_too(server, start_load):
    """--max-trials on a rate step: its windows (each arrival in the one it was due in) are judged like a closed
    loop's, and the step ends once the last 3 agree; its figures cover every window it ran, up to when it was
    judged (the arrivals scheduled meanwhile count too)."""
    run = start_load(server.grpc_url, "--rate", "40", "--arrival", "constant", "--duration", "1s", "--max-trials", "5",
                     "--stability", "1.0", "--warmup", "500ms", "--drain", "5s", scenario="rate")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    stability = step["stability"]
    assert stability["stable"] and stability["trials"] == 3 and stability["judged_metrics"] == ["images_per_s"]
    assert stability["unjudged_metrics"] == {"p50": "a window held 40 samples, 200 needed to judge p50"}
    assert [window["requests"] for window in stability["windows"]] == [40, 40, 40]
    assert 3.0 <= step["window_s"] < 5.0 and step["open_loop"]["scheduled"] >= 120
    assert step["open_loop"]["scheduled"] == pytest.approx(40 * step["window_s"], abs=1)
    assert step["latency_us"]["count"] == step["open_loop"]["scheduled"] and step["open_loop"]["not_sent"] == 0
