"""What ipsbench-serve's request path costs per request, beside two yardstick servers, on a 2-core box.

Every server runs pinned to core 0 and Triton's perf_analyzer (the load, gRPC, closed loop at concurrency 16) to
core 1, on 127.0.0.1, against a model whose compute is negligible (``tiny_pool_linear``: GlobalAveragePool over
3x224x224 FP32 -> Flatten -> Gemm to 1000, one ONNX Runtime thread), so what is measured is the cost of moving a
request through each server. Payloads: ``fp32`` (the 602 KB tensor), ``uint8`` (150 KB of 224x224x3 pixels to the
model's ``_uint8`` front) and ``jpeg`` (one 500x375 quality-90 JPEG to its ``_jpeg`` front, which decodes, resizes
and crops it).

Servers (``SERVERS``; one more configuration is one more entry, or one more ``--server-args``):

* ``ipsbench-serve`` with the given extra flags (``--server-args "..."``, repeatable: one server per value);
* ``inline servicer``: a grpc.aio servicer of Triton's GRPCInferenceService that runs the model (and a front's
  preprocessing) in its event loop, one ONNX Runtime session, no batching (``yardstick_servers.py inline``);
* ``fixed response``: the same servicer answering every request with one prebuilt response (``... fixed``).

For each, per payload: perf_analyzer's throughput (its ``-f`` CSV), and the server's CPU per request: user + system
CPU seconds of the server's process tree (psutil, every 0.2 s) differenced over the interval in which the server
counted requests (its ModelStatistics success count, sampled alongside), divided by the requests it counted there;
beside it the requests per batch execution the server reported over the same interval.
Rounds alternate the servers (ipsbench-serve, inline, fixed, ipsbench-serve, ...); the table gives each figure's
median over the rounds with its range, and the ratios the aims are set in, each the median of the rounds' own ratios.

Usage: .venv/bin/python benchmarks/serving_overhead.py [--rounds 3] [--seconds 4] [--payloads fp32,uint8,jpeg]
       [--server-args "--flag value"]... [--out FILE.md]
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from _common import CLIENT_CORE, PERF_ANALYZER_SCRIPT, REPO_ROOT, SERVER_CORE, TINY, pinned, write_tiny_model
from preprocess_speed import photo_jpeg
from served import CHILD_ENV, ServedProcess, server_cpu_s

YARDSTICKS = Path(__file__).resolve().parent / "yardstick_servers.py"
CONCURRENCY = 16
PAYLOADS = ("fp32", "uint8", "jpeg")
MODELS = {"fp32": TINY, "uint8": f"{TINY}_uint8", "jpeg": f"{TINY}_jpeg"}
PAYLOAD_LABELS = {"fp32": "fp32 602 KB", "uint8": "uint8 150 KB", "jpeg": "jpeg 500x375"}
STABILITY_PERCENT = 400
"""perf_analyzer calls three windows stable when max/min of their throughput and latency is <= 1 + this / 100. Every
figure here is a median over alternating rounds, so its windows are taken as they come: on a shared box latency
swings past 2x, and a level that never settles gets no row at all."""
MAX_TRIALS = 4
SAMPLE_PERIOD_S = 0.2
EDGE_S = 0.5
"""CPU and count are differenced from this long after the server counted its first request of the run to the last
sample at which its count still grew, so start-up and the tail of the run stay out."""
AIMS = (("inline servicer", 1.0), ("fixed response", 0.85))
AIM_UINT8_OVER_FP32 = 3.0
AIM_FP32_RPS = 1500.0


@dataclass(frozen=True)
class Server:
    """One server to measure: its label and its command line (``{repo}`` stands for the model repository)."""

    label: str
    argv: tuple[str, ...]
    ours: bool = False


def servers(server_args: list[str]) -> list[Server]:
    ipsbench = [Server("ipsbench-serve" + (f" {extra}" if extra else ""),
                       (sys.executable, "-m", "ipsbench.server", "--model-repository", "{repo}", "--grpc-port", "0",
                        "--metrics-port", "0", *shlex.split(extra)), ours=True)
                for extra in server_args or [""]]
    yardsticks = [Server(label, (sys.executable, str(YARDSTICKS), kind, "--model-repository", "{repo}"))
                  for label, kind in (("inline servicer", "inline"), ("fixed response", "fixed"))]
    return [*ipsbench, *yardsticks]


@dataclass(frozen=True)
class Figures:
    """One server, one payload, one round."""

    requests_per_s: float
    p50_us: float
    cpu_us_per_request: float
    cpu_share: float
    """The server's CPU seconds per second over the interval (1.0 = its core fully busy)."""
    batch: float
    """Requests per batch execution the server reported over the interval (1 for the yardsticks)."""


