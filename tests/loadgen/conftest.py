"""Fixtures for the load generator's tests."""
import os
from pathlib import Path

import pytest
from load_helpers import LoadRun, start_load_run

CLOSED_LOOP = ("sweep", "offline", "single-stream", "ramp", "spike")


@pytest.fixture
def start_load(tmp_path):
    """Start ``python -m ipsbench.loadgen SCENARIO --target TARGET ... --out <tmp>`` (``sweep`` unless ``scenario`` says
    otherwise); processes left running are killed. A closed-loop run measures one window per step unless the
    test passes ``--max-trials`` (stability judgements have tests of their own)."""
    runs: list[LoadRun] = []
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # synthetic images cached per test, not in ~

    def start(target: str, *args: str, model: str = "resnet18", scenario: str = "sweep") -> LoadRun:
        if scenario in CLOSED_LOOP and "--max-trials" not in args:
            args = (*args, "--max-trials", "1")
        index = len(runs)
        out = tmp_path / f"report{index}"
        if "--out" in args:  # the test's own folder: where the run's reports are read from
            position = args.index("--out")
            out = Path(args[position + 1])
            args = (*args[:position], *args[position + 2:])
        run = start_load_run(out, tmp_path / f"load{index}.log", scenario, target, model, *args, env=env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()
