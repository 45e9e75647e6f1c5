"""The matrix's rules over the documents its stages write: which step is a cell's end-to-end figure, its ratio to
the engine, what a million images cost, and how the P40 table lays them out."""

import pytest

from ipsbench.matrix import figures
from ipsbench.matrix.plan import Capabilities, Cell, Estimate, engine_for, plan_cells, trains
from ipsbench.matrix.report import csv_rows, render_html, render_markdown
from ipsbench.matrix.settings import MatrixSettings
from ipsbench.matrix.tables import p40_table, training_sentence

CPU = Capabilities(cuda=False, ort_cuda=False, tensorrt=False)
CUDA = Capabilities(cuda=True, ort_cuda=False, tensorrt=False)
TRT = Capabilities(cuda=True, ort_cuda=False, tensorrt=True)


def step(index, images_per_s, p99_us, met, concurrency=1, valid=True, power=None):
    return {"index": index, "concurrency": concurrency, "images_per_s": images_per_s, "valid": valid,
            "latency_us": {"p50": p99_us / 2, "p99": p99_us}, "slo": {"met": met},
            "server": {"avg_batch_size": 4.0, "gpu": {"power_w_from_energy": power} if power else None}}


def load_report(*steps):
    return {"scenario": "sweep", "verdict": "PASS", "status": "complete", "steps": list(steps)}


def bench(*rows, mode="infer"):
    return {"mode": mode, "device": "cpu", "device_name": "a CPU", "precision": "fp32", "backend": "onnxruntime",
            "results": [{"batch_size": b, "images_per_s": ips, "latency_ms": {"p50": 1.0, "p99": 2.0},
                         "power_w": power, "images_per_joule": None if power is None else ips / power}
                        for b, ips, power in rows]}


def test_end_to_end_figure_is_the_fastest_step_meeting_the_objective():
    report = load_report(step(0, 100.0, 5_000, True, 1), step(1, 300.0, 40_000, True, 4),
                         step(2, 500.0, 200_000, False, 8))
    figure = figures.end_to_end(report, "p99=50ms")
    assert figure["images_per_s"] == 300.0 and figure["load"] == "concurrency 4"
    assert figure["p99_ms"] == pytest.approx(40.0)


def test_without_an_objective_the_fastest_valid_step_counts():
    report = load_report(step(0, 100.0, 5_000, False), step(1, 900.0, 1_000, False, valid=False),
                         step(2, 500.0, 200_000, False, 8))
    assert figures.end_to_end(report, "")["images_per_s"] == 500.0


def test_no_step_meeting_the_objective_gives_no_figure_and_says_why():
    figure = figures.end_to_end(load_report(step(0, 100.0, 500_000, False)), "p99=10ms")
    assert figure["images_per_s"] is None and "no step met p99=10ms" in figure["why_none"]


def test_ratio_is_against_the_engines_best_batch():
    rows = figures.bench_rows(bench((1, 100.0, None), (8, 400.0, None), (32, 380.0, None)))
    ratio = figures.ratio({"images_per_s": 200.0}, rows)
    assert ratio == {"value": 0.5, "engine_batch_size": 8, "engine_images_per_s": 400.0}


def test_cost_per_million_images_from_the_price_and_the_measured_power():
    rows = figures.bench_rows(bench((1, 100.0, 150.0), (8, 400.0, 250.0)))
    e2e = {"images_per_s": 1000.0, "power_w": None, "server_avg_batch": 6.0}
    cost = figures.cost(e2e, rows, dollars_per_hour=3.6, watts_idle=None)
    # A million images at 1,000/s take 1,000 s: $3.6/h × 1,000 s = $1; 250 W (batch 8, nearest 6) × 1,000 s.
    assert cost["dollars_per_million_images"] == pytest.approx(1.0)
    assert cost["kwh_per_million_images"] == pytest.approx(250 * 1000 / 3.6e6, rel=1e-5)
    assert "batch 8" in cost["power_source"]


def test_cost_prefers_the_servers_power_and_falls_back_to_idle_watts():
    assert figures.cost({"images_per_s": 500.0, "power_w": 300.0}, [], None, 50.0)["power_w"] == 300.0
    idle = figures.cost({"images_per_s": 500.0, "power_w": None}, [], None, 50.0)
    assert idle["power_w"] == 50.0 and idle["dollars_per_million_images"] is None
    assert "--gpu-watts-idle" in idle["power_source"]
    assert figures.cost({"images_per_s": 500.0, "power_w": None}, [], None, None) is None


