"""The GPU check's summary: one Markdown page from a run folder of deploy/gpu-check.sh, with a verdict against the aims.

The folder holds ``run.json`` (the check's settings), ``phases.tsv`` (each phase's outcome), ``bench.json``
(``ipsbench-serve bench --json``), ``gpu-samples.csv`` (``nvidia-smi --query-gpu=timestamp,utilization.gpu,
power.draw,memory.used --format=csv,noheader,nounits``) and per front-end count ``fe<N>/models.json``
(``gpu_probe.py``), ``fe<N>/<payload>/report.json`` (``ipsbench-load``) and ``matrix/matrix.md`` (``ipsbench
matrix``). Any of them may be missing (a phase
failed); the page says what is missing instead of failing.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from pathlib import Path
from statistics import mean

PAYLOAD_ORDER = ("fp32", "uint8", "jpeg")
AIM_IMAGES = 0.8
"""End to end ÷ best engine wanted with uint8 or jpeg requests (the server preprocesses)."""
AIM_FP32 = 0.5
"""End to end ÷ best engine wanted with fp32 requests (preprocessed tensors on the wire)."""
AIM_GPU_BUSY = 80.0
"""GPU utilization (%) wanted at the best point."""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_samples(path: Path) -> list[tuple[float, float, float]]:
    """(unix time, utilization %, power W) rows; unreadable rows (and a missing file) give none."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for row in csv.reader(lines):
        try:
            when = dt.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((when, float(row[1]), float(row[2])))
        except (IndexError, ValueError):
            continue
    return rows


def read_phases(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))
    except OSError:
        return []


