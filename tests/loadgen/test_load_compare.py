"""``ipsbench-load compare A.json B.json``: per-step deltas and verdict changes between two written reports, and a
refusal (exit 2) for reports it cannot read; ``--fail-on`` as a regression gate, on reports of recorded steps and on
two real runs against a real ipsbench-serve serving a fast and a 4x slower device-time model."""
import json
import subprocess
import sys

import grpc
import pytest
from load_helpers import REPO_ROOT, assert_accounted, sweep_report

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


# -- the regression gate (--fail-on) on reports of recorded steps --------------------------------------------------


def windowed_step(index: int, concurrency: int, per_window: tuple[int, ...], latency_ms: float,
                  spread_ms: float = 0.5) -> StepRecord:
    """A stability-judged step of 1 s windows (after 1 s of warm-up): window k completes ``per_window[k]`` requests
    of 1 image, their latencies spread evenly over ``latency_ms ± spread_ms``."""
    step = StepRecord(index=index, concurrency=concurrency, warmup_s=1.0, window_s=1.0, start_ns=0,
                      trials_max=len(per_window))
    for window, ok in enumerate(per_window):
        done_ns = (1_000 + 1_000 * window + 500) * MS
        for number in range(ok):
            latency_ns = round((latency_ms - spread_ms + 2 * spread_ms * number / max(ok - 1, 1)) * MS)
            step.record_issued()
            step.record_ok(done_ns - latency_ns, done_ns, images=1)
    step.end_after_trials(len(per_window), stable=True)
    return step


@pytest.fixture
def gate_runs(tmp_path):
    """``fast``: concurrency 1, 3 windows of about 400 requests at 5 ms; ``slow``: the same load at 8 ms and about
    250 requests a window."""
    fast = written_report(tmp_path / "fast", [windowed_step(0, 1, (400, 410, 395), 5)])
    slow = written_report(tmp_path / "slow", [windowed_step(0, 1, (250, 245, 255), 8)])
    return fast, slow


def gate_rows(text: str, metric: str) -> list[list[str]]:
    """The gate's table rows of ``metric`` (metric, base, new, Δ, CI, threshold, verdict)."""
    return [cells for line in text.splitlines() if line.startswith(f"| {metric} |")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]]


def test_the_step_entry_carries_its_latency_histogram(gate_runs):
    from hdrh.histogram import HdrHistogram

    step = json.loads(gate_runs[0].read_text())["steps"][0]
    histogram = HdrHistogram.decode(step["latency_histogram"])
    assert histogram.get_total_count() == step["latency_us"]["count"] == 400 + 410 + 395
    assert histogram.get_value_at_percentile(99.0) == step["latency_us"]["p99"]


def test_a_slower_run_is_a_regression_and_the_summary_says_so_first(gate_runs, tmp_path, capsys):
    fast, slow = gate_runs
    summary = tmp_path / "summary.md"
    assert main([str(fast), str(slow), "--fail-on", "p50>+10%,images_per_s<-5%", "--summary", str(summary)]) == 1
    printed = capsys.readouterr().out
    assert "## Regression gate: **REGRESSION** (1 REGRESSION; 1 matched step)" in printed
    p50 = gate_rows(printed, "p50")[0]
    assert p50[1:4] == ["5.003 ms", "8.003 ms", "+60.0%"]  # HDR values within 0.1 %
    low, high = (float(bound.rstrip("%")) for bound in p50[4].strip("[]").split(", "))
    assert 10 < low <= 60.0 <= high and p50[5:] == ["> +10.0%", "REGRESSION"]
    images = gate_rows(printed, "images_per_s")[0]
    assert images[1:4] == ["401.7/s", "250.0/s", "-37.8%"] and images[6] == "REGRESSION"
    text = summary.read_text()
    assert text.startswith("# Regression gate: **REGRESSION**")
    assert f"Base `{fast}`, new `{slow}`." in text and "## concurrency 1: REGRESSION" in text
    assert "| p50 | 5.003 ms | 8.003 ms | +60.0% |" in text


