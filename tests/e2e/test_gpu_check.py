"""The GPU check refuses cleanly where there is no GPU: a clear message, and nothing started or written."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(has_gpu(), reason="a GPU is present: the check would run for real (deploy/gpu-check.sh)")
def test_gpu_check_fails_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu-check"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "gpu-check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.startswith("gpu-check: ")
    assert "GPU" in result.stderr
    assert not out.exists(), "the check wrote output before finding out there is no GPU"


@pytest.mark.skipif(has_gpu(), reason="a GPU is present: the check would run for real (deploy/gpu-check.sh)")
def test_gpu_check_stops_before_any_work_when_pytorch_has_no_cuda(tmp_path):
    """Past the driver check (a stand-in nvidia-smi that lists a GPU), the check still refuses, because no backend it
    could pick (TensorRT, ONNX Runtime CUDA, PyTorch CUDA) can reach a GPU from this Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    out = tmp_path / "gpu-check"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "gpu-check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "gpu-check: PyTorch cannot use the GPU" in result.stderr
    assert not out.exists(), "the check wrote output before finding out the GPU is unusable"


def test_gpu_summary_renders_engine_and_end_to_end_rows(tmp_path):
    """The summary table from files shaped as the bench, the load report and nvidia-smi write them."""
    bench = tmp_path / "bench.json"
    bench.write_text(
        '{"model": "resnet50_fp16", "results": ['
        '{"batch_size": 1, "images_per_s": 1000.0, "latency_ms": {"p50": 1.0, "p99": 1.2}},'
        '{"batch_size": 64, "images_per_s": 8000.0, "latency_ms": {"p50": 8.0, "p99": 8.5}}]}'
    )
    load = tmp_path / "report.json"
    load.write_text(
        '{"valid": true, "started_at": "2026-01-01T00:00:00+00:00", "duration_s": 100, '
        '"payload": {"images_per_request": 1}, "steps": [{"concurrency": 16, "images_per_s": 4000.0, '
        '"latency_us": {"p50": 4000, "p99": 9000}, "errors_total": 0, '
        '"server": {"avg_batch_size": 12.5, "queue_ms": 1.25, "compute_ms": 2.5}, '
        '"window_start_unix": 1767225610.0, "window_end_unix": 1767225620.0}]}'
    )
    samples = tmp_path / "gpu.csv"
    samples.write_text(
        "2026/01/01 00:00:05.000, 0, 60, 1000\n"  # before the window: excluded
        "2026/01/01 00:00:12.000, 80, 200, 9000\n"
        "2026/01/01 00:00:14.000, 90, 300, 9000\n"
    )
    env = dict(os.environ, TZ="UTC")
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "gpu_summary.py"), "--gpu", "Test GPU", "--backend", "pytorch-cuda",
         "--precision", "fp16", "--bench", str(bench), "--load", str(load), "--gpu-samples", str(samples)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "| 64 | 8,000.0 | 8.00 | 8.50 |" in result.stdout
    # 4000 images/s at a mean of 250 W in the window: 16 images/s/W; 0.50 of the best engine figure.
    assert "| 16 | 1 | 4,000.0 | 4.00 | 9.00 | 0.50 | 12.50 | 1.25 | 2.50 | 85 | 250 | 16.00 | 0 |" in result.stdout
