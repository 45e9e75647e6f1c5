"""A cell's figures from what its stages wrote: the engine bench's rows, the training rows, the end-to-end figure
of the load report (the highest images/s of a step meeting the objective), their ratio, and what it costs.
Pure functions over the JSON documents, so every rule here is tested without running anything."""

from __future__ import annotations

ENGINE_FIELDS = ("batch_size", "images_per_s", "latency_ms", "power_w", "images_per_joule", "joules_per_image",
                 "energy_j", "gpu_utilization", "sm_clock_mhz", "max_sm_clock_mhz", "throttled")
"""What the matrix keeps of each ``ipsbench-serve bench`` row (the fields a bench without NVML leaves out are
kept as null)."""


def bench_rows(bench: dict | None) -> list[dict]:
    """One row per batch size of an ``ipsbench-serve bench --json`` document, with the fields the report shows."""
    if not bench:
        return []
    return [{name: row.get(name) for name in ENGINE_FIELDS} for row in bench.get("results") or []
            if row.get("images_per_s")]


def bench_summary(bench: dict | None) -> dict | None:
    """The bench's engine and the rows; None without a bench."""
    if not bench:
        return None
    return {"mode": bench.get("mode", "infer"), "device": bench.get("device"), "device_name": bench.get("device_name"),
            "precision": bench.get("precision"), "backend": bench.get("backend"), "rows": bench_rows(bench),
            "simulated": bench.get("simulated")}


def best_row(rows: list[dict]) -> dict | None:
    """The batch size with the most images/s."""
    return max(rows, key=lambda row: row["images_per_s"]) if rows else None


def _step_power_w(step: dict) -> float | None:
    gpu = (step.get("server") or {}).get("gpu") or {}
    return gpu.get("power_w_from_energy") or gpu.get("power_w_mean_of_scrapes")


def end_to_end(report: dict | None, objective: str) -> dict | None:
    """The load run's figure: the step with the most images/s among the valid steps meeting ``objective`` (every
    valid step when there is none), with its latency and load; ``images_per_s`` None when no step qualified."""
    if not report:
        return None
    steps = [step for step in report.get("steps") or [] if step.get("images_per_s") and step.get("valid", True)]
    judged = bool(objective)
    qualifying = [step for step in steps if (step.get("slo") or {}).get("met")] if judged else steps
    figure = {"scenario": report.get("scenario"), "verdict": report.get("verdict"), "objective": objective or None,
              "steps": len(report.get("steps") or []), "images_per_s": None, "p50_ms": None, "p99_ms": None,
              "load": None, "power_w": None, "server_avg_batch": None, "status": report.get("status")}
    if not qualifying:
        figure["why_none"] = (f"no step met {objective}" if judged and steps else "no step measured throughput")
        return figure
    step = max(qualifying, key=lambda s: s["images_per_s"])
    latency = step.get("latency_us") or {}
    load = (f"concurrency {step['concurrency']}" if step.get("concurrency") is not None
            else f"{step.get('target_rate_per_s'):g} requests/s")
    figure.update(
        images_per_s=step["images_per_s"],
        p50_ms=None if latency.get("p50") is None else latency["p50"] / 1000,
        p99_ms=None if latency.get("p99") is None else latency["p99"] / 1000,
        load=load, step=step.get("index"), power_w=_step_power_w(step),
        server_avg_batch=(step.get("server") or {}).get("avg_batch_size"),
        bottleneck=(step.get("bottleneck") or {}).get("sentence"),
    )
    return figure


def ratio(e2e: dict | None, engine_rows: list[dict]) -> dict | None:
    """End-to-end images/s ÷ the engine's best images/s (the vendor-sheet figure it is read against)."""
    best = best_row(engine_rows)
    if not e2e or e2e.get("images_per_s") is None or best is None:
        return None
    return {"value": round(e2e["images_per_s"] / best["images_per_s"], 4), "engine_batch_size": best["batch_size"],
            "engine_images_per_s": best["images_per_s"]}


def nearest_engine_row(rows: list[dict], batch: float | None) -> dict | None:
    """The engine row whose batch size is nearest the batch the server ran (ties: the smaller)."""
    if not rows:
        return None
    if batch is None:
        return best_row(rows)
    return min(rows, key=lambda row: (abs(row["batch_size"] - batch), row["batch_size"]))


def cost(e2e: dict | None, engine_rows: list[dict], dollars_per_hour: float | None,
         watts_idle: float | None) -> dict | None:
    """Dollars and kilowatt-hours per million images at the end-to-end rate. The power is the server's GPU power
    during that step where scraped, else the engine bench's at the nearest batch size, else ``--gpu-watts-idle``;
    the source is named. None without an end-to-end rate, or with neither a price nor a power."""
    if not e2e or not e2e.get("images_per_s"):
        return None
    rate = e2e["images_per_s"]
    seconds_per_million = 1e6 / rate
    power, source = e2e.get("power_w"), "server GPU power during the step (NVML)"
    if power is None:
        row = nearest_engine_row(engine_rows, e2e.get("server_avg_batch"))
        if row and row.get("power_w") is not None:
            power, source = row["power_w"], f"engine bench GPU power at batch {row['batch_size']} (NVML)"
    if power is None and watts_idle is not None:
        power, source = watts_idle, "--gpu-watts-idle (no power measured)"
    if power is None and dollars_per_hour is None:
        return None
    return {
        "dollars_per_million_images": None if dollars_per_hour is None else _figure(
            dollars_per_hour * seconds_per_million / 3600),
        "kwh_per_million_images": None if power is None else _figure(power * seconds_per_million / 3.6e6),
        "power_w": power, "power_source": source if power is not None else None,
        "dollars_per_hour": dollars_per_hour, "images_per_s": rate,
    }


def _figure(value: float) -> float:
    """Six significant digits (a cost can be a few millionths of a dollar per image)."""
    return float(f"{value:.6g}")


def agreement(export: dict | None) -> dict | None:
    """What the exporter measured of a lower precision against FP32 (``export.json``'s ``agreement``)."""
    if not export:
        return None
    return export.get("agreement")
