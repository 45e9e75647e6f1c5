"""``--log-format json``: every log line is one JSON object with ts, level, logger, msg and the record's fields."""

from __future__ import annotations

import json
from datetime import datetime

import grpc
import numpy as np
from server_helpers import CALL_TIMEOUT_S, infer_request
from tritonclient.grpc import service_pb2_grpc


def test_json_logs_are_one_object_per_line_with_fields(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path, "--log-format", "json", "--log-verbose")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(infer_request("affine", np.ones((1, 5), np.float32)), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert srv.stop() == 0
    lines = [line for line in srv.log().splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]  # every line parses
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= set(entry), entry
        datetime.fromisoformat(entry["ts"])
    ready = [e for e in entries if e["msg"] == "model 'affine' version 1 is ready"]
    assert ready and ready[0]["model"] == "affine" and ready[0]["version"] == 1 and ready[0]["level"] == "INFO"
    assert any("unexpected shape for input 'input'" in e["msg"] and e["level"] == "DEBUG" for e in entries)
    assert entries[-1]["msg"] == "stopped"


def test_text_logs_are_the_default(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path)
    srv.stop()
    first = srv.log().splitlines()[0]
    assert not first.startswith("{") and " INFO " in first
