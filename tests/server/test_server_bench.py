"""``ipsbench-serve bench``: engine images/sec per batch size as a table and JSON, through the server's own loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ipsbench.server", "bench", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def check_report(report: dict, batch_sizes: list[int]) -> None:
    assert report["schema_version"] == 2 and report["mode"] == "infer"
    assert report["measures"].startswith("forward pass of the served engine, per batch")
    assert [r["batch_size"] for r in report["results"]] == batch_sizes
    for row in report["results"]:
        assert row["batches"] >= 1 and row["images"] == row["batches"] * row["batch_size"]
        assert row["images_per_s"] > 0
        latency = row["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_bench_on_an_onnx_model_prints_a_table_and_writes_json(tmp_path, write_test_model):
    write_test_model(tmp_path / "models", "affine", max_batch_size=8)
    out = tmp_path / "reports" / "bench.json"
    result = run_bench(
        "affine", "--model-repository", str(tmp_path / "models"), "--batch-sizes", "8,1,4,16",
        "--duration", "200ms", "--warmup", "0.05s", "--json", str(out),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("infer: forward pass of the served engine, per batch")
    # On the CPU there is no power to sample: no power columns.
    assert lines[2].split() == ["batch", "images/s", "p50", "ms", "p99", "ms", "precision", "device", "backend"]
    assert [line.split()[0] for line in lines[3:6]] == ["1", "4", "8"]
    assert all(line.split()[-3:] == ["fp32", "cpu", "onnxruntime"] for line in lines[3:6])
    assert "capped at max_batch_size 8" in result.stderr
    report = json.loads(out.read_text())
    check_report(report, [1, 4, 8])
    assert (report["model"], report["platform"], report["device"]) == ("affine", "onnxruntime_onnx", "cpu")
    assert report["precision"] == "fp32" and report["device_name"]
    assert report["input_shapes"] == {"input": [-1, 4]}


def test_bench_on_a_torchscript_model_reports_the_pytorch_engine(torchscript_repository, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(
        "resnet18_pt", "--model-repository", str(torchscript_repository), "--batch-sizes", "1,2",
        "--duration", "0.2", "--warmup", "0", "--json", str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    check_report(report, [1, 2])
    assert (report["backend"], report["platform"], report["device"]) == ("pytorch", "pytorch_libtorch", "cpu")
    assert report["parameters"] == {"precision": "fp32", "channels_last": "false", "ipsbench.network": "resnet18"}
    assert "torch" in report["software"]


def test_bench_failures_name_the_problem(tmp_path, write_test_model):
    write_test_model(tmp_path, "affine")
    missing = run_bench("nope", "--model-repository", str(tmp_path))
    assert missing.returncode == 1
    assert "bench failed for model 'nope': config.pbtxt not found" in missing.stderr
    bad_duration = run_bench("affine", "--model-repository", str(tmp_path), "--duration", "soon")
    assert bad_duration.returncode == 2 and "invalid duration 'soon'" in bad_duration.stderr
    bad_version = run_bench("affine", "--model-repository", str(tmp_path), "--version", "3")
    assert bad_version.returncode == 1 and "model 'affine' has no version 3; it serves [1]" in bad_version.stderr


def test_serving_options_are_unchanged_and_point_to_bench():
    result = subprocess.run([sys.executable, "-m", "ipsbench.server", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    assert "--model-repository" in result.stdout and "ipsbench-serve bench" in result.stdout
