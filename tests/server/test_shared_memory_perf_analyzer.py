"""Triton's perf_analyzer, unmodified, measures ipsbench-serve with ``--shared-memory system``: it registers its
regions, sends requests whose input and output tensors live in them, and unregisters them at the end.

``scripts/perf-analyzer.sh`` sets up the PyPI binary on first use; the test skips only when that setup fails (the
script's exit status 2 with its own message), never when perf_analyzer itself fails.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "perf-analyzer.sh"
MODEL = "resnet18"
SETUP_FAILED = 2
RUN_TIMEOUT_S = 240
REQUEST_COUNT = re.compile(r"^\s*Request count: (\d+)$", re.MULTILINE)


def success_count(url: str) -> int:
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(MODEL, client_timeout=CALL_TIMEOUT_S)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


@pytest.mark.timeout(300)
def test_perf_analyzer_over_system_shared_memory(server, tmp_path):
    before = success_count(server.grpc_url)
    command = [
        str(SCRIPT),
        *("-m", MODEL, "-u", server.grpc_url, "-i", "grpc", "--shared-memory", "system"),
        *("--output-shared-memory-size", str(1000 * 4)),  # resnet18's [1,1000] FP32 output, exactly
        *("--concurrency-range", "1:1", "--measurement-interval", "2000", "--input-data", "random", "-b", "1"),
        # Bounded and loose, as in test_server_perf_analyzer.py: this checks that the path works, not steadiness.
        *("--max-trials", "10", "--stability-percentage", "400"),
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = run.stdout + run.stderr
    if run.returncode == SETUP_FAILED and "perf-analyzer.sh:" in run.stderr:
        pytest.skip(f"perf_analyzer could not be set up: {run.stderr.strip()}")
    assert run.returncode == 0, output
    reported = [int(n) for n in REQUEST_COUNT.findall(run.stdout)]
    assert reported and all(n > 0 for n in reported), output
    assert success_count(server.grpc_url) - before >= sum(reported)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert not client.get_system_shared_memory_status(client_timeout=CALL_TIMEOUT_S).regions, output