def test_the_faster_run_as_new_is_an_improvement_and_exits_0(gate_runs, capsys):
    fast, slow = gate_runs
    assert main([str(slow), str(fast), "--fail-on", "p50>+10%,mean>+1ms,images_per_s<-5%"]) == 0
    printed = capsys.readouterr().out
    assert "Regression gate: **IMPROVEMENT**" in printed
    assert [row[6] for metric in ("p50", "mean", "images_per_s") for row in gate_rows(printed, metric)] == \
        ["IMPROVEMENT"] * 3


def test_a_report_against_itself_passes(gate_runs, capsys):
    fast, _ = gate_runs
    assert main([str(fast), str(fast), "--fail-on", "p50>+10%,p90>+10%,images_per_s<-5%,error_rate>+0pp"]) == 0
    printed = capsys.readouterr().out
    assert "Regression gate: **PASS**" in printed
    assert gate_rows(printed, "p50")[0][3:] == ["+0.0%", gate_rows(printed, "p50")[0][4], "> +10.0%", "PASS"]
    assert gate_rows(printed, "error_rate")[0][3:] == ["+0.00 pp", "[+0.00 pp, +0.00 pp]", "> +0.00 pp", "PASS"]


def test_a_threshold_inside_the_noise_is_within_noise_and_the_verdict_is_reproducible(tmp_path, capsys):
    # windows of 400 ± 40: a 2 % fall of the mean is well inside what 3 windows can tell apart
    base = written_report(tmp_path / "a", [windowed_step(0, 1, (360, 400, 440), 5)])
    new = written_report(tmp_path / "b", [windowed_step(0, 1, (350, 392, 434), 5)])
    arguments = [str(base), str(new), "--fail-on", "images_per_s<-1%"]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert gate_rows(first, "images_per_s")[0][6] == "WITHIN-NOISE"
    assert main(arguments) == 0
    assert capsys.readouterr().out == first  # a fixed seed: the same intervals every time


def test_figures_the_reports_cannot_support_are_unjudged_and_exit_2(two_runs, capsys):
    a, b = two_runs  # one window per step, 600 and 500 requests
    assert main([str(a), str(b), "--fail-on", "images_per_s<-5%,p99>+10%,p50>+10%"]) == 1  # p50 did regress
    printed = capsys.readouterr().out
    assert gate_rows(printed, "p50")[0][6] == "REGRESSION"
    assert "UNJUDGED: images_per_s needs at least 2 measured windows per step in both runs" in printed
    assert "UNJUDGED: p99 needs 10000 samples per step; the base run has 600" in printed
    assert main([str(a), str(b), "--fail-on", "p99>+10%"]) == 2
    assert "Regression gate: **UNJUDGED**" in capsys.readouterr().out


def test_a_report_without_histograms_or_with_a_hostile_one_is_unjudged(gate_runs, tmp_path, capsys):
    import base64
    import zlib

    fast, _ = gate_runs
    report = json.loads(fast.read_text())
    bomb = base64.b64encode(b"\0" * 8 + zlib.compress(b"\0" * (8 << 20))).decode()
    for value, reason in [(None, "has no latency_histogram"), ("@@@", "not an encoded histogram"),
                          (bomb, "decompresses to more than"), ("A" * (2 << 20), "longer than")]:
        report["steps"][0]["latency_histogram"] = value
        old = tmp_path / "old.json"
        old.write_text(json.dumps(report))
        assert main([str(old), str(fast), "--fail-on", "p50>+10%"]) == 2
        assert reason in capsys.readouterr().out


def test_huge_counts_are_resampled_not_expanded():
    from ipsbench.loadgen.histograms import new_histogram
    from ipsbench.loadgen.report.bootstrap import Resampler, latency_interval, recorded_values, relative

    base, new = new_histogram(), new_histogram()
    for value in range(1_000, 3_000, 7):  # 286 recorded values, 10**9 requests each
        base.record_value(value, 10**9)
        new.record_value(value * 2, 10**9)
    interval = latency_interval(recorded_values(base), recorded_values(new), "p99", Resampler(), relative, 0)
    # a doubling, seen through 3 significant digits; 2.9e11 samples leave no noise to speak of
    assert 0.99 < interval.low <= interval.change <= interval.high < 1.01


