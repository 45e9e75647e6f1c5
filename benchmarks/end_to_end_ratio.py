"""End-to-end vs in-process engine throughput of ipsbench-serve on a 2-core box: server pinned to core 0, load generator to core 1.

Measures, in one run, with ONNX Runtime at one intra-op and one inter-op thread for both the server and the
in-process engine:

(a) end-to-end images/sec at saturation (best step of an ipsbench-load sweep) / the engine's best images/sec
    (`ipsbench-serve bench`, batch sizes up to max_batch_size), for ResNet-18 (and ResNet-50 unless --quick);
(b) requests/sec on one server core for a model whose compute is negligible (GlobalAveragePool -> Flatten ->
    Gemm to 1000 over a 3x224x224 FP32 input), with the client's and the server's CPU share per step;
(c) the p50 latency the server adds at batch 1: sweep concurrency-1 p50 minus the engine's batch-1 p50.

Cross-checks (b) with Triton's perf_analyzer through scripts/perf-analyzer.sh, skipped when it cannot be set up.

Usage: .venv/bin/python benchmarks/end_to_end_ratio.py [--quick]

(The per-request cost of the serving path beside yardstick servers is benchmarks/serving_overhead.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from _common import (
    CLIENT_CORE,
    MAX_BATCH_SIZE,
    PERF_ANALYZER_SCRIPT,
    REPO_ROOT,
    SERVER_CORE,
    THREAD_PARAMETERS,
    TINY,
    Server,
    pinned,
    run_pinned,
    tree_cpu_s,
    write_tiny_model,
)

# --- model repository -------------------------------------------------------------------------------------------


def export_model(name: str, repo: Path) -> None:
    print(f"exporting {name} ...", flush=True)
    run_pinned(
        [sys.executable, "-m", "ipsbench.export", name, "--out", str(repo), "--max-batch-size", str(MAX_BATCH_SIZE)],
        CLIENT_CORE,
        600,
    )
    config = repo / name / "config.pbtxt"
    config.write_text(config.read_text(encoding="utf-8") + THREAD_PARAMETERS, encoding="utf-8")


# --- engine bench -----------------------------------------------------------------------------------------------


def engine_bench(model: str, repo: Path, out: Path, duration_s: float) -> dict:
    path = out / f"bench-{model}.json"
    batch_sizes = ",".join(str(b) for b in (1, 2, 4, MAX_BATCH_SIZE))
    print(f"engine bench {model} (batch sizes {batch_sizes}) ...", flush=True)
    run_pinned(
        [sys.executable, "-m", "ipsbench.server", "bench", model, "--model-repository", str(repo),
         "--batch-sizes", batch_sizes, "--duration", f"{duration_s:g}s", "--warmup", "1s", "--json", str(path)],
        SERVER_CORE,
        300,
    )
    return json.loads(path.read_text(encoding="utf-8"))


# --- load -------------------------------------------------------------------------------------------------------


SWEEP_TRIALS = 3
"""Measurement windows per concurrency level: the three the stability check compares, no retries, so a run's length
is known."""


def sweep(server: Server, model: str, levels: list[int], out: Path, duration_s: float) -> list[dict]:
    """Closed-loop sweep on core 1; returns the report's steps with client/server CPU % of each window."""
    folder = out / f"sweep-{model}"
    cmd = [sys.executable, "-m", "ipsbench.loadgen", "sweep", "--target", f"127.0.0.1:{server.port}", "--model", model,
           "--concurrency", ",".join(map(str, levels)), "--duration", f"{duration_s:g}s", "--warmup", "1s",
           "--max-trials", str(SWEEP_TRIALS), "--out", str(folder), "--log-level", "warning"]
    print(f"sweep {model} at concurrency {','.join(map(str, levels))} ...", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, preexec_fn=pinned(CLIENT_CORE), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    client = psutil.Process(proc.pid)
    samples = []  # (unix time, client cpu s, server cpu s)
    limit = time.monotonic() + 60 + len(levels) * (SWEEP_TRIALS * duration_s + 10)
    while proc.poll() is None and time.monotonic() < limit:
        samples.append((time.time(), tree_cpu_s(client), server.cpu_s()))
        time.sleep(0.25)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
        raise SystemExit(f"sweep of {model} ran past its bound")
    stderr = proc.stderr.read()
    if proc.returncode == 1:  # a level stayed UNSTABLE: its figures stand, flagged in the report
        print(f"note: some levels of the {model} sweep did not settle within {SWEEP_TRIALS} windows", flush=True)
    elif proc.returncode != 0:
        sys.stderr.write(stderr[-3000:])
        raise SystemExit(f"sweep of {model} failed ({proc.returncode})")
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    times = np.array([s[0] for s in samples])
    for step in report["steps"]:
        start, end = step["window_start_unix"], step["window_end_unix"]
        for key, col in (("client_cpu_pct", 1), ("server_cpu_pct", 2)):
            values = np.array([s[col] for s in samples])
            used = np.interp(end, times, values) - np.interp(start, times, values)
            step[key] = 100.0 * used / (end - start)
    return report["steps"]


def perf_analyzer(port: int, concurrency: int) -> float | None:
    if not PERF_ANALYZER_SCRIPT.exists():
        print(f"perf_analyzer cross-check skipped: {PERF_ANALYZER_SCRIPT.relative_to(REPO_ROOT)} not found")
        return None
    print(f"perf_analyzer on {TINY} at concurrency {concurrency} (first call sets itself up) ...", flush=True)
    cmd = ["bash", str(PERF_ANALYZER_SCRIPT), "-m", TINY, "-u", f"127.0.0.1:{port}", "-i", "grpc",
           "--concurrency-range", str(concurrency), "--measurement-interval", "3000"]
    try:
        result = subprocess.run(cmd, cwd=REPO_ROOT, preexec_fn=pinned(CLIENT_CORE), capture_output=True,
                                text=True, timeout=240)
    except subprocess.TimeoutExpired:
        print("perf_analyzer cross-check skipped: it ran past 240 s")
        return None
    match = re.findall(r"Throughput: ([\d.]+) infer/sec", result.stdout)
    if result.returncode != 0 or not match:
        print(f"perf_analyzer cross-check failed ({result.returncode}): {(result.stdout + result.stderr)[-800:]}")
        return None
    return float(match[-1])


# --- main -------------------------------------------------------------------------------------------------------


def best(steps: list[dict], key: str) -> dict:
    return max(steps, key=lambda s: s[key])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 only, shorter windows (about 2.5 min)")
    parser.add_argument("--keep", type=Path, help="copy reports and logs into this folder instead of discarding")
    args = parser.parse_args(argv)
    if os.cpu_count() is None or len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores (server on core 0, load generator on core 1)")
    started = time.monotonic()
    window_s = 3.0 if args.quick else 4.0
    bench_s = 2.0 if args.quick else 3.0
    models = ["resnet18"] if args.quick else ["resnet18", "resnet50"]
    # A CNN step completes whole batches of 8, so its window must hold many batches for a steady images/sec.
    cnn_window_s = {"resnet18": 4.0 if args.quick else 6.0, "resnet50": 10.0}
    cnn_levels = {"resnet18": [1, 8, 16], "resnet50": [1, 16]}
    tiny_levels = [1, 16, 64] if args.quick else [1, 8, 32, 64, 128]

    with tempfile.TemporaryDirectory(prefix="ipsbench-e2e-ratio-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        repo = Path(tmp) / "models"
        repo.mkdir()
        for model in models:
            export_model(model, repo)
        write_tiny_model(repo)
        benches = {m: engine_bench(m, repo, out, bench_s) for m in [*models, TINY]}

        server = Server(repo, out / "server.log")
        try:
            sweeps = {m: sweep(server, m, cnn_levels[m], out, cnn_window_s[m]) for m in models}
            sweeps[TINY] = sweep(server, TINY, tiny_levels, out, window_s)
            pa_rps = perf_analyzer(server.port, tiny_levels[-1])
        finally:
            server.stop()

    lines = [f"ipsbench serving overhead: server on core {SERVER_CORE}, load generator on core {CLIENT_CORE}, "
             f"ONNX Runtime 1 intra-op + 1 inter-op thread, max_batch_size {MAX_BATCH_SIZE}"]
    lines.append("(a) end-to-end / engine images/sec at saturation")
    for m in models:
        e2e = best(sweeps[m], "images_per_s")
        eng = max(benches[m]["results"], key=lambda r: r["images_per_s"])
        lines.append(f"    {m:<9} e2e {e2e['images_per_s']:7.1f} img/s (concurrency {e2e['concurrency']})   "
                     f"engine {eng['images_per_s']:7.1f} img/s (batch {eng['batch_size']})   "
                     f"ratio {e2e['images_per_s'] / eng['images_per_s']:.3f}")
    lines.append(f"(b) {TINY} (negligible compute) requests/sec on one server core")
    for s in sweeps[TINY]:
        lines.append(f"    concurrency {s['concurrency']:>4}: {s['requests_per_s']:8.1f} req/s  "
                     f"p50 {s['latency_us']['p50'] / 1000:6.2f} ms  server CPU {s['server_cpu_pct']:5.1f}%  "
                     f"client CPU {s['client_cpu_pct']:5.1f}%")
    top = best(sweeps[TINY], "requests_per_s")
    eng_tiny = max(benches[TINY]["results"], key=lambda r: r["images_per_s"])
    saturated_side = "client (load generator)" if top["client_cpu_pct"] > top["server_cpu_pct"] else "server"
    lines.append(f"    best {top['requests_per_s']:.1f} req/s at concurrency {top['concurrency']} "
                 f"(engine alone: {eng_tiny['images_per_s']:.0f} img/s at batch {eng_tiny['batch_size']}); "
                 f"server CPU {top['server_cpu_pct']:.0f}%, client CPU {top['client_cpu_pct']:.0f}%: "
                 f"the {saturated_side} core is the busier one")
    if pa_rps is not None:
        lines.append(f"    perf_analyzer (gRPC, concurrency {tiny_levels[-1]}): {pa_rps:.1f} infer/sec")
    lines.append("(c) p50 latency the server adds at batch 1 (sweep concurrency 1 p50 - engine batch 1 p50)")
    for m in [*models, TINY]:
        c1 = next(s for s in sweeps[m] if s["concurrency"] == 1)
        b1 = next(r for r in benches[m]["results"] if r["batch_size"] == 1)
        e2e_ms, eng_ms = c1["latency_us"]["p50"] / 1000, b1["latency_ms"]["p50"]
        lines.append(f"    {m:<16} e2e p50 {e2e_ms:7.2f} ms - engine p50 {eng_ms:7.2f} ms = {e2e_ms - eng_ms:+6.2f} ms")
    lines.append(f"run took {time.monotonic() - started:.0f} s; reproduce with: "
                 f".venv/bin/python benchmarks/end_to_end_ratio.py{' --quick' if args.quick else ''}")
    print("\n" + "=" * 100 + "\n" + "\n".join(lines) + "\n" + "=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
