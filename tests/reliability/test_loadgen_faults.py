"""Load-generator faults and accounting (matrix rows L03, L05, L06, L08–L11, L13, L15): real ipsbench-load runs
(subprocesses) against a real ipsbench-serve, with the faults injected for real.

L01, L02, L04, L07, L12 and L14 are covered by tests/loadgen (see docs/reliability-matrix.md).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from reliability_helpers import (
    ROOT,
    assert_accounted,
    infer_request,
    metric,
    scrape,
    wait_until,
    write_image_model,
)
from tritonclient.grpc import service_pb2_grpc

from ipsbench.server.errors import LOADING_MESSAGE

SHORT = ("--warmup", "0s", "--duration", "1s", "--drain", "5s")
ONE_WINDOW = ("--max-trials", "1")
WORKER_PIDS = re.compile(r"started (\d+) worker processes: ([\d, ]+)")


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("loadgen-fault-models")
    write_image_model(repo, "image8")
    write_image_model(repo, "slow20", delay_ms=20, max_batch_size=1)
    write_image_model(repo, "bounded", delay_ms=100, max_batch_size=1, max_queue_size=2)
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


# -- L03: target restarts mid-run ------------------------------------------------------------------------------


def test_L03_target_restart_mid_run_reconnects_and_success_resumes(repository, start_server, start_load):
    target = start_server(repository)
    port = target.grpc_port
    run = start_load("sweep", target.grpc_url, "image8", "--concurrency", "2,2", "--warmup", "0s",
                     "--duration", "3s", "--drain", "5s", *ONE_WINDOW)
    run.wait_in_window()  # into the first step on purpose
    target.stop(signal.SIGKILL)
    restarted = start_server(repository, "--grpc-port", str(port))
    assert restarted.grpc_port == port
    assert run.finish(timeout=180) != 0, run.stdout + run.stderr()  # errors make the run invalid
    report = run.report()
    assert report["status"] == "complete"  # the load generator itself carried on to the end
    assert_accounted(report)
    first, second = report["steps"][0], report["steps"][-1]
    outage = [e for e in first["errors"] if e["outcome"] == "unreachable"]
    assert outage and all(e["code"] == "UNAVAILABLE" for e in outage)  # no server answered: not admission control
    assert first["unreachable"] == sum(e["count"] for e in outage)
    # The restarted server refuses while it loads its models: that is admission control, in the server's words.
    refused = [e for e in first["errors"] if e["outcome"] == "rejected"]
    assert all(e["message"] == LOADING_MESSAGE for e in refused), first["errors"]
    assert outage[0]["first_s"] <= outage[0]["last_s"]  # the gap, with its timestamps
    assert second["index"] != first["index"] and second["ok"] > 0 and second["errors_total"] == 0


# -- L05, L06: stopped by SIGTERM, killed by SIGKILL -----------------------------------------------------------


def test_L05_sigterm_writes_every_report_including_html(server, start_load):
    run = start_load("sweep", server.grpc_url, "image8", "--concurrency", "2", "--warmup", "500ms",
                     "--duration", "30s", "--drain", "5s", *ONE_WINDOW)
    run.wait_in_window()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 143, run.stdout + run.stderr()
    report = run.report()
    assert report["status"] == "interrupted" and report["interrupted_by"] == "SIGTERM"
    assert_accounted(report)
    assert (run.out / "report.md").is_file()
    html = run.out / "report.html"
    assert html.is_file(), sorted(p.name for p in run.out.iterdir())
    assert "<html" in html.read_text().lower()


FLUSH_BOUND_S = 5.0


def _unjudged(report: dict) -> bool:
    """A partial report that claims nothing it has not reached: incomplete, verdict INCOMPLETE (its SLO's too), no
    validity or stability, no PASS or FAIL anywhere in it."""
    text = json.dumps(report)
    return (report["status"] == "incomplete" and report["verdict"] == "INCOMPLETE" and report["valid"] is None
            and report["stable"] is None and report["slo"]["verdict"] == "INCOMPLETE"
            and '"PASS"' not in text and '"FAIL"' not in text)


def test_L06_sigkill_leaves_a_partial_report_the_next_run_marks_incomplete(server, start_load, tmp_path):
    out = tmp_path / "shared-out"
    slo = ("--latency-slo", "p99=10s")  # the partial ones must not say whether the run meets it
    run = start_load("sweep", server.grpc_url, "image8", "--concurrency", "2", "--warmup", "0s",
                     "--duration", "60s", "--drain", "5s", *ONE_WINDOW, *slo, out=out)
    seen = []

    def partial_with_successes(report: dict) -> bool:
        seen.append(report)
        return report["totals"]["ok"] > 0

    run.wait_for_report(partial_with_successes,
                        f"a partial report with successes (rewritten at most {FLUSH_BOUND_S:g} s apart)")
    assert all(_unjudged(report) for report in seen), [(r["status"], r["verdict"]) for r in seen]  # from the first
    run.process.send_signal(signal.SIGKILL)
    run.finish(timeout=30)
    partial = run.report()
    assert _unjudged(partial), (partial["status"], partial["verdict"], partial["valid"], partial["slo"])
    assert "killed" in partial["incomplete_reason"]
    assert partial["steps"] and partial["steps"][0]["issued"] > 0 and partial["totals"]["ok"] > 0

    again = start_load("sweep", server.grpc_url, "image8", "--concurrency", "1", *SHORT, *ONE_WINDOW, out=out)
    assert again.finish(timeout=120) == 0, again.stdout + again.stderr()
    final = again.report()
    assert final["status"] == "complete" and final["verdict"] == "PASS" and final["valid"] is True
    assert final["stable"] is True and "incomplete_reason" not in final  # a final report as before
    kept = sorted(out.glob("report.incomplete*.json"))
    assert len(kept) == 1, sorted(p.name for p in out.iterdir())
    incomplete = json.loads(kept[0].read_text())
    assert incomplete["status"] == "incomplete" and incomplete["verdict"] == "INCOMPLETE"
    assert incomplete["totals"]["ok"] == partial["totals"]["ok"]


# -- L08: master lost ------------------------------------------------------------------------------------------

MASTER_HEARTBEAT_TIMEOUT_S = 60


def test_L08_workers_stop_sending_when_the_master_is_killed(server, start_load):
    run = start_load("rate", server.grpc_url, "image8", "--rate", "40", "--processes", "2", "--warmup", "0s",
                     "--duration", "60s", "--drain", "5s")
    run.wait_for_log("worker processes:", timeout=60)
    pids = [int(pid) for pid in WORKER_PIDS.search(run.stderr())[2].split(", ")]
    run.wait_in_window()
    run.process.send_signal(signal.SIGKILL)
    run.finish(timeout=30)
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout_s=MASTER_HEARTBEAT_TIMEOUT_S + 10,
               what=f"the workers {pids} to stop", interval_s=0.2)
    labels = dict(model="image8", version="1")
    # No process is left to send and nothing is in the server: no request can arrive after this.
    wait_until(lambda: metric(scrape(server.metrics_url), "ipsbench_inflight_requests", **labels) == 0,
               what="the server to have no image8 request left in flight")
    served = metric(scrape(server.metrics_url), "nv_inference_request_success", **labels)
    assert metric(scrape(server.metrics_url), "nv_inference_request_success", **labels) == served  # no more load


# -- L09, L10, L11: results the report must not overclaim -------------------------------------------------------


BURST_ARRIVALS = 50_000


def test_L09_a_client_that_cannot_keep_up_is_flagged_client_bound(server, start_load, tmp_path):
    """A trace whose arrivals all fall due at once, a millisecond before the window closes: no client issues
    50,000 of them in time, so most are still unsent when the window closes (those the in-flight cap held back
    are the target's doing and not held against the client)."""
    trace = tmp_path / "burst.txt"
    trace.write_text("1.0\n" + "0\n" * (BURST_ARRIVALS - 1))  # 50,000/s over the trace: within the bound
    run = start_load("trace", server.grpc_url, "image8", "--trace", str(trace), "--max-in-flight", "8",
                     "--warmup", "0s", "--drain", "5s")
    run.finish(timeout=120)
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    open_loop = step["open_loop"]
    assert open_loop["scheduled"] == BURST_ARRIVALS and open_loop["client_bound"], open_loop
    assert open_loop["not_sent"] - open_loop["not_sent_in_flight_cap"] > BURST_ARRIVALS / 2, open_loop
    assert step["client"]["client_bound"], step["client"]
    assert any("client-bound" in warning for warning in report["warnings"])
    assert any("capacity" in warning for warning in report["warnings"])
    assert "client-bound" in (run.out / "report.md").read_text()


def test_L10_a_noisy_server_makes_the_step_unstable(server, start_load):
    stop = threading.Event()

    def noise() -> None:
        """Bursts of competing requests: on for 0.7 s, off for 0.7 s, so consecutive windows disagree."""
        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = infer_request("slow20", np.zeros((1, 3, 8, 8), np.float32))
            while not stop.is_set():
                burst_end = time.monotonic() + 0.7
                while time.monotonic() < burst_end and not stop.is_set():
                    futures = [stub.ModelInfer.future(request, timeout=30) for _ in range(8)]
                    for future in futures:
                        try:
                            future.result()
                        except grpc.RpcError:
                            pass
                stop.wait(0.7)

    noisy = threading.Thread(target=noise, daemon=True)
    noisy.start()
    try:
        run = start_load("sweep", server.grpc_url, "slow20", "--concurrency", "1", "--warmup", "0s",
                         "--duration", "500ms", "--drain", "5s")
        code = run.finish(timeout=180)
    finally:
        stop.set()
        noisy.join(timeout=60)
    report = run.report()
    assert code != 0, run.stdout + run.stderr()
    assert_accounted(report)
    assert report["verdict"] == "UNSTABLE" and not report["stable"], report.get("verdict")
    (step,) = report["steps"]
    assert step["stability"] and not step["stability"]["stable"]
    assert "UNSTABLE" in (run.out / "report.md").read_text()


def test_L11_a_short_run_does_not_claim_p99(server, start_load):
    run = start_load("sweep", server.grpc_url, "slow20", "--concurrency", "1", *SHORT, *ONE_WINDOW)
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    (step,) = report["steps"]
    samples = step["latency_us"]["count"]
    assert 0 < samples < 10_000
    assert {"p99", "p99.9"} <= set(step["unsupported_percentiles"])
    assert report["method"]["percentile_min_samples"]["p99"] == 10_000
    markdown = (run.out / "report.md").read_text()
    assert "*" in markdown and str(samples) in markdown  # starred percentiles, and the sample count they rest on


# -- L13: error classes ----------------------------------------------------------------------------------------


def test_L13_error_classes_are_reported_separately(server, start_load):
    run = start_load("sweep", server.grpc_url, "bounded", "--concurrency", "12", "--deadline", "300ms",
                     "--distinct-requests", "2", "--warmup", "0s", "--duration", "3s", "--drain", "5s", *ONE_WINDOW)
    assert run.finish(timeout=120) != 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    for step in report["steps"]:
        rows = {(e["outcome"], e["code"]) for e in step["errors"]}
        assert ("rejected", "UNAVAILABLE") in rows, rows  # queue full
        by_code = {}
        for error in step["errors"]:
            by_code[error["code"]] = by_code.get(error["code"], 0) + error["count"]
        assert by_code.get("UNAVAILABLE", 0) == step["rejected"]
        assert by_code.get("DEADLINE_EXCEEDED", 0) == step["deadline"]
        assert step["ok"] > 0 and step["window_requests"]["ok"] > 0
        # Latency over OK requests and, separately, over every completed request; images count only OK ones.
        assert step["latency_us"]["count"] == step["window_requests"]["ok"]
        assert step["latency_all_us"]["count"] == sum(step["window_requests"].values())
        assert step["latency_all_us"]["count"] > step["latency_us"]["count"]
        assert step["images_ok"] == step["window_requests"]["ok"]


# -- L15: a deadline on every RPC ------------------------------------------------------------------------------

KSERVE_RPCS = {
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelConfig",
    "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
}
"""Stub methods of GRPCInferenceService; plus ``infer``, the multicallable the users send requests with."""


def _dicts_with_timeout(function: ast.AST) -> set[str]:
    """Names a function binds to a dict literal (or ``dict(...)``) that has a ``timeout`` key: ``**name`` passes it."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            keys = []
            if isinstance(value, ast.Dict):
                keys = [k.value for k in value.keys if isinstance(k, ast.Constant)]
            elif isinstance(value, ast.Call) and ast.unparse(value.func) == "dict":
                keys = [k.arg for k in value.keywords]
            if "timeout" in keys:
                names.add(node.targets[0].id)
    return names


def _parameters_given_timeout_dicts(functions: list[ast.AST]) -> dict[str, set[str]]:
    """Parameters that every call of their function (in the same module) fills with a dict holding a timeout."""
    by_name = {f.name: f for f in functions}
    seen: dict[tuple[str, str], list[bool]] = {}
    for caller in functions:
        timeout_dicts = _dicts_with_timeout(caller)
        for node in ast.walk(caller):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in by_name:
                params = [a.arg for a in by_name[node.func.id].args.args]
                for param, arg in zip(params, node.args):
                    seen.setdefault((node.func.id, param), []).append(
                        isinstance(arg, ast.Name) and arg.id in timeout_dicts)
    result: dict[str, set[str]] = {}
    for (function, param), passed in seen.items():
        if all(passed):
            result.setdefault(function, set()).add(param)
    return result


def _has_deadline(call: ast.Call, timeout_dicts: set[str]) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "timeout":
            return True
        if keyword.arg is None and isinstance(keyword.value, ast.Name) and keyword.value.id in timeout_dicts:
            return True
    return False


def test_L15_every_rpc_call_in_the_load_generator_has_a_deadline():
    missing = []
    for path in sorted((ROOT / "loadgen").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        forwarded = _parameters_given_timeout_dicts(functions)
        for function in functions:
            timeout_dicts = _dicts_with_timeout(function) | forwarded.get(function.name, set())
            for node in ast.walk(function):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                method = node.func.attr
                if method in ("future", "with_call"):
                    method = ast.unparse(node.func.value).split(".")[-1]
                    if method not in KSERVE_RPCS:
                        continue
                elif method not in KSERVE_RPCS and method != "infer":
                    continue
                if not _has_deadline(node, timeout_dicts):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not missing, "RPCs without a deadline:\n" + "\n".join(sorted(set(missing)))


def test_L15_a_hung_server_yields_deadline_not_a_stuck_load_generator(repository, start_server, start_load):
    target = start_server(repository)
    run = start_load("sweep", target.grpc_url, "image8", "--concurrency", "2", "--warmup", "0s",
                     "--duration", "3s", "--drain", "5s", "--deadline", "500ms", *ONE_WINDOW)
    run.wait_in_window()
    target.process.send_signal(signal.SIGSTOP)  # the server hangs: connections stay open, nothing answers
    try:
        code = run.finish(timeout=120)
    finally:
        target.process.send_signal(signal.SIGCONT)
    assert code != 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    assert step["deadline"] > 0 and step["ok"] > 0
    assert any(e["code"] == "DEADLINE_EXCEEDED" for e in step["errors"])


HUNG_RATE_PER_S = 20
HUNG_CAP = 8
HUNG_WINDOW_S = 8.0


def test_L21_a_hung_server_fills_the_in_flight_cap_and_the_rest_is_counted_as_misses(
    repository, start_server, start_load
):
    """The server stops answering mid-window: arrivals go on being scheduled at the rate, the first of them fill
    --max-in-flight, and every later one is counted not sent for that reason. That is the server's result (it is
    saturated), not a fault of the run: the step is valid, and every arrival never sent or never answered enters
    the latency as a miss censored at the window's end, so the percentiles are lower bounds and say so."""
    target = start_server(repository)
    run = start_load("rate", target.grpc_url, "image8", "--rate", str(HUNG_RATE_PER_S), "--arrival", "constant",
                     "--max-in-flight", str(HUNG_CAP), "--warmup", "0s", "--duration", f"{HUNG_WINDOW_S:g}s",
                     "--drain", "2s", "--max-error-rate", "1")
    run.wait_in_window()
    stopped_unix = time.time()
    target.process.send_signal(signal.SIGSTOP)  # the server hangs: connections stay open, nothing answers
    try:
        code = run.finish(timeout=120)
    finally:
        target.process.send_signal(signal.SIGCONT)
    assert code == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    open_loop = step["open_loop"]
    assert open_loop["scheduled"] == pytest.approx(HUNG_RATE_PER_S * HUNG_WINDOW_S, abs=1), open_loop
    assert open_loop["sent"] + open_loop["not_sent"] == open_loop["scheduled"], open_loop
    assert open_loop["not_sent"] == open_loop["not_sent_in_flight_cap"] > 0, open_loop
    due_after_stop = HUNG_RATE_PER_S * (step["window_end_unix"] - stopped_unix)
    assert open_loop["not_sent_in_flight_cap"] >= due_after_stop - HUNG_CAP - 3, (open_loop, due_after_stop)
    assert step["ok"] > 0 and step["abandoned"] == HUNG_CAP  # the cap's worth still waiting when the drain ended
    assert open_loop["unsent_cause"] == "server_saturated" and not step["client"]["client_bound"]
    assert step["valid"] and report["valid"] and step["invalid_reasons"] == []
    # every arrival of the window is in the distribution: the answered, and the unsent and unanswered as misses
    everyone = step["latency_scheduled_us"]
    assert everyone["count"] == open_loop["scheduled"]
    assert everyone["censored"] == open_loop["not_sent"] + HUNG_CAP == open_loop["censored"]
    assert {"p99", "max"} <= set(everyone["lower_bound"]) and everyone["p99"] > step["latency_us"]["p99"]
    (warning,) = report["warnings"]
    assert "the server was saturated" in warning and str(open_loop["not_sent"]) in warning
    markdown = (run.out / "report.md").read_text()
    assert warning in markdown and "server saturated" in markdown and "≥" in markdown


SATURATED_RATE_PER_S = 200
"""Four times what slow20 (20 ms a request, one at a time) serves."""


def test_L21_a_saturated_server_is_a_server_result_and_fails_an_slo_search_however_few_the_samples(
    repository, start_server, start_load
):
    """Asked for 200 requests/s, a model that serves 50/s: the in-flight cap fills with slow answers and most
    arrivals go unsent. The rate run is valid and says the server was saturated, with p99 over every scheduled
    arrival (a lower bound, far above the answered requests' own p99); an SLO search whose lower end is that
    rate FAILs there, though its step had too few samples to claim p99 (a saturated server misses its SLO, it
    is not unknown)."""
    target = start_server(repository)
    load = ("--arrival", "constant", "--max-in-flight", "2", "--warmup", "500ms", "--duration", "3s",
            "--drain", "5s")
    run = start_load("rate", target.grpc_url, "slow20", "--rate", str(SATURATED_RATE_PER_S), *load)
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    open_loop, everyone = step["open_loop"], step["latency_scheduled_us"]
    assert open_loop["unsent_cause"] == "server_saturated", (open_loop, step["client"])
    assert open_loop["not_sent_in_flight_cap"] > open_loop["scheduled"] / 2, open_loop
    assert step["valid"] and "saturated" in report["warnings"][0]
    assert "p99" in everyone["lower_bound"] and everyone["p99"] > 2 * step["latency_us"]["p99"]

    search = start_load("slo", target.grpc_url, "slow20", "--search", "rate", "--low", str(SATURATED_RATE_PER_S),
                        "--high", str(2 * SATURATED_RATE_PER_S), "--latency-slo", "p99=10s", *load)
    assert search.finish(timeout=120) == 1, search.stdout + search.stderr()
    report = search.report()
    assert report["verdict"] == "FAIL" and report["slo"]["verdict"] == "FAIL", report["slo"]
    (step,) = report["steps"]
    assert not step["slo"]["met"] and not step["slo"]["inconclusive"]
    assert step["slo"]["objectives"][0]["samples"] < 10_000  # far fewer than p99's 10,000: a FAIL all the same


def test_L15_a_hung_server_at_start_fails_setup_within_its_deadline(repository, start_server, start_load):
    target = start_server(repository)
    target.process.send_signal(signal.SIGSTOP)
    try:
        run = start_load("sweep", target.grpc_url, "image8", "--concurrency", "1", *SHORT, *ONE_WINDOW)
        started = time.monotonic()
        code = run.finish(timeout=120)
        took = time.monotonic() - started
    finally:
        target.process.send_signal(signal.SIGCONT)
    assert code != 0
    assert "DEADLINE_EXCEEDED" in run.stderr() or "Deadline" in run.stderr(), run.stderr()
    assert took < 60
