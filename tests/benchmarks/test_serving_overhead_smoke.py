"""benchmarks/serving_overhead.py end to end, one short round of fp32 requests: its table and its ratios come out.

Real parts throughout: the benchmark starts ipsbench-serve and both yardstick servers and drives them with Triton's
perf_analyzer. It skips only when ``scripts/perf-analyzer.sh`` cannot set perf_analyzer up (its exit status 2 with
its own message); figures are not judged (a shared box), only that each server got some and the ratios were formed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "serving_overhead.py"
PERF_ANALYZER = ROOT / "scripts" / "perf-analyzer.sh"
SETUP_FAILED = 2
SERVERS = ("ipsbench-serve", "inline servicer", "fixed response")
NUMBER = r"\d+(?:\.\d+)?"


@pytest.fixture(scope="module")
def perf_analyzer_ready() -> None:
    """perf_analyzer set up (first use installs it); skip when the script says it cannot be."""
    run = subprocess.run(["bash", str(PERF_ANALYZER), "--version"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    if run.returncode == SETUP_FAILED and "perf-analyzer.sh:" in run.stderr:
        pytest.skip(f"perf_analyzer could not be set up: {run.stderr.strip()}")


@pytest.mark.timeout(240)
def test_one_round_prints_the_table_and_the_ratios(perf_analyzer_ready, tmp_path):
    out = tmp_path / "overhead.md"
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--rounds", "1", "--seconds", "1", "--payloads", "fp32", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=200)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output

    for server in SERVERS:
        row = re.search(rf"^\| fp32 602 KB \| {server} \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \|", run.stdout,
                        re.MULTILINE)
        assert row, f"no figures for {server}:\n{output}"
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0, row.group(0)
    for yardstick, aim in (("inline servicer", "1"), ("fixed response", "0.85")):
        assert re.search(rf"^- ipsbench-serve / {yardstick} req/s, fp32: {NUMBER}, aim >= {aim}: (met|NOT met)$",
                         run.stdout, re.MULTILINE), output
    assert "ipsbench-serve uint8 / fp32 req/s: needs --payloads with both fp32 and uint8" in run.stdout
    assert re.search(rf"^- ipsbench-serve fp32 req/s: {NUMBER} \(inline servicer {NUMBER}\)", run.stdout, re.MULTILINE)
    written = out.read_text(encoding="utf-8")
    assert "| fp32 602 KB | ipsbench-serve |" in written and "ipsbench-serve / inline servicer req/s" in written
