"""Fixtures for the reliability tests: small fault models, a server on them, a load-run factory."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from reliability_helpers import LoadRun, server_flags, start_load_run
from tritonclient.grpc import service_pb2_grpc


@pytest.fixture(scope="session")
def serve_help() -> str:
    """``ipsbench-serve --help``: the options and defaults the server states."""
    return server_flags()


@pytest.fixture(scope="module")
def channel_to():
    """``channel_to(url)`` → a channel closed when the module ends."""
    channels: list[grpc.Channel] = []

    def open_one(url: str) -> grpc.Channel:
        channel = grpc.insecure_channel(url)
        channels.append(channel)
        return channel

    yield open_one
    for channel in channels:
        channel.close()


@pytest.fixture
def stub_for(channel_to):
    return lambda url: service_pb2_grpc.GRPCInferenceServiceStub(channel_to(url))


@pytest.fixture
def start_load(tmp_path: Path):
    """``start_load(scenario, target, model, *args, out=None)`` → a ``python -m ipsbench.loadgen`` subprocess; killed if left running."""
    runs: list[LoadRun] = []

    def start(scenario: str, target: str, model: str, *args: str, out: Path | None = None) -> LoadRun:
        index = len(runs)
        run = start_load_run(out or tmp_path / f"report{index}", tmp_path / f"load{index}.log", scenario, target,
                             model, *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()
