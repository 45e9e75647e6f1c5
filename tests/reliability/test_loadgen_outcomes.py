"""Outcomes named for what happened (matrix rows L19, L20): a target no server answers for is UNREACHABLE, not
REJECTED (which is the server's admission control), in every count, table and log; an unknown model is reported with
what the server said. Real ipsbench-load runs against a real ipsbench-serve, killed for real."""

from __future__ import annotations

import csv
import signal
import socket

import grpc
import pytest
from reliability_helpers import assert_accounted, write_image_model

from ipsbench.loadgen.client import MAX_SAID_CHARS, said
from ipsbench.loadgen.outcomes import Outcome, outcome_for
from ipsbench.server import errors

SHORT = ("--warmup", "0s", "--duration", "1s", "--drain", "5s", "--max-trials", "1")


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("outcome-models")
    write_image_model(repo, "image8")
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- L19: a dead or restarting target is UNREACHABLE -------------------------------------------------------------


def test_L19_connection_failures_and_admission_control_are_told_apart():
    with grpc.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert outcome_for(error.code(), error.details(), error.debug_error_string()) is Outcome.UNREACHABLE
    assert outcome_for(grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer") is Outcome.UNREACHABLE
    assert outcome_for(grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)") is Outcome.UNREACHABLE
    admission = (errors.QUEUE_FULL_MESSAGE, errors.QUEUE_TIMEOUT_MESSAGE, errors.SHUTTING_DOWN_MESSAGE,
                 errors.LOADING_MESSAGE, "model 'image8' is not ready: its batcher stopped")
    for message in admission:
        assert outcome_for(grpc.StatusCode.UNAVAILABLE, message, f"UNAVAILABLE:{message}") is Outcome.REJECTED
    # A refusal passed on by an older grpcio names the peer it came from: the server's word, whatever it says.
    from_peer = "{created_time:..., grpc_status:14, grpc_message:\"upstream connect error\"} Error received from peer"
    assert outcome_for(grpc.StatusCode.UNAVAILABLE, "upstream connect error", from_peer) is Outcome.REJECTED
    assert outcome_for(grpc.StatusCode.INTERNAL, "Connection refused") is Outcome.FAILED


def _rows(path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_L19_a_killed_server_is_unreachable_in_counts_tables_merge_and_request_logs(
    repository, start_server, start_load, tmp_path
):
    target = start_server(repository)
    log = tmp_path / "requests.csv"
    run = start_load("sweep", target.grpc_url, "image8", "--concurrency", "2,2", "--processes", "2",
                     "--warmup", "0s", "--duration", "3s", "--drain", "5s", "--max-trials", "1",
                     "--request-log", str(log))
    run.wait_in_window()  # into the first step on purpose
    target.stop(signal.SIGKILL)
    assert run.finish(timeout=180) == 2, run.stdout + run.stderr()  # errors make the run invalid

    report = run.report()
    assert_accounted(report)
    totals = report["totals"]
    assert totals["ok"] > 0 and totals["unreachable"] > 0
    assert totals["rejected"] == 0  # no admission control refused anything: no server was there to
    rows = [error for step in report["steps"] for error in step["errors"]]
    assert rows and {(e["outcome"], e["code"]) for e in rows} == {("unreachable", "UNAVAILABLE")}, rows
    for step in report["steps"]:  # the master's merge of the workers' steps keeps the new count
        per_worker = [s for worker in report["workers"] for s in worker["steps"] if s["index"] == step["index"]]
        assert step["unreachable"] == sum(s["unreachable"] for s in per_worker)
    csv_rows = _rows(run.out / "steps.csv")
    assert sum(int(row["unreachable"]) for row in csv_rows) == totals["unreachable"]
    identity = "issued = ok + rejected + unreachable + failed + deadline + cancelled + abandoned"
    assert report["method"]["accounting"].startswith(identity)
    for name in ("report.md", "report.html"):
        text = (run.out / name).read_text()
        assert identity in text and "unreachable" in text.split(identity)[0], name  # in the tables above too
    logged = [row for worker in (0, 1) for row in _rows(tmp_path / f"requests.worker{worker}.csv")]
    assert sum(row["outcome"] == "unreachable" for row in logged) == totals["unreachable"]
    assert all(row["code"] == "UNAVAILABLE" for row in logged if row["outcome"] == "unreachable")


# -- L20: an unknown model, as the server said it ----------------------------------------------------------------


def test_L20_an_unknown_model_is_refused_at_setup_with_what_the_server_said(server, start_load):
    run = start_load("sweep", server.grpc_url, "no_such_model", "--concurrency", "1", *SHORT)
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    log = run.stderr()
    assert "NOT_FOUND: Request for unknown model: 'no_such_model' is not found" in log, log
    assert "not ready" not in log
    assert not (run.out / "report.json").exists()  # refused before any load


def test_L20_an_unknown_version_is_refused_with_what_the_server_said(server, start_load):
    run = start_load("sweep", server.grpc_url, "image8", "--model-version", "7", "--concurrency", "1", *SHORT)
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    assert "NOT_FOUND: Request for unknown model: 'image8' version 7 is not found" in run.stderr()
    assert not (run.out / "report.json").exists()


class _Answer(grpc.RpcError):
    """A status as grpcio's errors carry it (another server's answer may say far more than ours)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_L20_what_the_server_said_is_quoted_up_to_a_bound():
    assert said(_Answer(grpc.StatusCode.NOT_FOUND, "no model 'x'")) == "NOT_FOUND: no model 'x'"
    quoted = said(_Answer(grpc.StatusCode.NOT_FOUND, "model " + "m" * 5000))
    assert quoted.startswith("NOT_FOUND: model mmm") and quoted.endswith("…")
    assert len(quoted) == len("NOT_FOUND: ") + MAX_SAID_CHARS + 1
    assert said(_Answer(grpc.StatusCode.UNAVAILABLE, "")) == "UNAVAILABLE"
