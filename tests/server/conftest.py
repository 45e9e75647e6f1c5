"""Fixtures for the server tests: a raw KServe v2 stub on the module's server, a valid input."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from server_helpers import CALL_TIMEOUT_S, infer_request, output_array
from tritonclient.grpc import service_pb2_grpc


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_url) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def valid_input() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)


@pytest.fixture
def assert_still_serves(stub, valid_input):
    """Call after a bad request: a valid request to resnet18 still succeeds."""

    def check() -> None:
        response = stub.ModelInfer(infer_request("resnet18", valid_input), timeout=CALL_TIMEOUT_S)
        assert output_array(response).shape == (1, 1000)

    return check
