"""Would this server keep an H100 busy? ipsbench-serve with 1, 2, … front ends against the device-time model.

The model is ``ipsbench-export resnet50 --simulate`` of the H100 ResNet-50 FP16 profile
(``results/profiles/h100-resnet50-fp16.json``): its batches take the H100's measured time and hold no CPU, so what
limits images/s is the server (receiving 602 KB per image, batching, answering), not compute. For each front-end
count, in alternating rounds, Triton's perf_analyzer sends FP32 requests of ``--images-per-request`` images at
``--concurrency`` from the client cores while the server runs on the server cores (the first half of the usable
cores, the load the second half; on a 2-core box one each, so one front end is all there is room for), and the
table gives images/s ÷ the profile's best images/s: 1.0 means the simulated GPU was kept busy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PERF_ANALYZER_SCRIPT, REPO_ROOT

PROFILE = REPO_ROOT / "results" / "profiles" / "h100-resnet50-fp16.json"
MODEL = "resnet50_simulated"
LISTENING = re.compile(r"gRPC listening on \S*:(\d+)\s*$")
READY_TIMEOUT_S = 180.0


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def split_cores(cores: list[int]) -> tuple[set[int], set[int]]:
    if len(cores) < 2:
        raise SystemExit("needs two cores (the server on one half, the load on the other)")
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def best_images_per_s(profile: Path) -> float:
    return max(row["images_per_s"] for row in json.loads(profile.read_text())["results"])


def start_server(repo: Path, frontends: int, cores: set[int], log: Path) -> tuple[subprocess.Popen, int]:
    argv = [sys.executable, "-m", "ipsbench.server", "--model-repository", str(repo), "--grpc-port", "0",
            "--no-allow-metrics", "--frontends", str(frontends)]
    with log.open("w") as err:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, cores))
    port = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    for line in proc.stdout:  # ends when the server exits
        if match := LISTENING.search(line):
            port = int(match.group(1))
        if line.rstrip().endswith(": ready") and port:
            return proc, port
        if time.monotonic() > deadline:
            break
    stop_server(proc)
    raise SystemExit(f"ipsbench-serve --frontends {frontends} did not become ready:\n{log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def measure(port: int, args, cores: set[int], csv_path: Path) -> float | None:
    """perf_analyzer's images/s (its throughput counts each image of a batched request), or None."""
    cmd = ["bash", str(PERF_ANALYZER_SCRIPT), "-m", MODEL, "-i", "grpc", "-u", f"127.0.0.1:{port}",
           "-b", str(args.images_per_request), "--concurrency-range", str(args.concurrency),
           "--measurement-interval", str(round(args.seconds * 1000)), "-s", "25", "-r", "4", "-f", str(csv_path)]
    try:
        result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120 + 8 * args.seconds,
                                preexec_fn=lambda: os.sched_setaffinity(0, cores))
    except subprocess.TimeoutExpired:
        print("    perf_analyzer ran past its bound", flush=True)
        return None
    if result.returncode != 0 or not csv_path.exists():
        print(f"    perf_analyzer gave no figures (exit {result.returncode}): "
              f"{(result.stdout + result.stderr).strip()[-300:]}", flush=True)
        return None
    with csv_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    return float(rows[0]["Inferences/Second"]) if rows else None


def parse_args(argv):
    server_cores, _ = split_cores(usable_cores())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontends", default=",".join(str(n) for n in range(1, len(server_cores) + 1)),
                        help="comma-separated front-end counts (default: 1 up to the server's cores)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="perf_analyzer's measurement window")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--images-per-request", type=int, default=8)
    parser.add_argument("--profile", type=Path, default=PROFILE)
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    args.frontend_counts = [int(n) for n in args.frontends.split(",")]
    if not all(0 < n <= 64 for n in args.frontend_counts) or not 0 < args.rounds <= 10:
        parser.error("front-end counts must be 1..64 and rounds 1..10")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    server_cores, client_cores = split_cores(usable_cores())
    best = best_images_per_s(args.profile)
    results: dict[int, list[float]] = {n: [] for n in args.frontend_counts}
    with tempfile.TemporaryDirectory(prefix="ipsbench-scaling-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "ipsbench.export", "resnet50", "--simulate", str(args.profile),
                        "--out", str(work / "models")], cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
        for round_number in range(1, args.rounds + 1):
            for frontends in args.frontend_counts:
                print(f"round {round_number}/{args.rounds}: --frontends {frontends} ...", flush=True)
                proc, port = start_server(work / "models", frontends, server_cores, work / f"server-{frontends}.log")
                try:
                    figure = measure(port, args, client_cores, work / f"pa-{frontends}-{round_number}.csv")
                finally:
                    stop_server(proc)
                if figure is not None:
                    results[frontends].append(figure)
    lines = [f"ipsbench-serve against the device-time model of {args.profile.name} (best {best:,.0f} images/s); "
             f"server on cores {sorted(server_cores)}, perf_analyzer on {sorted(client_cores)}, FP32 requests of "
             f"{args.images_per_request} images at concurrency {args.concurrency}; medians of {args.rounds} "
             "alternating rounds (range)", "",
             "| front ends | images/s | ÷ profile's best |", "|---:|---:|---:|"]
    for frontends, figures in results.items():
        if not figures:
            lines.append(f"| {frontends} | no figures | |")
            continue
        ratios = [f / best for f in figures]
        lines.append(f"| {frontends} | {statistics.median(figures):,.0f} ({min(figures):,.0f}-{max(figures):,.0f}) | "
                     f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
