"""Fixtures for the load generator's tests."""
import subprocess
import sys

import pytest
from load_helpers import REPO_ROOT, LoadRun


@pytest.fixture
def start_load(tmp_path):
    """Start ``python -m loadgen SCENARIO --target TARGET ... --out <tmp>`` (``sweep`` unless ``scenario`` says
    otherwise); processes left running are killed."""
    runs: list[LoadRun] = []

    def start(target: str, *args: str, model: str = "resnet18", scenario: str = "sweep") -> LoadRun:
        out = tmp_path / f"report{len(runs)}"
        log = tmp_path / f"load{len(runs)}.log"
        command = [sys.executable, "-m", "loadgen", scenario, "--target", target, "--model", model,
                   "--out", str(out), *args]
        with log.open("w") as stderr:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        run = LoadRun(process, out, log)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
        run.process.communicate(timeout=10)