@pytest.mark.parametrize(("fail_on", "message"), [
    ("p99>+10", "clause 1 'p99>+10': the threshold needs a unit (% or ms or us or s)"),
    ("p99>+10%,p98>+1%", "clause 2 'p98>+1%': unknown metric 'p98'"),
    ("images_per_s<-5ms", "images_per_s takes %, not ms"),
    ("p99>-5%", "> names a rise, so its threshold is +X"),
    ("p99>+10%,,p50>+1%", "clause 2 '' is empty"),
    ("error_rate>+1%", "error_rate takes pp, not %"),
    ("p99 rises by 10%", "expected METRIC<-X% or METRIC>+X%"),
    ("p99>+10%" + "x" * 200, "'p99>+10%" + "x" * 52 + "…'"),
    (",".join(["p99>+1%"] * 33), "33 clauses, at most 32"),
])
def test_a_bad_fail_on_exits_2_naming_the_clause(gate_runs, capsys, fail_on, message):
    fast, slow = gate_runs
    assert main([str(fast), str(slow), "--fail-on", fail_on]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.parametrize(("clause", "threshold"), [
    ("p99.9>+2.5ms", "> +2.5 ms"), ("mean > +300us", "> +300 us"), ("requests_per_s<-5%", "< -5.0%"),
    ("p95>0%", "> +0.0%"), ("error_rate>+0.5pp", "> +0.50 pp"),
])
def test_clauses_in_every_unit_parse(clause, threshold):
    from ipsbench.loadgen.report.regression import UNJUDGED, Judgement, judgement_row, parse_fail_on

    (parsed,) = parse_fail_on(clause)
    assert judgement_row(Judgement(parsed, UNJUDGED, reason="r"))[5] == threshold


@pytest.mark.parametrize(("clause", "low", "high", "verdict"), [
    ("p99>+10%", 0.11, 0.30, "REGRESSION"), ("p99>+10%", 0.05, 0.12, "WITHIN-NOISE"),
    ("p99>+10%", -0.05, 0.10, "PASS"), ("p99>+10%", -0.30, -0.11, "IMPROVEMENT"),
    ("p99>+10%", -0.30, -0.05, "PASS"), ("images_per_s<-5%", -0.30, -0.06, "REGRESSION"),
    ("images_per_s<-5%", -0.07, 0.01, "WITHIN-NOISE"), ("images_per_s<-5%", -0.05, 0.04, "PASS"),
    ("images_per_s<-5%", 0.06, 0.20, "IMPROVEMENT"), ("p50>+0%", -0.02, 0.01, "WITHIN-NOISE"),
])
def test_verdicts_place_the_interval_against_the_threshold(clause, low, high, verdict):
    from ipsbench.loadgen.report.bootstrap import Interval
    from ipsbench.loadgen.report.regression import clause_verdict, parse_clause

    assert clause_verdict(parse_clause(clause), Interval(1.0, 1.0, (low + high) / 2, low, high)) == verdict


def test_no_matched_step_and_bad_output_paths_exit_2_before_any_work(gate_runs, two_runs, tmp_path, capsys):
    fast, _ = gate_runs
    _, b = two_runs  # concurrency 2 and 4; fast ran concurrency 1
    assert main([str(fast), str(b), "--fail-on", "p50>+10%"]) == 2
    assert "no step of" in capsys.readouterr().err
    absent = str(tmp_path / "absent.json")  # never read: the output paths are checked first
    for option, path, message in [("--summary", tmp_path / "nowhere" / "s.md", "does not exist"),
                                  ("--summary", tmp_path, "is a folder"), ("--out", tmp_path, "is a folder")]:
        assert main([absent, absent, "--fail-on", "p50>+10%", option, str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{option} {path}: " in err and message in err
    assert main([str(fast), str(fast), "--summary", str(tmp_path / "s.md")]) == 2
    assert "--summary needs --fail-on" in capsys.readouterr().err


# -- the gate on two real runs -------------------------------------------------------------------------------------

H100_PROFILE = REPO_ROOT / "results" / "profiles" / "h100-resnet50-fp16.json"
BATCH_MS = {"fast": 2.0, "slow": 8.0}
"""One request (a batch of 1) takes this long on each simulated device: the slow model is 4x slower."""
GATE_RUN = ("--concurrency", "1", "--warmup", "500ms", "--duration", "1500ms", "--max-trials", "3",
            "--stability", "1", "--drain", "5s")
"""3 windows of 1.5 s (--stability 1: nearly always judged stable): windows for images/sec, and the 200 samples p50
needs even at the slow model's pace on a busy machine."""


@pytest.fixture(scope="module")
def fast_and_slow_server(tmp_path_factory, start_module_server):
    """ipsbench-serve with two ``ipsbench-export --simulate`` entries of resnet18's signature, ``fast`` and
    ``slow``, whose profiles take 2 ms and 8 ms per request."""
    folder = tmp_path_factory.mktemp("gate-models")
    repository = folder / "models"
    h100 = json.loads(H100_PROFILE.read_text())
    exports = []
    for name, batch_ms in BATCH_MS.items():
        profile = folder / f"{name}.json"
        profile.write_text(json.dumps({**h100, "results": [{"batch_size": 1, "images_per_s": 1000 / batch_ms}]}))
        command = [sys.executable, "-m", "ipsbench.export", "resnet18", "--image-size", "64", "--simulate",
                   str(profile), "--name", name, "--out", str(repository)]
        exports.append(subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    for export in exports:
        _, stderr = export.communicate(timeout=300)
        assert export.returncode == 0, stderr
    return start_module_server(repository)


def compare_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipsbench.loadgen", "compare", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_gate_catches_a_4x_slower_model_in_two_real_runs(fast_and_slow_server, start_load, tmp_path, capsys):
    reports = {}
    for name in BATCH_MS:  # one after the other: both models share the one simulated device
        run = start_load(fast_and_slow_server.grpc_url, *GATE_RUN, model=name)
        code = run.finish(timeout=180)
        report = run.report()
        # a stall on a busy machine can still make one window's p99 twice the others' (UNSTABLE, exit 1): the
        # windows are measured all the same, and the gate reads them
        assert report["valid"] and code == (1 if report["verdict"] == "UNSTABLE" else 0), run.stdout + run.stderr()
        assert_accounted(report)
        assert report["steps"][0]["latency_histogram"] and len(report["steps"][0]["stability"]["windows"]) == 3
        reports[name] = run.out / "report.json"
    fast, slow = reports["fast"], reports["slow"]

    summary = tmp_path / "summary.md"
    regressed = compare_cli(fast, slow, "--fail-on", "p50>+10%,images_per_s<-5%", "--summary", summary)
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    assert "## Regression gate: **REGRESSION**" in regressed.stdout
    assert [row[6] for metric in ("p50", "images_per_s") for row in gate_rows(regressed.stdout, metric)] == \
        ["REGRESSION"] * 2
    assert summary.read_text().startswith("# Regression gate: **REGRESSION**")

    assert main([str(slow), str(fast), "--fail-on", "p50>+10%"]) == 0
    assert gate_rows(capsys.readouterr().out, "p50")[0][6] == "IMPROVEMENT"
    assert main([str(fast), str(fast), "--fail-on", "p50>+10%"]) == 0
    same = capsys.readouterr().out
    assert gate_rows(same, "p50")[0][6] == "PASS" and "Regression gate: **PASS**" in same


def test_hostile_counts_are_unjudged_not_a_crash(gate_runs, tmp_path, capsys):
    from ipsbench.loadgen.histograms import encode_histogram, new_histogram

    fast, _ = gate_runs
    report = json.loads(fast.read_text())
    huge = new_histogram()
    for value in (1_000, 2_000, 3_000):
        huge.record_value(value, 1 << 61)  # together more than the 2**62 a step may hold
    report["steps"][0].update(latency_histogram=encode_histogram(huge), issued=1 << 70, errors_total=1)
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(report))
    assert main([str(hostile), str(fast), "--fail-on", "p50>+10%,error_rate>+1pp"]) == 2
    printed = capsys.readouterr().out
    assert "holds more than 4611686018427387904 requests" in printed
    assert "issued more than 4611686018427387904 requests" in printed