# --- the model repository and perf_analyzer's input ---------------------------------------------------------------


def build_repository(repo: Path, payloads: list[str]) -> None:
    from ipsbench.export.preprocess_front import write_preprocess_front
    from ipsbench.server.preprocess.recipe import Recipe

    write_tiny_model(repo)
    for kind in payloads:
        if kind != "fp32":
            write_preprocess_front(repo, TINY, kind, Recipe.imagenet(224))


def jpeg_input(folder: Path) -> Path:
    """perf_analyzer's --input-data for the jpeg front: one image; for a BYTES input perf_analyzer takes "b64" as the
    serialized tensor (each element's 4-byte little-endian length, then its bytes)."""
    path = folder / "jpeg-input.json"
    jpeg = photo_jpeg(0)
    image = base64.b64encode(struct.pack("<I", len(jpeg)) + jpeg).decode("ascii")
    path.write_text(json.dumps({"data": [{"image": {"b64": image}}]}), encoding="utf-8")
    return path


# --- one measurement ----------------------------------------------------------------------------------------------


def sample_server(server: ServedProcess, model: str, stop: threading.Event, deadline: float, samples: list) -> None:
    """(monotonic s, server CPU s, successes, executions) every SAMPLE_PERIOD_S until ``stop`` or the deadline."""
    while not stop.is_set() and time.monotonic() < deadline:
        counts = server.counts(model)
        if counts is not None:  # a statistics call that timed out leaves that sample out
            samples.append((time.monotonic(), server_cpu_s(server.ps), *counts))
        stop.wait(SAMPLE_PERIOD_S)


def cpu_per_request(samples: list) -> tuple[float, float, float]:
    """(µs of server CPU per request, CPU share, requests per batch execution) over the interval in which the
    server's count grew; NaN where too few samples cover it."""
    nothing = (float("nan"),) * 3
    if len(samples) < 3:
        return nothing
    times, cpu, count, executions = np.array(samples, dtype=float).T
    grew = np.nonzero(np.diff(count) > 0)[0]
    if len(grew) == 0:
        return nothing
    start, end = times[grew[0]] + EDGE_S, times[grew[-1]]
    if end - start < 1.0:
        return nothing

    def delta(values: np.ndarray) -> float:
        return float(np.interp(end, times, values) - np.interp(start, times, values))

    used, served, batches = delta(cpu), delta(count), delta(executions)
    return 1e6 * used / served, used / (end - start), served / batches if batches else float("nan")


def perf_analyzer_cmd(port: int, model: str, seconds: float, csv_path: Path, input_data: Path | None) -> list[str]:
    cmd = ["bash", str(PERF_ANALYZER_SCRIPT), "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}",
           "--concurrency-range", str(CONCURRENCY), "--measurement-interval", str(round(seconds * 1000)),
           "-s", str(STABILITY_PERCENT), "-r", str(MAX_TRIALS), "-f", str(csv_path)]
    return cmd + (["--input-data", str(input_data)] if input_data else [])


