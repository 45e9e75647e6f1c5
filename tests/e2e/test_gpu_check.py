"""The GPU check: it refuses cleanly where there is no GPU; its summary page and verdict from a run folder shaped as
deploy/gpu-check.sh writes it; a Ctrl-C/SIGTERM mid-run stops every process it started and still writes the summary.

The whole CPU rehearsal (GPU_CHECK_REHEARSAL=1: every phase, frontends 2 and 1, three payloads) takes about four
minutes on a busy 2-core machine, too long for this suite: it is run by hand (README, "The GPU check"). Here the
interrupt test runs its first phases for real (export, bench, a server with two front ends) and the summary tests
use files with the fields and shapes the real bench, load reports, probe and nvidia-smi write.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "gpu-check.sh"


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(has_gpu(), reason="a GPU is present: the check would run for real (deploy/gpu-check.sh)")
def test_gpu_check_fails_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu-check"
    env = dict(os.environ, GPU_CHECK_DIR=str(out), PYTHON=sys.executable)
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("gpu-check: ")
    assert "GPU" in result.stderr
    assert not out.exists(), "the check wrote output before finding out there is no GPU"


@pytest.mark.skipif(has_gpu(), reason="a GPU is present: the check would run for real (deploy/gpu-check.sh)")
def test_gpu_check_stops_before_any_work_when_pytorch_has_no_cuda(tmp_path):
    """Past the driver check (a stand-in nvidia-smi that lists a GPU), the check still refuses: PyTorch cannot reach
    a GPU from this Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    out = tmp_path / "gpu-check"
    env = dict(os.environ, GPU_CHECK_DIR=str(out), PYTHON=sys.executable, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "gpu-check: PyTorch cannot use the GPU" in result.stderr
    assert not out.exists(), "the check wrote output before finding out the GPU is unusable"


# --- the summary, from a run folder ---------------------------------------------------------------------------------

WINDOW = (1767225610.0, 1767225620.0)  # 2026-01-01 00:00:10 to 00:00:20 UTC


def step(concurrency, images_per_s, p50_us, p99_us, errors=0, avg_batch=None, window=WINDOW, stable=True):
    return {
        "index": concurrency, "concurrency": concurrency, "window_start_unix": window[0], "window_end_unix": window[1],
        "images_per_s": images_per_s, "errors_total": errors, "ok": 100,
        "latency_us": {"count": 100, "p50": p50_us, "p99": p99_us},
        "stability": {"stable": stable, "trials": 3, "windows": [], "tolerance": 0.1},
        "server": None if avg_batch is None else {"avg_batch_size": avg_batch, "queue_ms": 1.0, "gpu": None},
    }


def write_run(run: Path, reports: dict, models: dict | None = None, phases=(), samples="", bench=True,
              frontends="8,1") -> None:
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "gpu": "NVIDIA H200", "backend": "pytorch-cuda", "precision": "fp16", "model": "resnet50_fp16",
        "rehearsal": "0", "payloads": "fp32,uint8,jpeg", "frontends": frontends, "concurrency": "16,64",
        "images_per_request": "8", "duration": "3s", "warmup": "2s", "max_trials": "3", "load_processes": "4",
        "budget_s": "450", "started": "2026-01-01T00:00:00Z"}))
    if bench:
        (run / "bench.json").write_text(json.dumps({"kind": "engine_bench", "model": "resnet50_fp16", "results": [
            {"batch_size": 1, "images_per_s": 1200.0, "latency_ms": {"p50": 0.8, "p99": 1.5}},
            {"batch_size": 64, "images_per_s": 9000.0, "latency_ms": {"p50": 7.0, "p99": 9.0}}]}))
    (run / "phases.tsv").write_text("phase\tstatus\tseconds\tlimit_s\n" + "".join(f"{p}\n" for p in phases))
    (run / "gpu-samples.csv").write_text(samples)
    for (frontends_count, payload), steps in reports.items():
        folder = run / f"fe{frontends_count}" / payload
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({
            "valid": True, "payload": {"kind": payload, "images_per_request": 8}, "steps": steps}))
    for frontends_count, entry in (models or {}).items():
        (run / f"fe{frontends_count}" / "models.json").write_text(json.dumps(entry))


