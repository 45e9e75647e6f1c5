"""The SLO searches the project ships (compose's load-run, the Kubernetes SLO Job, README's example) end PASS or
FAIL on the merits: run with their own judgement (objective, error bound, sample rule, search kind) against a real
ipsbench-serve, a server that meets the objective passes and one that misses it fails; neither ends INCONCLUSIVE
for want of samples. Only where the load goes and how hard is changed: loopback, a test model, and a lower end
this box can serve, with a short --duration the step grows past until it holds the samples its p99 needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from deploy_helpers import KUSTOMIZATIONS, REPO_ROOT, compose_commands, k8s_commands
from onnx_test_models import write_image_model
from test_deploy_commands import readme_slo_examples

JUDGEMENT = ("--latency-slo", "--max-error-rate", "--sample-rule", "--percentile", "--search")
"""The flags that decide a verdict: kept as shipped."""
PLACEMENT = ("--target", "--model", "--metrics-url", "--out", "--remote-workers", "--master-bind", "--low",
             "--high", "--duration", "--warmup", "--max-steps", "--processes", "--arrival", "--drain")
"""The flags that say where the load goes and how hard: set by the test."""
RUN_TIMEOUT_S = 240


def shipped_slo_commands() -> list[list[str]]:
    commands = [list(c.argv) for c in compose_commands() if c.argv[1:2] == ("slo",)]
    for folder in KUSTOMIZATIONS:
        commands += [list(c.argv) for c in k8s_commands(folder) if c.argv[1:2] == ("slo",)]
    return commands + readme_slo_examples()


def flag_values(argv: list[str], flags: tuple[str, ...]) -> tuple:
    return tuple((argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i] in flags)


def judgement() -> list[str]:
    """The one judgement every shipped SLO search uses (a second one would need its own PASS and FAIL here)."""
    commands = shipped_slo_commands()
    unknown = {text for argv in commands for text in argv if text.startswith("--")} - {*JUDGEMENT, *PLACEMENT}
    assert not unknown, f"shipped SLO searches use flags this test neither keeps nor sets: {unknown}"
    judgements = {flag_values(argv, JUDGEMENT) for argv in commands}
    assert len(judgements) == 1, f"shipped SLO searches judge differently: {judgements}"
    (only,) = judgements
    assert ("--search", "rate") in only and any(flag == "--latency-slo" for flag, _ in only), only
    return [text for pair in only for text in pair]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    repository = tmp_path_factory.mktemp("shipped-slo-models")
    write_image_model(repository, "quick")
    # every request takes 150 ms, batched up to 8 so that 40 requests/s are served, but never within 100 ms
    write_image_model(repository, "slow150", delay_ms=150, max_batch_size=8)
    return repository


def run_shipped_search(target: str, model: str, out, low: int) -> tuple[int, dict, str]:
    argv = [sys.executable, "-m", "ipsbench.loadgen", "slo", *judgement(), "--target", target, "--model", model,
            "--out", str(out), "--low", str(low), "--high", str(2 * low), "--max-steps", "2", "--duration", "2s",
            "--warmup", "500ms", "--drain", "5s", "--arrival", "constant"]
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return result.returncode, json.loads((out / "report.json").read_text()), result.stdout + result.stderr


@pytest.mark.timeout(2 * RUN_TIMEOUT_S)
def test_the_shipped_slo_search_passes_a_server_that_meets_it_and_fails_one_that_misses_it(
    models, start_server, tmp_path
):
    server = start_server(models)
    code, report, output = run_shipped_search(server.grpc_url, "quick", tmp_path / "meets", low=250)
    assert code == 0, output
    assert report["verdict"] == "PASS" and report["slo"]["verdict"] == "PASS", report["slo"]
    assert report["slo"]["search"]["best"] >= 250
    lower = report["steps"][0]
    p99 = next(o for o in lower["slo"]["objectives"] if o["name"] == "p99")
    assert p99["met"] and p99["samples"] >= 10_000 and lower["window_grown"]  # grown past 2 s to hold them

    code, report, output = run_shipped_search(server.grpc_url, "slow150", tmp_path / "misses", low=40)
    assert code == 1, output
    assert report["verdict"] == "FAIL" and report["slo"]["verdict"] == "FAIL", report["slo"]
    (step,) = report["steps"]
    p99 = next(o for o in step["slo"]["objectives"] if o["name"] == "p99")
    # far fewer than 10,000 samples, but more of them over 100 ms than p99 could ever allow: missed, not unknown
    assert not p99["met"] and p99["enough_samples"] and p99["samples"] < 10_000
    assert not step["slo"]["inconclusive"] and "more than the 100 of 10,000 p99 allows" in p99["why"]