def measure(server: ServedProcess, payload: str, seconds: float, out: Path, input_data: Path | None
            ) -> Figures | None:
    """perf_analyzer against one server on one payload; None (with a message) when it gave no figures."""
    model = MODELS[payload]
    csv_path = out / f"pa-{server.slug}-{payload}.csv"
    cmd = perf_analyzer_cmd(server.port, model, seconds, csv_path, input_data if payload == "jpeg" else None)
    limit_s = 60 + (MAX_TRIALS + 2) * (seconds + 2)
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_server, args=(server, model, stop, time.monotonic() + limit_s, samples))
    sampler.start()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, preexec_fn=pinned(CLIENT_CORE), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=CHILD_ENV)
    try:
        output, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=10)
        output += f"\n(ran past {limit_s:.0f} s)"
    finally:
        if proc.poll() is None:  # an interrupt: stop the load before the servers
            proc.kill()
            proc.wait(timeout=10)
        stop.set()
        sampler.join(timeout=10)
    rows = []
    if csv_path.exists():
        with csv_path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    if proc.returncode != 0 or not rows:  # it writes no row for a level that never settled
        tail = output.strip().splitlines()[-1][:300] if output.strip() else ""
        print(f"    perf_analyzer on {server.label}, {payload}: no figures (exit {proc.returncode}): {tail}")
        return None
    row = rows[0]
    cpu_us, share, batch = cpu_per_request(samples)
    return Figures(float(row["Inferences/Second"]), float(row["p50 latency"]), cpu_us, share, batch)


# --- the report ---------------------------------------------------------------------------------------------------


def median_range(values: list[float], fmt: str) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "-"
    text = format(float(np.median(values)), fmt)
    return text if len(values) == 1 else f"{text} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(results: dict, labels: list[str], payloads: list[str]) -> list[str]:
    lines = ["| payload | server | req/s | server CPU µs/req | server core busy % | batch | p50 ms | rounds |",
             "|---|---|---|---|---|---|---|---|"]
    for payload in payloads:
        for label in labels:
            rounds = results.get((label, payload), [])
            lines.append(
                f"| {PAYLOAD_LABELS[payload]} | {label} | {median_range([r.requests_per_s for r in rounds], '.0f')} "
                f"| {median_range([r.cpu_us_per_request for r in rounds], '.0f')} "
                f"| {median_range([100 * r.cpu_share for r in rounds], '.0f')} "
                f"| {median_range([r.batch for r in rounds], '.1f')} "
                f"| {median_range([r.p50_us / 1000 for r in rounds], '.2f')} | {len(rounds)} |")
    return lines


def paired_ratio(numerator: list[Figures | None], denominator: list[Figures | None]) -> list[float]:
    """The rounds' own req/s ratios (rounds where both have figures)."""
    return [a.requests_per_s / b.requests_per_s for a, b in zip(numerator, denominator) if a and b]


def verdict(ratios: list[float], aim: float) -> str:
    if not ratios:
        return "no figures"
    return f"{median_range(ratios, '.2f')}, aim >= {aim:g}: {'met' if np.median(ratios) >= aim else 'NOT met'}"


def ratio_lines(rounds: dict, ours: list[str], payloads: list[str]) -> list[str]:
    """``rounds``: (label, payload) -> per-round Figures or None, aligned by round."""
    lines = ["ratios (median of the rounds' own ratios, range):"]
    for label in ours:
        for payload in payloads:
            for yardstick, aim in AIMS:
                ratios = paired_ratio(rounds[(label, payload)], rounds[(yardstick, payload)])
                lines.append(f"- {label} / {yardstick} req/s, {payload}: {verdict(ratios, aim)}")
        if "fp32" in payloads and "uint8" in payloads:
            ratios = paired_ratio(rounds[(label, "uint8")], rounds[(label, "fp32")])
            lines.append(f"- {label} uint8 / fp32 req/s: {verdict(ratios, AIM_UINT8_OVER_FP32)}")
        else:
            lines.append(f"- {label} uint8 / fp32 req/s: needs --payloads with both fp32 and uint8")
        if "fp32" in payloads:
            lines.append(fp32_line(label, rounds))
    return lines


def fp32_line(label: str, rounds: dict) -> str:
    ours = [r.requests_per_s for r in rounds[(label, "fp32")] if r]
    inline = [r.requests_per_s for r in rounds[("inline servicer", "fp32")] if r]
    if not ours or not inline:
        return f"- {label} fp32 req/s: no figures"
    mine, theirs = float(np.median(ours)), float(np.median(inline))
    if theirs < AIM_FP32_RPS:
        judged = f"not judged here: the inline servicer does {theirs:.0f} < {AIM_FP32_RPS:.0f} on this box"
    else:
        judged = "met" if mine >= AIM_FP32_RPS else "NOT met"
    return (f"- {label} fp32 req/s: {mine:.0f} (inline servicer {theirs:.0f}); aim >= {AIM_FP32_RPS:.0f} where the "
            f"inline servicer does >= {AIM_FP32_RPS:.0f}: {judged}")


