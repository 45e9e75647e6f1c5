"""Each step names the resource that limited it, from real runs against ipsbench-serve on small CPU models."""
import os
from contextlib import contextmanager

import pytest
from load_helpers import assert_accounted

from ipsbench.loadgen.bottleneck import HOST_CPU_BUSY_PERCENT

IMAGE = (3, 16, 16)
"""The test models take 16x16 RGB images, so that the load generator can drive them."""
SHORT = ("--warmup", "500ms", "--duration", "2s", "--drain", "5s")
SLOW_MS = 8
"""A 16x16 image normalized ImageNet's way peaks near 2.6, so a slow model's request takes about 20 ms."""


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    repo = tmp_path_factory.mktemp("bottleneck-models")
    write_test_model(repo, "slow", kind="slow", delay_ms=SLOW_MS, max_batch_size=0, dynamic_batching=False,
                     dims=IMAGE)
    write_test_model(repo, "slow_pair", kind="slow", delay_ms=SLOW_MS, max_batch_size=0, dynamic_batching=False,
                     instance_count=2, dims=IMAGE)
    write_test_model(repo, "tiny", kind="affine", max_batch_size=8, dims=IMAGE)
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository)


@contextmanager
def pinned(cpus: set[int]):
    """Processes started inside inherit this CPU affinity (the test's own is given back after)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def only_step(run) -> dict:
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"], report["invalid_reasons"]
    assert_accounted(report)
    [step] = report["steps"]
    return step


def test_a_slow_model_with_more_users_than_instances_is_engine_bound(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "3", "--metrics-url", server.metrics_url, *SHORT, model="slow")
    step = only_step(run)
    bottleneck = step["bottleneck"]
    assert bottleneck["resource"] == "engine", bottleneck
    assert bottleneck["figures"]["engine_busy"] >= 0.9 and bottleneck["figures"]["instances"] == 1
    assert step["server"]["queue_ms"] > step["server"]["compute_ms"] / 2  # the users wait for the one instance
    assert bottleneck["sentence"].endswith("this figure is the engine's capacity")
    assert not step["client"]["client_bound"]
    markdown = (run.out / "report.md").read_text()
    assert "## Bottleneck per step" in markdown and "- concurrency 3: **engine**: engine " in markdown
    assert f"bottleneck at concurrency 3: engine: {bottleneck['sentence']}" in run.stdout


def test_one_user_on_two_instances_is_latency_bound(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "1", "--metrics-url", server.metrics_url, *SHORT,
                     model="slow_pair")
    bottleneck = only_step(run)["bottleneck"]
    figures = bottleneck["figures"]
    assert figures["engine_busy"] < 0.75 and figures["instances"] == 2
    assert not figures["load_generator_client_bound"]
    # Nothing of the run's own is saturated; a host that other processes keep busy is said as such.
    if figures["host_cpu_percent"] >= HOST_CPU_BUSY_PERCENT:
        assert bottleneck["resource"] == "host_cpu", bottleneck
    else:
        assert bottleneck["resource"] == "none", bottleneck
        assert "latency-bound" in bottleneck["sentence"]


def test_a_tiny_model_served_and_loaded_from_one_cpu_saturates_the_host(repository, start_server, start_load):
    cpu = {min(os.sched_getaffinity(0))}
    with pinned(cpu):
        server = start_server(repository)
        run = start_load(server.grpc_url, "--concurrency", "8", "--metrics-url", server.metrics_url, *SHORT,
                         model="tiny")
    step = only_step(run)
    bottleneck = step["bottleneck"]
    assert bottleneck["resource"] == "host_cpu", bottleneck
    figures = bottleneck["figures"]
    assert figures["host_cpus"] == 1 and figures["host_cpu_percent"] >= 90 and figures["shares_server_host"]
    assert bottleneck["sentence"].startswith("the host the server and the load generator share at ")
    assert figures["engine_busy"] < 0.5  # the engine is all but idle: the figure is not the engine's
    assert not step["client"]["client_bound"]  # the load generator has half the CPU, not its own limit


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs: one for the server, one for the load")
def test_a_tiny_model_on_a_server_with_a_cpu_of_its_own_is_not_the_engines_figure(repository, start_server,
                                                                                    start_load):
    server_cpu, load_cpu = sorted(os.sched_getaffinity(0))[:2]
    with pinned({server_cpu}):
        server = start_server(repository)
    with pinned({load_cpu}):
        run = start_load(server.grpc_url, "--concurrency", "16", "--metrics-url", server.metrics_url, *SHORT,
                         model="tiny")
    step = only_step(run)
    bottleneck = step["bottleneck"]
    figures = bottleneck["figures"]
    assert figures["engine_busy"] < 0.5 and figures["server_process_cpus"] == 1
    if figures["host_cpu_percent"] >= HOST_CPU_BUSY_PERCENT:  # other processes share the load generator's CPU
        assert bottleneck["resource"] == "host_cpu", bottleneck
    else:  # the server's one CPU is its limit: its front end's work, the engine all but idle
        assert bottleneck["resource"] == "server_frontend", bottleneck
        assert bottleneck["sentence"].endswith("this figure is the server's, not the engine's")
