"""The P40-style table (model × precision × batch → images/sec, p50/p99, images/sec/W), engine figures beside the
end-to-end ones with their ratio, and the words that say what those numbers mean."""

from __future__ import annotations

from ipsbench.loadgen.report.cells import DASH, TableData, duration_words, ms, number, rate
from ipsbench.loadgen.report.schema import step_load

IMAGENET_VALIDATION_IMAGES = 50_000
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


def _precision(report: dict) -> str:
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
    precision = _precision(report)
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


def what_numbers_mean(report: dict, images: int = IMAGENET_VALIDATION_IMAGES) -> list[str]:
    """Short paragraphs: forward pass only vs end to end, batch and precision, their ratio, and how long
    ``images`` images take at the measured rates."""
    engine = report.get("engine") or {}
    results = engine_rows(report)
    best_engine = max(results, key=lambda result: result["images_per_s"], default=None)
    measured = [step for step in report["steps"] if step.get("images_per_s")]
    best_step = max(measured, key=lambda step: step["images_per_s"], default=None)
    paragraphs = []
    if best_engine:
        paragraphs.append(
            f"**Engine** rows are the forward pass alone, inside one process (`ipsbench-serve bench`): one engine "
            f"instance on {engine.get('device', 'the device')} ({engine.get('device_name', 'unnamed')}), "
            f"{_precision(report)}, each call timed whole with its host-device copies, and no network, "
            "serialization, queueing or image decoding. This is the number vendor sheets (NVIDIA's P40 inference "
            "report, MLPerf offline) quote."
        )
    else:
        paragraphs.append(
            "**Engine** figures are absent: this run was given no `ipsbench-serve bench --json` results, so only "
            "end-to-end rows are shown. The engine number (forward pass only, in one process) is the one vendor "
            "sheets quote; it is always higher."
        )
    paragraphs.append(
        "**End-to-end** rows are what clients got: images of successful requests that were serialized, crossed "
        "the network as KServe v2 gRPC, waited in the server's batching queue, ran and came back, counted inside "
        "each step's measured window (warm-up excluded); latency is per request."
    )
    paragraphs.append(
        "**Batch and precision** set the engine figure: a larger batch keeps the device busier and raises "
        "images/sec, but every image waits for its whole batch, so latency per request grows. Lower precision "
        "(FP16, INT8) runs faster where the hardware supports it; compare rows of the same precision only."
    )
    if best_engine and best_step:
        share = best_step["images_per_s"] / best_engine["images_per_s"]
        paragraphs.append(
            f"**The ratio**: the best end-to-end rate, {rate(best_step['images_per_s'])} images/sec "
            f"({step_load(best_step)}), is {share:.0%} of the best engine rate, "
            f"{rate(best_engine['images_per_s'])} images/sec (batch {best_engine['batch_size']}). The gap is the "
            "cost of serving: client, network, serialization, queueing and preprocessing."
        )
    if best_step:
        text = (f"**How long**: at {rate(best_step['images_per_s'])} images/sec end to end, the {images:,} "
                f"ImageNet validation images take {duration_words(images / best_step['images_per_s'])}")
        if best_engine:
            text += (f"; at the engine's {rate(best_engine['images_per_s'])} images/sec, "
                     f"{duration_words(images / best_engine['images_per_s'])}")
        paragraphs.append(text + ".")
    return paragraphs
