"""The P40-style table (model × precision × batch → images/sec, p50/p99, images/sec/W), engine figures beside the
end-to-end ones with their ratio (the words saying what they mean are in :mod:`ipsbench.loadgen.report.sentences`)."""

from __future__ import annotations

from ipsbench.loadgen.report.cells import DASH, TableData, ms, number, rate
from ipsbench.loadgen.report.schema import step_load

HEADER = ["model", "precision", "batch", "measured", "images/sec", "p50 ms", "p99 ms", "images/sec/W",
          "end to end ÷ engine"]


def engine_rows(report: dict) -> list[dict]:
    """The ``ipsbench-serve bench`` results the report carries, one per batch size (empty without them)."""
    engine = report.get("engine") or {}
    return [result for result in engine.get("results") or [] if result.get("images_per_s")]


def effective_batch(report: dict, step: dict) -> float:
    """Images per engine call in a step: the server's average batch when scraped, else the images per request."""
    server = step.get("server") or {}
    return server.get("avg_batch_size") or report["payload"].get("images_per_request") or 1


def matching_engine_row(results: list[dict], batch: float) -> dict | None:
    """The engine result whose batch size is nearest the batch the server actually ran (ties: the smaller)."""
    if not results:
        return None
    return min(results, key=lambda result: (abs(result["batch_size"] - batch), result["batch_size"]))


def report_precision(report: dict) -> str:
    """The engine's precision where the bench gave it, else the model's."""
    engine = report.get("engine") or {}
    return str(engine.get("precision") or report["model"].get("precision") or DASH)


def _engine_images_per_watt(result: dict) -> float | None:
    if result.get("images_per_joule") is not None:
        return result["images_per_joule"]
    power = result.get("power_w")
    return result["images_per_s"] / power if power else None


def _step_images_per_watt(step: dict) -> float | None:
    gpu = (step.get("server") or {}).get("gpu") or {}
    return gpu.get("images_per_joule")  # images/J is images/sec per watt


def p40_table(report: dict) -> TableData | None:
    """Engine rows first, then one end-to-end row per step with throughput; None when there is neither."""
    engine = report.get("engine") or {}
    results = engine_rows(report)
    precision = report_precision(report)
    rows = []
    for result in results:
        latency = result.get("latency_ms") or {}
        rows.append([
            str(engine.get("model", report["model"]["name"])), precision, str(result["batch_size"]),
            "engine (forward pass, in-process)", rate(result["images_per_s"]),
            number(latency.get("p50")), number(latency.get("p99")),
            number(_engine_images_per_watt(result)), DASH,
        ])
    for step in report["steps"]:
        if not step.get("images_per_s"):
            continue
        batch = effective_batch(report, step)
        batch_cell = f"{batch:.1f} (server avg)" if (step.get("server") or {}).get("avg_batch_size") else f"{batch:g}"
        latency = step["latency_us"] or {}
        reference = matching_engine_row(results, batch)
        ratio = DASH
        if reference:
            ratio = f"{step['images_per_s'] / reference['images_per_s']:.2f} (vs batch {reference['batch_size']})"
        rows.append([
            report["model"]["name"], precision, batch_cell, f"end to end, {step_load(step)}",
            rate(step["images_per_s"]), ms(latency.get("p50")), ms(latency.get("p99")),
            number(_step_images_per_watt(step)), ratio,
        ])
    if not rows:
        return None
    notes = ["Engine latency is one call of a whole batch; end-to-end latency is one request's, from send to "
             "response. images/sec/W: images per joule of GPU energy (blank without a GPU's power readings)."]
    return TableData(HEADER, rows, notes)
