"""``ipsbench-load compare A.json B.json``: per-step deltas and verdict changes between two written reports, and a
refusal (exit 2) for reports it cannot read."""
import json
import subprocess
import sys

import grpc
import pytest
from load_helpers import REPO_ROOT, sweep_report

from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.report.compare import main
from ipsbench.loadgen.report.schema import write_report

MS = 1_000_000


def recorded_step(index: int, concurrency: int, ok: int, latency_ms: int, rejected: int = 0) -> StepRecord:
    """A 2 s measured window (after 1 s of warm-up) with ``ok`` requests of 1 image, ``latency_ms`` each."""
    step = StepRecord(index=index, concurrency=concurrency, warmup_s=1.0, window_s=2.0, start_ns=0)
    for _ in range(ok):
        step.record_issued()
        step.record_ok(1_500 * MS, (1_500 + latency_ms) * MS, images=1)
    for _ in range(rejected):
        step.record_issued()
        step.record_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size", 1_500 * MS, 1_501 * MS)
    return step


def written_report(out, steps):
    return write_report(sweep_report(steps), out)


@pytest.fixture
def two_runs(tmp_path):
    """A: concurrency 1 and 2, both valid. B: concurrency 2 slower with rejections (invalid) and a new level 4."""
    a = written_report(tmp_path / "a", [recorded_step(0, 1, 400, 5), recorded_step(1, 2, 600, 6)])
    b = written_report(tmp_path / "b", [recorded_step(0, 2, 500, 8, rejected=20), recorded_step(1, 4, 700, 11)])
    return a, b


def table_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells for line in text.splitlines() if line.startswith("| concurrency")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}


def test_matching_steps_show_absolute_and_relative_deltas(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "compare.md"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = table_rows(printed)
    assert list(rows) == ["concurrency 2"]  # the only load both runs ran
    row = rows["concurrency 2"]
    # images/s A, B, delta, %: 600 ok in 2 s vs 500 ok in 2 s
    assert row[1:5] == ["300.0", "250.0", "-50.0", "-16.7%"]
    assert row[9:13] == ["6.00", "8.00", "+2.00", "+33.3%"]  # p99 ms (HDR within 0.1%)
    assert row[13:16] == ["0.00%", "3.85%", "+3.85 pp"]  # 20 rejected of 520 issued
    assert "Only in A: concurrency 1." in printed and "Only in B: concurrency 4." in printed
    assert "- run: VALID → INVALID" in printed and "- concurrency 2 valid: yes → no" in printed


def test_identical_runs_have_zero_deltas_and_no_verdict_change(two_runs, capsys):
    a, _ = two_runs
    assert main([str(a), str(a)]) == 0
    printed = capsys.readouterr().out
    assert table_rows(printed)["concurrency 1"][3:5] == ["+0.0", "+0.0%"]
    assert "None: every judgement is the same in both runs." in printed


@pytest.mark.parametrize(("content", "message"), [
    ({"schema_version": 99, "steps": []}, "schema_version 99 is not readable"),
    ({"schema_version": "three", "steps": []}, "schema_version 'three' is not readable"),
    ({"steps": []}, "schema_version None is not readable"),
    ("{not json", "not JSON"),
])
def test_unreadable_reports_exit_2_through_the_cli(two_runs, tmp_path, content, message):
    a, _ = two_runs
    bad = tmp_path / "bad.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    result = subprocess.run([sys.executable, "-m", "ipsbench.loadgen", "compare", str(a), str(bad)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stdout == ""


def test_a_missing_file_exits_2(two_runs, tmp_path, capsys):
    a, _ = two_runs
    assert main([str(a), str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
