"""``ipsbench matrix`` for real on the CPU: two small networks at 64×64 × FP32/FP16/INT8 × batch 1 and 4, each cell
exported, benched (inference and training), served by a real ipsbench-serve and loaded by ipsbench-load; a cell
that fails is reported while the others run; Ctrl-C writes what was done and leaves nothing running."""

from __future__ import annotations

import csv
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
NETWORKS = ("resnet18", "squeezenet1_1")
QUICK = ("--batch-sizes", "1,4", "--image-size", "64", "--bench-duration", "0.3s", "--bench-warmup", "0.1s",
         "--concurrency", "1", "--duration", "0.5s", "--warmup", "0.3s", "--max-trials", "1")
MATRIX_TIMEOUT_S = 900


def matrix(*args: str, timeout_s: float = MATRIX_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipsbench.matrix", "matrix", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def full_matrix(tmp_path_factory):
    """One real matrix run of 6 cells, shared by the tests that read its report."""
    work = tmp_path_factory.mktemp("matrix")
    result = matrix("--networks", ",".join(NETWORKS), "--precisions", "fp32,fp16,int8", *QUICK,
                    "--repository", str(work / "models"), "--out", str(work / "report"),
                    "--gpu-cost-per-hour", "3.6", "--gpu-watts-idle", "70")
    document = json.loads((work / "report" / "matrix.json").read_text()) if (
        work / "report" / "matrix.json").is_file() else None
    return work, result, document


@pytest.mark.timeout(MATRIX_TIMEOUT_S + 60)
def test_every_cell_is_measured_engine_training_and_end_to_end(full_matrix):
    work, result, document = full_matrix
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert document["status"] == "complete"
    cells = {(cell["network"], cell["precision"]): cell for cell in document["cells"]}
    assert set(cells) == {(n, p) for n in NETWORKS for p in ("fp32", "fp16", "int8")}
    for (network, precision), cell in cells.items():
        assert cell["status"] == "ok", cell["failures"]
        assert (cell["format"], cell["device"]) == ("onnx", "cpu")
        assert [row["batch_size"] for row in cell["engine"]["rows"]] == [1, 4]
        assert all(row["images_per_s"] > 0 for row in cell["engine"]["rows"])
        assert cell["engine"]["precision"] == precision
        e2e = cell["end_to_end"]
        assert e2e["images_per_s"] > 0 and e2e["p99_ms"] > 0 and e2e["load"] == "concurrency 1"
        assert 0 < cell["ratio"]["value"]
        # The cell's own load report is where the figure came from, the server's side scraped into it.
        report = json.loads((work / "report" / "cells" / cell["entry"] / "load" / "report.json").read_text())
        assert report["model"]["name"] == f"{network}_{precision}" and report["steps"][0]["server"]
        # No NVML here: the cost's energy comes from --gpu-watts-idle, and says so.
        assert cell["cost"]["dollars_per_million_images"] == pytest.approx(1e6 / e2e["images_per_s"] / 1000,
                                                                         rel=1e-4)
        assert "--gpu-watts-idle" in cell["cost"]["power_source"]
        if precision == "fp32":
            assert [row["batch_size"] for row in cell["train"]["rows"]] == [1, 4]
            assert all(row["images_per_s"] > 0 for row in cell["train"]["rows"])
        else:
            assert cell["train"] is None  # on a CPU every training step is FP32: its row is the FP32 cell's
            agreement = cell["export"]["agreement"]
            assert 0 <= agreement["top1"] <= 1 and 0 <= agreement["top5"] <= 1
            assert agreement["max_abs_logit_diff"] >= 0 and agreement["images"] > 0


def test_the_report_leads_with_the_p40_table(full_matrix):
    work, result, document = full_matrix
    assert document is not None, result.stdout[-3000:] + result.stderr[-3000:]
    markdown = (work / "report" / "matrix.md").read_text()
    first_table = markdown.split("## ", 2)[1]
    assert first_table.startswith("Images per second: engine and end to end")
    assert "| network | precision | engine | batch 1 | batch 4 | end to end (best step) | end to end ÷ engine |" in (
        first_table)
    for network in NETWORKS:
        for precision in ("fp32", "fp16", "int8"):
            assert f"| {network} | {precision} | onnx on cpu" in first_table
    assert "does not mean" in markdown and "images/s of training" in markdown
    assert "What the lower precisions cost in agreement" in markdown and "What it costs" in markdown
    rows = list(csv.DictReader((work / "report" / "matrix.csv").open()))
    assert len(rows) == 12 and {row["batch_size"] for row in rows} == {"1", "4"}
    assert all(float(row["end_to_end_images_per_s"]) > 0 for row in rows)
    page = (work / "report" / "matrix.html").read_text()
    assert '<table id="p40-table">' in page and "<script" not in page
    # The console shows the table too, and where the report is.
    assert "report: " in result.stdout and "matrix.md" in result.stdout


def test_a_second_run_reuses_the_entries_and_a_failed_cell_does_not_stop_the_rest(full_matrix, tmp_path):
    work, _, document = full_matrix
    repository = tmp_path / "models"
    shutil.copytree(work / "models" / "resnet18_fp32", repository / "resnet18_fp32")
    (repository / "resnet18_fp16" / "1").mkdir(parents=True)  # someone else's entry of that name: never overwritten
    result = matrix("--networks", "resnet18", "--precisions", "fp16,fp32", *QUICK, "--no-train",
                    "--repository", str(repository), "--out", str(tmp_path / "report"))
    assert result.returncode == 1, result.stdout + result.stderr
    second = json.loads((tmp_path / "report" / "matrix.json").read_text())
    fp16, fp32 = second["cells"]
    assert fp16["status"] == "failed" and fp16["failures"][0]["stage"] == "export"
    assert "exists but has no export.json" in fp16["failures"][0]["reason"]
    assert not any((repository / "resnet18_fp16").rglob("*.onnx"))
    assert fp32["status"] == "ok" and fp32["export"]["reused"] is True
    assert fp32["end_to_end"]["images_per_s"] > 0
    assert "FAILED" in (tmp_path / "report" / "matrix.md").read_text()


def test_options_and_paths_are_refused_before_any_work(tmp_path):
    (tmp_path / "taken").write_text("a file where the report folder should go")
    for args, message in (
        (("--networks", "no_such_net"), "unknown network"),
        (("--networks", "resnet18", "--out", str(tmp_path / "taken" / "x")), "not a folder"),
        (("--networks", "resnet18", "--load", "slo"), "--latency-slo"),
        (("--networks", "resnet18", "--calibration-images", str(tmp_path / "absent")), "does not exist"),
        (("--networks", "resnet18", "--latency-slo", "p99=fast"), "latency-slo"),
    ):
        result = matrix(*args, "--repository", str(tmp_path / "models"), timeout_s=120)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "models").exists()


