"""The GPU check's P40-style table: engine (in-process) and end-to-end images/sec side by side, with GPU power.

Reads the engine bench JSON (``ipsbench-serve bench --json``), the load report (``report.json``) and GPU samples
(``nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw,memory.used --format=csv,noheader,nounits``), and
prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from pathlib import Path
from statistics import mean


def read_samples(path: Path) -> list[tuple[float, float, float]]:
    """(unix time, utilization %, power W) rows; unreadable rows are skipped."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.reader(handle):
            try:
                when = dt.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                rows.append((when, float(row[1]), float(row[2])))
            except (IndexError, ValueError):
                continue
    return rows


def window(samples, start: float | None, end: float | None):
    if start is None or end is None:
        return samples
    return [s for s in samples if start <= s[0] <= end]


def step_bounds(report: dict, step: dict) -> tuple[float | None, float | None]:
    """Wall-clock bounds of a step's measured window when the report records them, else the whole run's."""
    if "window_start_unix" in step and "window_end_unix" in step:
        return step["window_start_unix"], step["window_end_unix"]
    start = dt.datetime.fromisoformat(report["started_at"]).timestamp()
    return start, start + report["duration_s"]


def fmt(value, digits=1):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--load", type=Path, required=True)
    parser.add_argument("--gpu-samples", type=Path, required=True)
    args = parser.parse_args()

    bench = json.loads(args.bench.read_text())
    samples = read_samples(args.gpu_samples) if args.gpu_samples.exists() else []
    print(f"## {bench.get('model', '?')} on {args.gpu}: backend {args.backend}, precision {args.precision}\n")

    print("### Engine (in-process forward pass, the vendor-sheet number)\n")
    print("| batch | images/sec | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|")
    best = 0.0
    for row in bench["results"]:
        best = max(best, row["images_per_s"])
        latency = row["latency_ms"]
        print(f"| {row['batch_size']} | {fmt(row['images_per_s'])} | {fmt(latency['p50'], 2)} | {fmt(latency['p99'], 2)} |")

    if not args.load.exists():
        print("\nno end-to-end report (the load run did not write one)")
        return 0
    report = json.loads(args.load.read_text())
    print("\n### End to end (ipsbench-load over loopback gRPC, FP32 tensors, server-side dynamic batching)\n")
    print("| concurrency | images/request | images/sec | p50 ms | p99 ms | e2e ÷ best engine | server avg batch "
          "| server queue ms | server compute ms | GPU util % | power W | images/sec/W | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step in report["steps"]:
        in_window = window(samples, *step_bounds(report, step))
        util = mean(s[1] for s in in_window) if in_window else None
        power = mean(s[2] for s in in_window) if in_window else None
        ips = step["images_per_s"]
        latency = step["latency_us"]
        p50 = latency["p50"] / 1000 if latency.get("p50") is not None else None
        p99 = latency["p99"] / 1000 if latency.get("p99") is not None else None
        server = step.get("server") or {}  # present when the load run scraped the server's metrics
        print(
            f"| {step.get('concurrency', '?')} | {report['payload'].get('images_per_request', 1)} | {fmt(ips)} | "
            f"{fmt(p50, 2)} | {fmt(p99, 2)} | {fmt(ips / best if best else None, 2)} | "
            f"{fmt(server.get('avg_batch_size'), 2)} | {fmt(server.get('queue_ms'), 2)} | "
            f"{fmt(server.get('compute_ms'), 2)} | {fmt(util, 0)} | "
            f"{fmt(power, 0)} | {fmt(ips / power if power else None, 2)} | {step['errors_total']} |"
        )
    print(f"\nrun {'VALID' if report['valid'] else 'INVALID'}; GPU samples every 0.5 s from NVML (nvidia-smi).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