def fmt(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def gpu_in_window(samples, step: dict) -> tuple[float | None, float | None]:
    """Mean GPU utilization % and power W over the step's measured window: nvidia-smi's samples, else the server's
    own NVML figures from its metrics (utilization there is a fraction)."""
    start, end = step.get("window_start_unix"), step.get("window_end_unix")
    inside = [s for s in samples if start is not None and end is not None and start <= s[0] <= end]
    if inside:
        return mean(s[1] for s in inside), mean(s[2] for s in inside)
    gpu = (step.get("server") or {}).get("gpu") or {}
    util = gpu.get("utilization_mean")
    return (None if util is None else util * 100), gpu.get("power_w_from_energy") or gpu.get("power_w_mean_of_scrapes")


def preprocessing_device(models: dict | None, model: str, payload: str) -> str:
    """Where the server preprocesses this payload's requests, as its ModelConfig reports it."""
    if payload == "fp32":
        return "none (tensors)"
    entry = (models or {}).get(model) or {}
    if entry.get("device_effective"):
        return entry["device_effective"]
    return f"n/a (configured {entry['device']})" if entry.get("device") else "n/a"


def model_for(meta: dict, payload: str) -> str:
    return meta.get("model", "?") if payload == "fp32" else f"{meta.get('model', '?')}_{payload}"


def step_row(step: dict, report: dict, samples, best: float | None, where: tuple[str, int, str]) -> dict:
    payload, frontends, device = where
    ips = step.get("images_per_s")
    latency = step.get("latency_us") or {}
    util, power = gpu_in_window(samples, step)
    stability = step.get("stability") or {}
    return {
        "payload": payload, "frontends": frontends, "concurrency": step.get("concurrency"),
        "images_per_request": (report.get("payload") or {}).get("images_per_request"),
        "images_per_s": ips,
        "p50_ms": None if latency.get("p50") is None else latency["p50"] / 1000,
        "p99_ms": None if latency.get("p99") is None else latency["p99"] / 1000,
        "ratio": ips / best if ips is not None and best else None,
        "util": util, "power": power, "per_watt": ips / power if ips is not None and power else None,
        "avg_batch": (step.get("server") or {}).get("avg_batch_size"),
        "errors": step.get("errors_total", 0), "device": device,
        "stable": stability.get("stable"),
    }


def collect_rows(run_dir: Path, meta: dict, samples, best: float | None) -> tuple[list[dict], list[str]]:
    """One row per measured step, in payload, front-end count and concurrency order; and what is missing."""
    rows, missing = [], []
    frontends = sorted(int(n) for n in str(meta.get("frontends", "")).split(",") if n.strip().isdigit())
    payloads = [p for p in str(meta.get("payloads", ",".join(PAYLOAD_ORDER))).split(",") if p]
    for payload in sorted(payloads, key=lambda p: PAYLOAD_ORDER.index(p) if p in PAYLOAD_ORDER else 99):
        for count in frontends:
            models = read_json(run_dir / f"fe{count}" / "models.json")
            report = read_json(run_dir / f"fe{count}" / payload / "report.json")
            if report is None:
                missing.append(f"{payload} with {count} front end{'s' if count > 1 else ''}")
                continue
            device = preprocessing_device(models, model_for(meta, payload), payload)
            for step in report.get("steps", []):
                rows.append(step_row(step, report, samples, best, (payload, count, device)))
    return rows, missing


def _point(row: dict) -> str:
    return (f"{row['payload']}, {row['frontends']} front end{'s' if row['frontends'] > 1 else ''}, "
            f"concurrency {row['concurrency']}: {fmt(row['images_per_s'])} images/s")


def verdicts(rows: list[dict], best: float | None) -> list[tuple[str, str, str]]:
    """(aim, the figures, met / not met / not measured) for each aim; only error-free steps count."""
    clean = [r for r in rows if not r["errors"] and r["images_per_s"] is not None]
    out = []
    for aim, payloads, wanted in ((f"end to end ≥ {AIM_IMAGES:.1f} of the engine with uint8 or jpeg requests",
                                   ("uint8", "jpeg"), AIM_IMAGES),
                                  (f"end to end ≥ {AIM_FP32:.1f} of the engine with fp32 requests", ("fp32",),
                                   AIM_FP32)):
        candidates = [r for r in clean if r["payload"] in payloads]
        if not candidates or not best:
            out.append((aim, "no error-free step measured" if best else "no engine figure", "not measured"))
            continue
        top = max(candidates, key=lambda r: r["images_per_s"])
        figures = f"{top['ratio']:.2f} ({_point(top)} of {fmt(best)})"
        out.append((aim, figures, "met" if top["ratio"] >= wanted else "not met"))
    aim = f"GPU ≥ {AIM_GPU_BUSY:.0f} % busy at the best point"
    if not clean:
        out.append((aim, "no error-free step measured", "not measured"))
    else:
        top = max(clean, key=lambda r: r["images_per_s"])
        if top["util"] is None:
            out.append((aim, f"no GPU samples ({_point(top)})", "not measured"))
        else:
            figures = f"{top['util']:.0f} % ({_point(top)})"
            out.append((aim, figures, "met" if top["util"] >= AIM_GPU_BUSY else "not met"))
    return out


def render_engine(bench: dict | None) -> list[str]:
    lines = ["### Engine (in-process forward pass, the vendor-sheet number)", ""]
    if not bench or not bench.get("results"):
        return lines + ["no engine figures (the bench phase did not write them)", ""]
    lines += ["| batch | images/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
    for row in bench["results"]:
        latency = row.get("latency_ms") or {}
        lines.append(f"| {row['batch_size']} | {fmt(row['images_per_s'])} | {fmt(latency.get('p50'), 2)} "
                     f"| {fmt(latency.get('p99'), 2)} |")
    return lines + [""]


def render_end_to_end(rows: list[dict], missing: list[str]) -> list[str]:
    lines = ["### End to end (ipsbench-load over loopback gRPC, server-side dynamic batching)", ""]
    if rows:
        lines += ["| payload | front ends | concurrency | images/request | images/s | p50 ms | p99 ms "
                  "| e2e ÷ best engine | GPU util % | power W | images/s/W | server avg batch | errors "
                  "| preprocessing on | stable |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in rows:
            stable = "n/a" if r["stable"] is None else ("yes" if r["stable"] else "no")
            lines.append(
                f"| {r['payload']} | {r['frontends']} | {r['concurrency']} | {r['images_per_request']} "
                f"| {fmt(r['images_per_s'])} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['ratio'], 2)} "
                f"| {fmt(r['util'], 0)} | {fmt(r['power'], 0)} | {fmt(r['per_watt'], 2)} | {fmt(r['avg_batch'], 2)} "
                f"| {r['errors']} | {r['device']} | {stable} |")
    else:
        lines.append("no end-to-end figures")
    if missing:
        lines += ["", "Not measured (no load report): " + "; ".join(missing) + "."]
    return lines + [""]


def render_matrix(path: Path) -> list[str]:
    """The matrix phase's own Markdown (its P40 table first), its headings one level down; nothing without it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    return [("##" + line) if line.startswith("#") else line for line in text.splitlines()] + [""]


def render(run_dir: Path) -> str:
    meta = read_json(run_dir / "run.json") or {}
    bench = read_json(run_dir / "bench.json")
    samples = read_samples(run_dir / "gpu-samples.csv")
    best = max((r["images_per_s"] for r in (bench or {}).get("results", [])), default=None)
    rows, missing = collect_rows(run_dir, meta, samples, best)
    lines = [f"## GPU check: {meta.get('model', '?')} on {meta.get('gpu', '?')} "
             f"(backend {meta.get('backend', '?')}, {meta.get('precision', '?')})", ""]
    if str(meta.get("rehearsal")) == "1":
        lines += ["**Rehearsal on the CPU**: these figures test the check itself, not a GPU; the verdicts are not "
                  "a GPU measurement.", ""]
    lines += [f"Started {meta.get('started', '?')}; per level {meta.get('warmup', '?')} warm-up, up to "
              f"{meta.get('max_trials', '?')} windows of {meta.get('duration', '?')}; {meta.get('images_per_request', '?')} "
              f"images per request; {meta.get('load_processes', '?')} load-generator processes on the same box; "
              f"front ends {meta.get('frontends', '?')}; budget {meta.get('budget_s', '?')} s; "
              f"{meta.get('cpus', '?')} CPUs, {meta.get('shm_free_mib') or '?'} MiB free in /dev/shm (the front "
              "ends' rings).", ""]
    lines += ["### Verdict against the aims", "", "| aim | measured | verdict |", "|---|---|---|"]
    lines += [f"| {aim} | {figures} | **{verdict}** |" for aim, figures, verdict in verdicts(rows, best)]
    lines += ["", "Only steps without errors count; the best point is the one with the most images/s. GPU "
              "utilization and power: NVML through nvidia-smi every 0.5 s, averaged over each step's measured "
              "window.", ""]
    lines += render_engine(bench) + render_end_to_end(rows, missing)
    lines += render_matrix(run_dir / "matrix" / "matrix.md")
    phases = read_phases(run_dir / "phases.tsv")
    lines += ["### Phases", "", "| phase | status | seconds | limit s |", "|---|---|---:|---:|"]
    lines += [f"| {p.get('phase')} | {p.get('status')} | {p.get('seconds')} | {p.get('limit_s')} |" for p in phases]
    failed = [p["phase"] for p in phases if p.get("status") != "ok"]
    lines += ["", f"Phases not ok: {', '.join(failed)} (their logs are in logs/)." if failed else "Every phase ok."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="the folder deploy/gpu-check.sh wrote")
    args = parser.parse_args()
    print(render(args.run_dir), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