@pytest.mark.timeout(600)
def test_ctrl_c_writes_what_was_done_and_stops_every_process(full_matrix, tmp_path):
    work, _, _ = full_matrix
    repository = tmp_path / "models"
    shutil.copytree(work / "models" / "resnet18_fp32", repository / "resnet18_fp32")
    out = tmp_path / "report"
    process = subprocess.Popen(
        [sys.executable, "-m", "ipsbench.matrix", "matrix", "--networks", "resnet18,squeezenet1_1",
         "--precisions", "fp32", "--batch-sizes", "1", "--image-size", "64", "--bench-duration", "0.2s",
         "--bench-warmup", "0s", "--no-train", "--concurrency", "1", "--duration", "5m", "--warmup", "0s",
         "--max-trials", "1", "--repository", str(repository), "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        partial = out / "cells" / "resnet18_fp32" / "load" / "report.json"
        # The load generator is measuring: its partial report is there.
        wait_until(partial.is_file, timeout_s=240, what="the first cell's load run to write its partial report",
                   give_up=lambda: process.poll() is not None and f"the matrix exited ({process.returncode})")
        children = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    document = json.loads((out / "matrix.json").read_text())
    assert document["status"] == "interrupted" and document["interrupted_by"] == "SIGINT"
    first, second = document["cells"]
    assert first["status"] == "interrupted" and first["end_to_end"] is not None
    assert first["end_to_end"]["status"] == "interrupted"
    assert second["status"] == "not_run"
    assert (out / "matrix.md").is_file() and (out / "matrix.csv").is_file()
    gone = [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    assert not gone, f"still running after the matrix stopped: {[c.cmdline() for c in gone]}"