# --- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=4.0, help="perf_analyzer's measurement window (default 4)")
    parser.add_argument("--payloads", default=",".join(PAYLOADS), help="comma-separated, of fp32,uint8,jpeg")
    parser.add_argument("--server-args", action="append", default=[], metavar='"FLAGS"',
                        help="extra ipsbench-serve flags; repeat to measure several configurations")
    parser.add_argument("--out", type=Path, help="also write the table and ratios to this Markdown file")
    args = parser.parse_args(argv)
    args.payloads = [p.strip() for p in args.payloads.split(",") if p.strip()]
    unknown = sorted(set(args.payloads) - set(PAYLOADS))
    if unknown or not args.payloads:
        parser.error(f"--payloads: choose from {','.join(PAYLOADS)} (got {unknown or 'none'})")
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.seconds <= 120:
        parser.error("--rounds must be 1-20 and --seconds 0.5-120")
    return args


def run_rounds(args, started: list[ServedProcess], out: Path, input_data: Path) -> dict:
    rounds: dict = {(s.label, p): [] for s in started for p in args.payloads}
    for number in range(1, args.rounds + 1):
        for payload in args.payloads:
            for server in started:
                print(f"round {number}/{args.rounds}: {payload} on {server.label} ...", flush=True)
                rounds[(server.label, payload)].append(measure(server, payload, args.seconds, out, input_data))
    return rounds


def report(args, chosen: list[Server], rounds: dict, took_s: float, load: tuple[float, float]) -> str:
    labels = [s.label for s in chosen]
    results = {key: [r for r in values if r] for key, values in rounds.items()}
    command = "benchmarks/serving_overhead.py " + " ".join(
        [f"--rounds {args.rounds}", f"--seconds {args.seconds:g}", f"--payloads {','.join(args.payloads)}",
         *(f"--server-args {shlex.quote(extra)}" for extra in args.server_args)])
    lines = [f"servers on core {SERVER_CORE}, perf_analyzer (gRPC, concurrency {CONCURRENCY}, "
             f"{args.seconds:g} s windows) on core {CLIENT_CORE}; model {TINY} (negligible compute); "
             f"medians of {args.rounds} alternating rounds, range in brackets", "",
             *table(results, labels, args.payloads), "",
             *ratio_lines(rounds, [s.label for s in chosen if s.ours], args.payloads), "",
             f"load average (1 min) {load[0]:.1f} at start, {load[1]:.1f} at end, on {os.cpu_count()} cores; "
             f"run took {took_s:.0f} s; reproduce with: .venv/bin/python {command}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores (servers on core 0, perf_analyzer on core 1)")
    os.sched_setaffinity(0, {CLIENT_CORE})  # this script's own sampling stays off the servers' core
    for signum in (signal.SIGINT, signal.SIGTERM):  # both unwind as KeyboardInterrupt: the servers are stopped
        signal.signal(signum, signal.default_int_handler)
    chosen = servers(args.server_args)
    started_at, load_at_start = time.monotonic(), os.getloadavg()[0]
    running: list[ServedProcess] = []
    with tempfile.TemporaryDirectory(prefix="ipsbench-serving-overhead-") as tmp:
        out = Path(tmp)
        repo = out / "models"
        repo.mkdir()
        build_repository(repo, args.payloads)
        input_data = jpeg_input(out)
        try:
            for server in chosen:
                argv_ = [a.replace("{repo}", str(repo)) for a in server.argv]
                running.append(ServedProcess(server.label, argv_, out / f"{len(running)}.log", SERVER_CORE))
            rounds = run_rounds(args, running, out, input_data)
        finally:
            for server in running:
                server.stop()
    text = report(args, chosen, rounds, time.monotonic() - started_at, (load_at_start, os.getloadavg()[0]))
    print("\n" + "=" * 100 + "\n" + text + "\n" + "=" * 100)
    if args.out:
        args.out.write_text("# ipsbench-serve serving overhead\n\n" + text + "\n", encoding="utf-8")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: perf_analyzer and the servers were stopped", file=sys.stderr)
        sys.exit(130)