def render(run: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "gpu_summary.py"), "--run-dir", str(run)],
                            capture_output=True, text=True, env=dict(os.environ, TZ="UTC"), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_summary_rows_and_verdict_from_a_run(tmp_path):
    samples = ("2026/01/01 00:00:05.000, 0, 60, 1000\n"  # before the window: not counted
               "2026/01/01 00:00:12.000, 80, 500, 9000\n"
               "2026/01/01 00:00:14.000, 90, 600, 9000\n")
    gpu = {"device": "auto", "device_effective": "gpu"}
    write_run(tmp_path / "run", {
        (8, "fp32"): [step(64, 4000.0, 40000, 90000, avg_batch=30.0)],
        (8, "jpeg"): [step(16, 6000.0, 20000, 30000, avg_batch=40.0), step(64, 7650.0, 60000, 80000, avg_batch=60.0)],
        (8, "uint8"): [step(64, 8000.0, 50000, 70000, errors=3)],  # errors: not a point the aims count
    }, models={8: {"resnet50_fp16": {"kind": None}, "resnet50_fp16_jpeg": gpu, "resnet50_fp16_uint8": gpu}},
        phases=["export\tok\t50\t240", "load-fe8-jpeg\tok\t30\t102"], samples=samples, frontends="8")
    page = render(tmp_path / "run")
    assert "| 64 | 9,000.0 | 7.00 | 9.00 |" in page
    # 7650 images/s at a mean of 85 % and 550 W in the window: 0.85 of the engine, 13.91 images/s/W
    assert "| jpeg | 8 | 64 | 8 | 7,650.0 | 60.00 | 80.00 | 0.85 | 85 | 550 | 13.91 | 60.00 | 0 | gpu | yes |" in page
    assert "| fp32 | 8 | 64 | 8 | 4,000.0 | 40.00 | 90.00 | 0.44 | 85 | 550 | 7.27 | 30.00 | 0 | none (tensors) | yes |" in page
    assert "| uint8 | 8 | 64 | 8 | 8,000.0 |" in page
    verdict = page.split("### Verdict against the aims")[1].split("###")[0]
    assert ("| end to end ≥ 0.8 of the engine with uint8 or jpeg requests | 0.85 (jpeg, 8 front ends, concurrency 64: "
            "7,650.0 images/s of 9,000.0) | **met** |") in verdict
    assert "| end to end ≥ 0.5 of the engine with fp32 requests | 0.44 (fp32, 8 front ends" in verdict
    assert "| **not met** |" in verdict
    assert "| GPU ≥ 80 % busy at the best point | 85 % (jpeg, 8 front ends, concurrency 64" in verdict
    assert page.count("**met**") == 2
    assert "Every phase ok." in page


def test_summary_names_what_was_not_measured(tmp_path):
    """A failed or skipped phase leaves its rows out, says so, and turns the aims it would have judged into 'not
    measured' rather than a verdict; a server that does not report the effective device shows n/a."""
    write_run(tmp_path / "run", {(1, "fp32"): [step(16, 1000.0, 15000, 24000, avg_batch=8.0)]},
              models={1: {"resnet50_fp16_uint8": {"kind": "uint8"}}},
              phases=["export\tok\t50\t240", "load-fe8-uint8\ttimed out after 102s\t102\t102",
                      "load-fe1-jpeg\tskipped: the 450s budget was spent\t0\t102"])
    page = render(tmp_path / "run")
    assert ("Not measured (no load report): fp32 with 8 front ends; uint8 with 1 front end; uint8 with 8 front ends; "
            "jpeg with 1 front end; jpeg with 8 front ends.") in page
    assert ("| end to end ≥ 0.8 of the engine with uint8 or jpeg requests | no error-free step measured "
            "| **not measured** |") in page
    assert "| end to end ≥ 0.5 of the engine with fp32 requests | 0.11 (fp32, 1 front end, concurrency 16" in page
    assert "no GPU samples (fp32, 1 front end" in page
    assert "| load-fe8-uint8 | timed out after 102s | 102 | 102 |" in page
    assert "Phases not ok: load-fe8-uint8, load-fe1-jpeg" in page


