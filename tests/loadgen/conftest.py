"""Fixtures for the load generator's tests."""
import os
import subprocess
import sys

import pytest
from load_helpers import REPO_ROOT, LoadRun

CLOSED_LOOP = ("sweep", "offline", "single-stream", "ramp", "spike")


@pytest.fixture
def start_load(tmp_path):
    """Start ``python -m loadgen SCENARIO --target TARGET ... --out <tmp>`` (``sweep`` unless ``scenario`` says
    otherwise); processes left running are killed. A closed-loop run measures one window per step unless the
    test passes ``--max-trials`` (stability judgements have tests of their own)."""
    runs: list[LoadRun] = []
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # synthetic images cached per test, not in ~

    def start(target: str, *args: str, model: str = "resnet18", scenario: str = "sweep") -> LoadRun:
        out = tmp_path / f"report{len(runs)}"
        log = tmp_path / f"load{len(runs)}.log"
        if scenario in CLOSED_LOOP and "--max-trials" not in args:
            args = (*args, "--max-trials", "1")
        command = [sys.executable, "-m", "loadgen", scenario, "--target", target, "--model", model,
                   "--out", str(out), *args]
        with log.open("w") as stderr:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                       env=env)
        run = LoadRun(process, out, log)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
        run.process.communicate(timeout=10)
