"""Queue policy (RELIABILITY F02–F04): default timeout with REJECT or DELAY, and the per-request ``timeout``.

Each model runs one request at a time; ``A1`` and ``A2`` (requests of ones) keep its only instance busy for about
``SLOW_MS`` each while ``B`` and ``C`` (zeros, quick) wait in its queue.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, output_array, scrape

SLOW_MS = 400
LONG_US = 20_000_000
SHORT_US = 60_000


def _policy(action: str, default_us: int, allow_override: bool = True) -> str:
    return (
        "dynamic_batching { default_queue_policy { "
        f"timeout_action: {action} default_timeout_microseconds: {default_us} "
        f"allow_timeout_override: {'true' if allow_override else 'false'} }} }}\n"
    )


MODELS = {
    "delay": _policy("DELAY", LONG_US),
    "reject_long": _policy("REJECT", LONG_US),
    "reject_short": _policy("REJECT", SHORT_US),
    "no_override": _policy("REJECT", LONG_US, allow_override=False),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, write_test_model, start_module_server):
    repo = tmp_path_factory.mktemp("queue-policy-models")
    for name, policy in MODELS.items():
        write_test_model(
            repo, name, kind="slow", delay_ms=SLOW_MS, max_batch_size=1, dynamic_batching=False, extra_config=policy
        )
    return start_module_server(repo)


class Sent:
    """Requests in flight on one model; ``finished`` lists their labels in completion order."""

    def __init__(self, stub, model: str) -> None:
        self.stub, self.model = stub, model
        self.futures: dict[str, grpc.Future] = {}
        self.finished: list[str] = []
        self._lock = threading.Lock()

    def send(self, label: str, value: float, timeout_us: int = 0) -> None:
        request = infer_request(self.model, np.full((1, 4), value, np.float32), id=label)
        if timeout_us:
            request.parameters["timeout"].int64_param = timeout_us
        future = self.stub.ModelInfer.future(request, timeout=CALL_TIMEOUT_S)
        future.add_done_callback(lambda _: self._done(label))
        self.futures[label] = future

    def _done(self, label: str) -> None:
        with self._lock:
            self.finished.append(label)

    def outcome(self, label: str):
        try:
            return self.futures[label].result(timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            return err


def _pending(server, model: str) -> float:
    return metric(scrape(server.metrics_url), "nv_inference_pending_request_count", model=model, version="1")


def _rejected(server, model: str) -> float:
    return metric(scrape(server.metrics_url), "nv_inference_request_failure", model=model, version="1", reason="REJECTED")


def _queue_behind_a_busy_instance(stub, server, model: str, b_timeout_us: int = 0) -> Sent:
    """A1 runs and A2 waits (so A1 is known to be executing); then B (with ``b_timeout_us``) and C (no timeout of
    its own) are queued behind them."""
    sent = Sent(stub, model)
    sent.send("A1", 1.0)
    sent.send("A2", 1.0)
    deadline = time.monotonic() + 10
    while _pending(server, model) != 1:
        assert time.monotonic() < deadline and not sent.futures["A1"].done(), "A1 and A2 did not arrive"
        time.sleep(0.01)
    sent.send("B", 0.0, b_timeout_us)
    sent.send("C", 0.0)
    while _pending(server, model) < 3:
        assert time.monotonic() < deadline and not sent.futures["A2"].done(), "B and C were not queued behind A"
        time.sleep(0.01)
    return sent


def _assert_ok(result) -> None:
    assert not isinstance(result, grpc.RpcError), (result.code(), result.details())
    assert output_array(result).shape == (1, 4)


def _assert_timed_out(result) -> None:
    assert isinstance(result, grpc.RpcError), "expected a queue timeout"
    assert result.code() == grpc.StatusCode.UNAVAILABLE
    assert "Request timeout expired" in result.details()


def test_F03_delay_runs_a_timed_out_request_after_one_still_inside_its_timeout(stub, server):
    before = _rejected(server, "delay")
    sent = _queue_behind_a_busy_instance(stub, server, "delay", b_timeout_us=SHORT_US)
    for label in ("A1", "A2", "B", "C"):
        _assert_ok(sent.outcome(label))  # DELAY never rejects
    # B arrived before C but its 60 ms ran out behind A1 and A2; C, still inside the model's 20 s, runs first.
    assert sorted(sent.finished[:2]) == ["A1", "A2"]  # the two may reach the server in either order
    assert sent.finished[2:] == ["C", "B"]
    assert _rejected(server, "delay") == before


def test_F04_shorter_request_timeout_is_honoured(stub, server):
    before = _rejected(server, "reject_long")
    sent = _queue_behind_a_busy_instance(stub, server, "reject_long", b_timeout_us=SHORT_US)
    for label in ("A1", "A2"):
        _assert_ok(sent.outcome(label))
    _assert_timed_out(sent.outcome("B"))  # its own 60 ms, not the model's 20 s
    _assert_ok(sent.outcome("C"))
    assert _rejected(server, "reject_long") - before == 1  # F02: reason="REJECTED", once per request


def test_F04_longer_request_timeout_is_clamped_to_the_default(stub, server):
    before = _rejected(server, "reject_short")
    sent = _queue_behind_a_busy_instance(stub, server, "reject_short", b_timeout_us=LONG_US)
    first, second = sorted(("A1", "A2"), key=lambda label: isinstance(sent.outcome(label), grpc.RpcError))
    _assert_ok(sent.outcome(first))
    _assert_timed_out(sent.outcome(second))  # 400 ms behind the first, against the model's 60 ms
    _assert_timed_out(sent.outcome("B"))  # asked for 20 s, got the model's 60 ms
    _assert_timed_out(sent.outcome("C"))
    assert _rejected(server, "reject_short") - before == 3
    _assert_ok(stub.ModelInfer(infer_request("reject_short", np.zeros((1, 4), np.float32)), timeout=CALL_TIMEOUT_S))


def test_request_timeout_is_ignored_without_allow_timeout_override(stub, server):
    sent = _queue_behind_a_busy_instance(stub, server, "no_override", b_timeout_us=SHORT_US)
    for label in ("A1", "A2", "B", "C"):
        _assert_ok(sent.outcome(label))