def test_summary_without_engine_figures_judges_no_ratio(tmp_path):
    write_run(tmp_path / "run", {(8, "jpeg"): [step(64, 5000.0, 50000, 70000)]}, bench=False,
              phases=["bench\tfailed (exit 1)\t20\t150"])
    page = render(tmp_path / "run")
    assert "no engine figures (the bench phase did not write them)" in page
    assert "| jpeg | 8 | 64 | 8 | 5,000.0 | 50.00 | 70.00 | n/a |" in page
    assert page.count("| no engine figure | **not measured** |") == 2
    assert "preprocessing on" in page and "| n/a | yes |" in page


def test_summary_carries_the_matrix_p40_table(tmp_path):
    """The matrix phase's report is part of the one summary page, its headings under the check's own."""
    write_run(tmp_path / "run", {(8, "jpeg"): [step(64, 5000.0, 50000, 70000)]},
              phases=["matrix\tok\t200\t260"])
    (tmp_path / "run" / "matrix").mkdir()
    (tmp_path / "run" / "matrix" / "matrix.md").write_text(
        "# ipsbench matrix: 3 networks × 2 precisions on NVIDIA H200\n\n## Images per second: engine and end to end\n"
        "\n| network | precision |\n|---|---|\n| resnet50 | fp16 |\n")
    page = render(tmp_path / "run")
    assert "### ipsbench matrix: 3 networks × 2 precisions on NVIDIA H200" in page
    assert page.index("#### Images per second: engine and end to end") < page.index("### Phases")
    assert "| resnet50 | fp16 |" in page


# --- a run interrupted mid-way --------------------------------------------------------------------------------------

def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_rehearsal_interrupted_stops_every_process_and_still_summarizes(tmp_path):
    """The rehearsal's first phases run for real on the CPU; SIGTERM once its two-front-end server is serving stops
    the server, its front ends and the engine, records the interruption and writes the summary (exit 143)."""
    run = tmp_path / "run"
    env = dict(os.environ, GPU_CHECK_REHEARSAL="1", GPU_CHECK_DIR=str(run), PYTHON=sys.executable,
               BATCH_SIZES="1", FRONTENDS="2", PAYLOADS="jpeg", CONCURRENCY="2", LOAD_PROCESSES="1",
               DURATION="30s", MAX_TRIALS="1")
    check = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        def loading() -> list[psutil.Process] | None:
            phases = run / "phases.tsv"
            if not phases.exists() or "serve-fe2\tok" not in phases.read_text():
                return None
            started = psutil.Process(check.pid).children(recursive=True)
            names = " ".join(" ".join(p.cmdline()) for p in started if alive(p))
            return started if "ipsbench.server" in names and "ipsbench.loadgen" in names else None

        started = wait_until(loading, timeout_s=240, what="the rehearsal's server serving and its load running",
                             give_up=lambda: None if check.poll() is None else f"the check exited {check.returncode}")
        check.send_signal(signal.SIGTERM)
        output, _ = check.communicate(timeout=120)
    finally:
        if check.poll() is None:  # the test failed: the check's own trap stops what it started
            check.terminate()
            check.communicate(timeout=120)
    assert check.returncode == 143, output
    assert "interrupted by SIGTERM" in (run / "phases.tsv").read_text()
    wait_until(lambda: not any(alive(p) for p in started), timeout_s=30, what="every process the check started gone")
    summary = (run / "summary.md").read_text()
    assert "**Rehearsal on the CPU**" in summary
    assert "| export | ok |" in summary and "| serve-fe2 | ok |" in summary
    assert "Phases not ok:" in summary and "interrupted" in summary