def test_engine_choice_per_machine():
    assert engine_for("int8", CPU) == ("onnx", "cpu") and engine_for("fp16", CPU) == ("onnx", "cpu")
    assert engine_for("fp16", CUDA) == ("torchscript", "gpu") and engine_for("int8", CUDA) == ("onnx", "cpu")
    assert engine_for("int8", TRT) == ("tensorrt", "gpu")
    assert trains(Cell("resnet50", "fp16", "torchscript", "gpu"), CUDA)
    assert not trains(Cell("resnet50", "fp16", "onnx", "cpu"), CPU)
    assert not trains(Cell("resnet50", "int8", "tensorrt", "gpu"), TRT)


def test_preset_plans_every_network_at_every_precision(tmp_path):
    settings = MatrixSettings(preset="p40", out=tmp_path)
    cells = plan_cells(settings, CPU)
    assert [cell.entry for cell in cells][:3] == ["alexnet_fp32", "alexnet_fp16", "alexnet_int8"]
    assert len(cells) == 9


@pytest.mark.parametrize("options, message", [
    ({}, "--networks or --preset"),
    ({"networks": ("resnet18",), "preset": "p40"}, "--networks or --preset"),
    ({"networks": ("resnet18",), "batch_sizes": (0,)}, "--batch-sizes"),
    ({"networks": ("resnet18",), "load": "slo"}, "--latency-slo"),
    ({"networks": ("resnet18",), "metrics_url": "http://x/metrics"}, "--target"),
    ({"networks": tuple(f"n{i}" for i in range(30))}, "cells"),
])
def test_settings_refuse_what_cannot_run(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        MatrixSettings(out=tmp_path, **options)


def test_estimate_scales_what_is_left_by_how_the_finished_cells_went():
    estimate = Estimate([10.0, 10.0, 10.0])
    assert estimate.left_s(0) == 30.0
    estimate.finished(0, 20.0)  # took twice its plan
    assert estimate.left_s(1) == 40.0
    assert estimate.left_s(1, running_for_s=5.0) == 35.0


def document(cells):
    return {"kind": "ipsbench_matrix", "status": "complete", "interrupted_by": None, "started_at": "now",
            "duration_s": 12.0, "capabilities": {"cuda": False, "ort_cuda": False, "tensorrt": False},
            "networks": ["resnet18"], "precisions": ["fp32", "int8"], "batch_sizes": [1, 8],
            "end_to_end_method": {"scenario": "sweep", "objective": "p99=50ms", "target": "here"}, "cells": cells}


def cell(precision, status="ok", **parts):
    base = {"network": "resnet18", "precision": precision, "entry": f"resnet18_{precision}", "format": "onnx",
            "device": "cpu", "status": status, "failures": [], "export": None, "engine": None, "train": None,
            "end_to_end": None, "ratio": None, "cost": None}
    return {**base, **parts}


def test_p40_table_rows_are_network_by_precision_with_a_column_per_batch_size():
    engine = figures.bench_summary(bench((1, 100.0, None), (8, 400.0, None)))
    train = figures.bench_summary(bench((1, 30.0, None), (8, 90.0, None), mode="train"))
    e2e = figures.end_to_end(load_report(step(0, 200.0, 10_000, True, 4)), "p99=50ms")
    ok = cell("fp32", engine=engine, train=train, end_to_end=e2e, ratio=figures.ratio(e2e, engine["rows"]))
    failed = cell("int8", status="failed", failures=[{"stage": "export", "reason": "top-1 agreement 40.0% is below"}],
                  export={"agreement": {"top1": 0.4, "top5": 0.9, "max_abs_logit_diff": 2.5, "images": 10,
                                        "min_top1": 0.8}})
    doc = document([ok, failed])
    table = p40_table(doc)
    assert table.header[3:5] == ["batch 1", "batch 8"] and "p99=50ms" in table.header[5]
    first, second = table.rows
    assert first[:2] == ["resnet18", "fp32"] and first[4].startswith("400.0 img/s")
    assert first[5].startswith("200.0 img/s") and first[6].startswith("0.50")
    assert second[3] == "–" and second[5] == "FAILED"
    assert "400.0 images/s of resnet18 inference" in training_sentence(doc)
    assert "90.0 measured" in training_sentence(doc)
    markdown = render_markdown(doc)
    assert markdown.index("Images per second: engine and end to end") < markdown.index("Training beside inference")
    assert "| resnet18 | int8 | failed | export | top-1 agreement 40.0% is below |" in markdown
    assert "**40.0%**" in markdown  # the agreement under its minimum is flagged
    page = render_html(doc)
    assert "Content-Security-Policy" in page and "<script" not in page
    rows = csv_rows(doc)
    assert [(row["precision"], row["batch_size"]) for row in rows] == [("fp32", 1), ("fp32", 8), ("int8", None)]
    assert rows[1]["train_images_per_s"] == 90.0 and rows[2]["top1_agreement"] == 0.4
