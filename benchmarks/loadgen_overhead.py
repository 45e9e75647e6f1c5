"""The load generator's own cost and agreement, on a 2-core box: server pinned to core 0, load to core 1.

Measures, in one run, against one ipsbench-serve serving a model whose compute is negligible (GlobalAveragePool ->
Flatten -> Gemm over a 1x3x224x224 FP32 input, so every request carries 602 KB):

(a) the CPU time one ipsbench-load process spends per request at a fixed open-loop rate (`ipsbench-load rate`,
    constant arrivals, fp32 payload), beside a minimal raw grpcio loop sending pre-serialized bytes at the same
    rate (the floor) and, when present, Triton's perf_analyzer at the same `--request-rate-range`;
(b) the agreement of p50/p99 with perf_analyzer, back to back against the same server: at equal load (both open
    loop at the same constant request rates, ipsbench-load's service time -- from the actual send, as
    perf_analyzer times -- beside perf_analyzer's latency) and at equal concurrency 1 and 4 (`ipsbench-load sweep`
    against `--concurrency-range`, same stability rule); and of both with the server's own queue + compute time
    per request (ModelStatistics, sampled during the run and differenced over ipsbench-load's measured windows).

perf_analyzer is found through --perf-analyzer PATH, else the IPSBENCH_PERF_ANALYZER environment variable, else
`perf_analyzer` on PATH, else the project's scripts/perf-analyzer.sh (which sets it up on first call); where none
works those columns are skipped with a message.

Every measurement is repeated in rounds (3; 1 with --quick), the tools alternating, and medians are reported with
each tool's own range over the rounds.

Usage: .venv/bin/python benchmarks/loadgen_overhead.py [--quick] [--rounds N] [--perf-analyzer PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from _common import (
    CLIENT_CORE,
    PERF_ANALYZER_SCRIPT,
    REPO_ROOT,
    SERVER_CORE,
    TINY,
    Server,
    pinned,
    tree_cpu_s,
    write_tiny_model,
)

PERF_ANALYZER_ENV = "IPSBENCH_PERF_ANALYZER"
FLOOR_COMMAND = "floor-client"
RATE_PER_S = 300.0
"""Well below what one server core sustains for this model (about 1,000 req/s), so neither side saturates."""
HIGH_RATE_PER_S = 700.0
"""A second equal-load point, with the server core about two thirds busy, where queueing shapes the tail."""
CONCURRENCY_LEVELS = (1, 4)
INPUT_SHAPE = (1, 3, 224, 224)
SAMPLE_PERIOD_S = 0.2
STATISTICS_DEADLINE_S = 1.0
PERF_ANALYZER_SETTLE_S = 2.0
"""perf_analyzer's CPU is read from this long after its start (libraries loaded, data generated) ..."""
PERF_ANALYZER_TAIL_S = 0.5
"""... to this long before its exit (reporting), and divided by the throughput it reports."""
RATE_STABILITY_PERCENT = 100
"""perf_analyzer's stability rule at a fixed rate: only its CPU and throughput are read there, and open-loop
latency on a shared box rarely settles within a few windows, so three windows are taken as they come."""
PA_MEAN_PARTS = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
                 "Server Compute Infer", "Server Compute Output", "Client Recv")
"""perf_analyzer's CSV splits its average latency into these parts (with --percentile it has no average column)."""
AIM_CPU_MS = 0.66
AIM_AGREEMENT = 0.05


@dataclass(frozen=True)
class Plan:
    """Durations of one run; --quick shortens every part to a few seconds."""

    rate_warmup_s: float
    rate_window_s: float
    sweep_window_s: float
    max_trials: int
    stability: float
    rounds: int
    """Every measurement is taken this many times, the tools alternating, and the median reported: on a shared
    box one run of a tool differs from the next by more than the 5 % the agreement aims at."""


FULL = Plan(rate_warmup_s=2.0, rate_window_s=10.0, sweep_window_s=4.0, max_trials=5, stability=0.20, rounds=3)
QUICK = Plan(rate_warmup_s=1.0, rate_window_s=4.0, sweep_window_s=2.0, max_trials=4, stability=0.30, rounds=1)
MIN_WINDOW_S = 2.0
"""Shorter perf_analyzer windows rarely settle on a shared box."""


# --- the floor: a minimal grpcio loop, run as a subprocess of this script ------------------------------------------


def floor_client(argv: list[str]) -> int:
    """Blocking unary ModelInfer calls with one pre-serialized request, paced at a constant rate (``--rate``) or
    from N threads in closed loops (``--concurrency``, over one shared channel); writes the measured window (unix
    seconds), the requests completed in it and their latencies' p50/p99/mean as JSON."""
    import threading

    import grpc
    from tritonclient.grpc import service_pb2

    parser = argparse.ArgumentParser(prog=f"loadgen_overhead.py {FLOOR_COMMAND}")
    parser.add_argument("--target", required=True)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=float)
    load.add_argument("--concurrency", type=int)
    parser.add_argument("--warmup-s", type=float, required=True)
    parser.add_argument("--window-s", type=float, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)

    tensor = np.random.default_rng(0).random(INPUT_SHAPE, dtype=np.float32)
    request = service_pb2.ModelInferRequest(
        model_name=TINY,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=INPUT_SHAPE)],
        raw_input_contents=[tensor.tobytes()],
    ).SerializeToString()
    limit = 64 * 1024 * 1024
    channel = grpc.insecure_channel(
        args.target, options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    )
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=None,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )
    start_ns = time.perf_counter_ns()
    unix_offset_s = time.time() - start_ns / 1e9
    window_start_ns = start_ns + round(args.warmup_s * 1e9)
    window_end_ns = window_start_ns + round(args.window_s * 1e9)
    late = 0
    latencies_us: list[float] = []

    def paced() -> None:
        nonlocal late
        period_ns = round(1e9 / args.rate)
        intended_ns = start_ns
        while intended_ns < window_end_ns:
            now_ns = time.perf_counter_ns()
            if now_ns < intended_ns:
                time.sleep((intended_ns - now_ns) / 1e9)
            elif now_ns - intended_ns > 1_000_000 and intended_ns >= window_start_ns:
                late += 1  # the previous call overran its slot: this one leaves more than 1 ms late
            infer(request, timeout=30.0)
            done_ns = time.perf_counter_ns()
            if window_start_ns <= done_ns < window_end_ns:
                latencies_us.append((done_ns - intended_ns) / 1000)
            intended_ns += period_ns

    def closed_loop() -> None:
        while (sent_ns := time.perf_counter_ns()) < window_end_ns:
            infer(request, timeout=30.0)
            done_ns = time.perf_counter_ns()
            if window_start_ns <= done_ns < window_end_ns:
                latencies_us.append((done_ns - sent_ns) / 1000)  # list.append is atomic under the GIL

    if args.rate:
        paced()
    else:
        threads = [threading.Thread(target=closed_loop) for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    channel.close()
    args.json.write_text(json.dumps({
        "window_start_unix": unix_offset_s + window_start_ns / 1e9,
        "window_end_unix": unix_offset_s + window_end_ns / 1e9,
        "completed": len(latencies_us),
        "late_sends": late,
        **({f"p{q}_us": float(np.percentile(latencies_us, q)) for q in (50, 99)} if latencies_us else {}),
        "mean_us": float(np.mean(latencies_us)) if latencies_us else None,
    }), encoding="utf-8")
    return 0


# --- watching a load process: its CPU, the server's CPU and ModelStatistics over time ------------------------------


class ModelStatistics:
    """Cumulative success count, queue / compute / request nanoseconds and batch executions of the model, from the
    server."""

    FIELDS = ("count", "queue_ns", "compute_ns", "request_ns", "executions")

    def __init__(self, port: int) -> None:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._request = service_pb2.ModelStatisticsRequest(name=TINY)
        self.missed = 0
        self.last_error = ""

    def read(self) -> tuple[float, ...]:
        """The counters now; NaN for all of them when the server does not answer in time (a busy shared core),
        so that sample is left out of the statistics' series and the CPU series keeps its pace."""
        import grpc

        try:
            response = self._stub.ModelStatistics(self._request, timeout=STATISTICS_DEADLINE_S)
        except grpc.RpcError as error:
            self.missed += 1
            self.last_error = f"{error.code().name}: {error.details()}"
            return (float("nan"),) * len(self.FIELDS)
        model = response.model_stats[0]
        stats = model.inference_stats
        compute = stats.compute_input.ns + stats.compute_infer.ns + stats.compute_output.ns
        return stats.success.count, stats.queue.ns, compute, stats.success.ns, model.execution_count

    def close(self) -> None:
        self._channel.close()


class Samples:
    """Time series of cumulative counters; differenced over any interval by linear interpolation."""

    def __init__(self, rows: list[tuple[float, ...]], names: tuple[str, ...]) -> None:
        self.names = names
        self.table = np.array(rows, dtype=float).reshape(-1, len(names) + 1)

    def delta(self, name: str, start_unix: float, end_unix: float) -> float:
        times, values = self.table[:, 0], self.table[:, 1 + self.names.index(name)]
        answered = ~np.isnan(values)
        times, values = times[answered], values[answered]
        return float(np.interp(end_unix, times, values) - np.interp(start_unix, times, values))

    @property
    def span(self) -> tuple[float, float]:
        return float(self.table[0, 0]), float(self.table[-1, 0])


def run_watched(
    cmd: list[str], server: Server, stats: ModelStatistics, limit_s: float, what: str, check: bool = True
) -> tuple[Samples, str, int]:
    """Runs ``cmd`` on the client core, sampling its process tree's CPU, the server's CPU and the model's
    statistics every SAMPLE_PERIOD_S until it exits (bounded by ``limit_s``); returns them, its output and its
    exit status (``check``: a non-zero one ends the benchmark)."""
    print(f"{what} ...", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, preexec_fn=pinned(CLIENT_CORE), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = psutil.Process(proc.pid)
    rows = []
    deadline = time.monotonic() + limit_s
    last_client_s = 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        # A process that just exited reads as 0: keep its last reading so the series stays cumulative.
        last_client_s = max(last_client_s, tree_cpu_s(client))
        rows.append((time.time(), last_client_s, server.cpu_s(), *stats.read()))
        time.sleep(SAMPLE_PERIOD_S)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
        raise SystemExit(f"{what}: ran past its bound of {limit_s:.0f} s")
    output = proc.stdout.read()
    if check and proc.returncode != 0:
        sys.stderr.write(output[-3000:])
        raise SystemExit(f"{what}: failed ({proc.returncode}): {' '.join(cmd)}")
    return Samples(rows, ("client_cpu_s", "server_cpu_s", *ModelStatistics.FIELDS)), output, proc.returncode


@dataclass
class CpuCost:
    """One client's CPU per request over a measured interval."""

    name: str
    client_ms: float
    server_ms: float
    requests_per_s: float
    note: str


def cost_over(name: str, samples: Samples, start: float, end: float, requests: float, note: str) -> CpuCost:
    return CpuCost(
        name=name,
        client_ms=1000 * samples.delta("client_cpu_s", start, end) / requests,
        server_ms=1000 * samples.delta("server_cpu_s", start, end) / requests,
        requests_per_s=requests / (end - start),
        note=note,
    )


# --- the load generators --------------------------------------------------------------------------------------


def load_cmd(scenario: str, port: int, folder: Path, window_s: float, warmup_s: float) -> list[str]:
    return [sys.executable, "-m", "ipsbench.loadgen", scenario, "--target", f"127.0.0.1:{port}", "--model", TINY,
            "--payload", "fp32", "--duration", f"{window_s:g}s", "--warmup", f"{warmup_s:g}s",
            "--out", str(folder), "--log-level", "warning"]


def ipsbench_rate(
    server: Server, stats: ModelStatistics, out: Path, plan: Plan, rate: float
) -> tuple[CpuCost, Latency]:
    """``ipsbench-load rate`` at ``rate`` (constant arrivals): its CPU per request, and its service time (from
    the actual send, as perf_analyzer times) with the latency from the intended send time beside it."""
    folder = out / f"rate-{rate:g}"
    cmd = [*load_cmd("rate", server.port, folder, plan.rate_window_s, plan.rate_warmup_s),
           "--rate", f"{rate:g}", "--arrival", "constant"]
    samples, _, _ = run_watched(cmd, server, stats, 120 + plan.rate_window_s, f"ipsbench-load rate {rate:g}/s")
    step = json.loads((folder / "report.json").read_text(encoding="utf-8"))["steps"][0]
    start, end = step["window_start_unix"], step["window_end_unix"]
    completed = sum(step["window_requests"].values())
    cost = cost_over("ipsbench-load rate", samples, start, end, completed,
                     f"{step['open_loop']['late_sends']} late sends, self-reported CPU "
                     f"{step['client']['cpu_percent']}% of a core")
    service, intended = step["service_time_us"], step["latency_us"]
    latency = Latency(
        requests_per_s=step["requests_per_s"], p50_us=service["p50"], p99_us=service["p99"], mean_us=service["mean"],
        server_queue_compute_us=server_queue_compute_us(samples, start, end), server_request_us=None,
        from_intended=(intended["p50"], intended["p99"]),
    )
    return cost, latency


def floor_cost(server: Server, stats: ModelStatistics, out: Path, plan: Plan) -> CpuCost:
    path = out / "floor.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), FLOOR_COMMAND, "--target", f"127.0.0.1:{server.port}",
           "--rate", f"{RATE_PER_S:g}", "--warmup-s", f"{plan.rate_warmup_s:g}", "--window-s",
           f"{plan.rate_window_s:g}", "--json", str(path)]
    samples, _, _ = run_watched(cmd, server, stats, 60 + plan.rate_window_s, f"raw grpcio loop {RATE_PER_S:g}/s")
    floor = json.loads(path.read_text(encoding="utf-8"))
    return cost_over("raw grpcio loop (floor)", samples, floor["window_start_unix"], floor["window_end_unix"],
                     floor["completed"], f"{floor['late_sends']} late sends")


def floor_closed_loop(server: Server, stats: ModelStatistics, out: Path, plan: Plan, level: int) -> Latency:
    """The raw grpcio client at ``level`` threads in closed loops: what a minimal client sees at that
    concurrency, measured over as long as a sweep level reports (its last 3 windows)."""
    path = out / f"floor-c{level}.json"
    window_s = 3 * plan.sweep_window_s
    cmd = [sys.executable, str(Path(__file__).resolve()), FLOOR_COMMAND, "--target", f"127.0.0.1:{server.port}",
           "--concurrency", str(level), "--warmup-s", "1", "--window-s", f"{window_s:g}", "--json", str(path)]
    samples, _, _ = run_watched(cmd, server, stats, 60 + window_s, f"raw grpcio threads, concurrency {level}")
    floor = json.loads(path.read_text(encoding="utf-8"))
    start, end = floor["window_start_unix"], floor["window_end_unix"]
    return Latency(
        requests_per_s=floor["completed"] / (end - start), p50_us=floor["p50_us"], p99_us=floor["p99_us"],
        mean_us=floor["mean_us"], server_queue_compute_us=server_queue_compute_us(samples, start, end),
        server_request_us=None, server_batch=server_batch(samples, start, end),
    )


def find_perf_analyzer(option: str | None) -> list[str] | None:
    path = option or os.environ.get(PERF_ANALYZER_ENV) or shutil.which("perf_analyzer") or str(PERF_ANALYZER_SCRIPT)
    if not path or not Path(path).is_file():
        return None
    return [path] if os.access(path, os.X_OK) else ["bash", path]


def perf_analyzer_rate(
    pa: list[str], server: Server, stats: ModelStatistics, out: Path, plan: Plan, rate: float
) -> tuple[CpuCost | None, Latency | None]:
    """perf_analyzer at ``rate`` (constant arrivals): its CPU per request and its latency figures."""
    interval_ms = round(1000 * max(plan.rate_window_s / 4, MIN_WINDOW_S))
    path = out / f"perf_analyzer-rate-{rate:g}.csv"
    cmd = [*pa, "-m", TINY, "-u", f"127.0.0.1:{server.port}", "-i", "grpc", "--request-rate-range",
           f"{rate:g}", "--request-distribution", "constant", "-p", str(interval_ms), "--percentile=99",
           "-s", str(RATE_STABILITY_PERCENT), "-r", str(plan.max_trials), "-f", str(path)]
    samples, output, status = run_watched(cmd, server, stats, 240, f"perf_analyzer request rate {rate:g}/s",
                                          check=False)
    throughput = parse_throughput(output)
    first, last = samples.span
    start, end = first + PERF_ANALYZER_SETTLE_S, last - PERF_ANALYZER_TAIL_S
    if status != 0 or throughput is None or end - start < 1.0 or not path.exists():
        print(f"perf_analyzer at {rate:g}/s skipped (exit {status}, throughput {throughput}): {output[-600:]}")
        return None, None
    cost = cost_over("perf_analyzer (C++)", samples, start, end, throughput * (end - start),
                     f"CPU from {PERF_ANALYZER_SETTLE_S:g} s after start to {PERF_ANALYZER_TAIL_S:g} s before exit, "
                     "/ its reported throughput")
    rows = read_perf_analyzer_csv(path, "Request Rate")
    return cost, next(iter(rows.values()), None)


def read_perf_analyzer_csv(path: Path, key: str) -> dict[float, Latency]:
    """perf_analyzer's CSV rows by ``key`` (its load column): throughput, p50/p99, mean and queue + compute."""
    results = {}
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            queue_compute = sum(float(row[k]) for k in ("Server Queue", "Server Compute Input",
                                                        "Server Compute Infer", "Server Compute Output"))
            results[float(row[key])] = Latency(
                requests_per_s=float(row["Inferences/Second"]), p50_us=float(row["p50 latency"]),
                p99_us=float(row["p99 latency"]), mean_us=sum(float(row[k]) for k in PA_MEAN_PARTS),
                server_queue_compute_us=queue_compute, server_request_us=None,
            )
    return results


def parse_throughput(output: str) -> float | None:
    values = [float(line.split("Throughput:")[1].split()[0]) for line in output.splitlines() if "Throughput:" in line]
    return values[-1] if values else None


@dataclass
class Latency:
    """One tool's latency figures at one concurrency, microseconds; server figures per request."""

    requests_per_s: float
    p50_us: float
    p99_us: float
    mean_us: float
    server_queue_compute_us: float | None
    server_request_us: float | None
    stable: bool = True
    from_intended: tuple[float, float] | None = None
    """ipsbench-load's open loop: p50 and p99 from each request's intended send time (its headline latency)."""
    server_batch: float | None = None
    """The average batch the server's dynamic batcher formed meanwhile (requests per execution)."""
    spread: tuple[tuple[float, float], tuple[float, float]] | None = None
    """Over several rounds: (lowest, highest) p50 and p99 among them."""


def median_latency(rounds: list[Latency]) -> Latency:
    """Each figure's median over the rounds, with the rounds' p50 and p99 ranges."""

    def median(name: str) -> float | None:
        values = [getattr(r, name) for r in rounds if getattr(r, name) is not None]
        return float(np.median(values)) if values else None

    intended = [r.from_intended for r in rounds if r.from_intended]
    return Latency(
        requests_per_s=median("requests_per_s"), p50_us=median("p50_us"), p99_us=median("p99_us"),
        mean_us=median("mean_us"), server_queue_compute_us=median("server_queue_compute_us"),
        server_request_us=median("server_request_us"), stable=all(r.stable for r in rounds),
        from_intended=tuple(float(v) for v in np.median(intended, axis=0)) if intended else None,
        server_batch=median("server_batch"),
        spread=((min(r.p50_us for r in rounds), max(r.p50_us for r in rounds)),
                (min(r.p99_us for r in rounds), max(r.p99_us for r in rounds))),
    )


def median_cost(rounds: list[CpuCost]) -> CpuCost:
    """The round with the median CPU per request, its note saying the range over the rounds."""
    ordered = sorted(rounds, key=lambda c: c.client_ms)
    middle = ordered[len(ordered) // 2]
    if len(rounds) == 1:
        return middle
    spread = f"median of {len(rounds)} rounds ({ordered[0].client_ms:.3f}-{ordered[-1].client_ms:.3f}); "
    return CpuCost(middle.name, middle.client_ms, middle.server_ms, middle.requests_per_s, spread + middle.note)


def server_batch(samples: Samples, start: float, end: float) -> float | None:
    executions = samples.delta("executions", start, end)
    return samples.delta("count", start, end) / executions if executions else None


def server_queue_compute_us(samples: Samples, start: float, end: float) -> float | None:
    """The server's queue + compute time per request over an interval, from its statistics."""
    served = samples.delta("count", start, end)
    if not served:
        return None
    return (samples.delta("queue_ns", start, end) + samples.delta("compute_ns", start, end)) / served / 1000


def ipsbench_sweep(server: Server, stats: ModelStatistics, out: Path, plan: Plan) -> dict[int, Latency]:
    folder = out / "sweep"
    cmd = [*load_cmd("sweep", server.port, folder, plan.sweep_window_s, 1.0),
           "--concurrency", ",".join(map(str, CONCURRENCY_LEVELS)), "--stability", f"{plan.stability:g}",
           "--max-trials", str(plan.max_trials)]
    limit = 120 + len(CONCURRENCY_LEVELS) * plan.max_trials * (plan.sweep_window_s + 2)
    what = f"ipsbench-load sweep --concurrency {','.join(map(str, CONCURRENCY_LEVELS))}"
    # An UNSTABLE level exits non-zero and still reports its figures, flagged in the table.
    samples, output, status = run_watched(cmd, server, stats, limit, what, check=False)
    report = folder / "report.json"
    if not report.exists():
        sys.stderr.write(output[-3000:])
        raise SystemExit(f"{what}: failed ({status}) without a report")
    steps = json.loads(report.read_text(encoding="utf-8"))["steps"]
    results = {}
    for step in steps:
        start, end = step["window_start_unix"], step["window_end_unix"]
        served = samples.delta("count", start, end)
        latency = step["latency_us"]
        results[step["concurrency"]] = Latency(
            requests_per_s=step["requests_per_s"], p50_us=latency["p50"], p99_us=latency["p99"],
            mean_us=latency["mean"], server_queue_compute_us=server_queue_compute_us(samples, start, end),
            server_request_us=samples.delta("request_ns", start, end) / served / 1000 if served else None,
            server_batch=server_batch(samples, start, end),
            stable=(step["stability"] or {}).get("stable", True),
        )
    return results


def perf_analyzer_sweep(
    pa: list[str], server: Server, stats: ModelStatistics, out: Path, plan: Plan
) -> dict[int, Latency]:
    """perf_analyzer at each concurrency level, one invocation per level so that a level that never settles
    (it then exits without figures) costs only that level; such a level is tried once more. The server's
    average batch is read over the run (from its settling to its exit)."""
    results = {}
    for level in CONCURRENCY_LEVELS:
        path = out / f"perf_analyzer-c{level}.csv"
        cmd = [*pa, "-m", TINY, "-u", f"127.0.0.1:{server.port}", "-i", "grpc",
               "--concurrency-range", str(level), "--percentile=99",
               "-p", str(round(1000 * plan.sweep_window_s)), "-s", f"{100 * plan.stability:g}",
               "-r", str(plan.max_trials), "-f", str(path)]
        for attempt in (1, 2):
            samples, output, status = run_watched(
                cmd, server, stats, 60 + plan.max_trials * (plan.sweep_window_s + 2),
                f"perf_analyzer --concurrency-range {level} (try {attempt})", check=False)
            if status == 0 and path.exists():
                break
            print(f"perf_analyzer at concurrency {level} failed ({status}): "
                  f"{output.strip().splitlines()[-1][:300] if output.strip() else ''}")
        else:
            continue
        first, last = samples.span
        for row in read_perf_analyzer_csv(path, "Concurrency").values():
            row.server_batch = server_batch(samples, first + PERF_ANALYZER_SETTLE_S, last - PERF_ANALYZER_TAIL_S)
            results[level] = row
    return results


# --- report ---------------------------------------------------------------------------------------------------


def cost_lines(costs: list[CpuCost]) -> list[str]:
    floor = next(c for c in costs if c.name.startswith("raw grpcio"))
    pa = next((c for c in costs if c.name.startswith("perf_analyzer")), None)
    lines = [f"(a) client CPU per request, {RATE_PER_S:g} req/s constant open loop, 1x3x224x224 FP32 (602 KB) "
             f"requests; CPU time (user+sys, process tree, psutil every {SAMPLE_PERIOD_S:g} s) differenced over "
             "the measured window, start-up and warm-up excluded, / requests completed in it",
             f"    {'client':<26}{'client ms/req':>14}{'vs floor':>10}{'vs p_a':>8}{'server ms/req':>15}"
             f"{'req/s':>8}   note"]
    for c in costs:
        vs_pa = f"{c.client_ms / pa.client_ms:8.2f}" if pa else f"{'-':>8}"
        lines.append(f"    {c.name:<26}{c.client_ms:14.3f}{c.client_ms / floor.client_ms:10.2f}{vs_pa}"
                     f"{c.server_ms:15.3f}{c.requests_per_s:8.1f}   {c.note}")
    ips = costs[0]
    verdict = "met" if ips.client_ms <= AIM_CPU_MS else "NOT met"
    lines.append(f"    aim: ipsbench-load <= {AIM_CPU_MS} ms of a core per request (perf_analyzer's cost here): "
                 f"{ips.client_ms:.3f} ms, {verdict}")
    return lines


def ms(value: float | None) -> str:
    return f"{value / 1000:.3f}" if value is not None else "-"


def spread(figures: Latency) -> str:
    """The rounds' p50 and p99 ranges, ms (blank for one round)."""
    if figures.spread is None or figures.spread[0][0] == figures.spread[0][1]:
        return f"{'':>29}"
    (p50_low, p50_high), (p99_low, p99_high) = figures.spread
    return f"{ms(p50_low) + '-' + ms(p50_high):>14}{ms(p99_low) + '-' + ms(p99_high):>15}"


def ratio_line(label: str, a: Latency | None, b: Latency | None) -> str:
    if a is None or b is None:
        return f"    {label:>10} perf_analyzer figures missing"
    ratios = {"p50": a.p50_us / b.p50_us, "p99": a.p99_us / b.p99_us, "mean": a.mean_us / b.mean_us,
              "req/s": a.requests_per_s / b.requests_per_s}
    within = all(abs(ratios[k] - 1) <= AIM_AGREEMENT for k in ("p50", "p99"))
    return (f"    {label:>10} " + "  ".join(f"{k} {r:.3f}" for k, r in ratios.items())
            + f"   p50/p99 {'within' if within else 'OUTSIDE'} {AIM_AGREEMENT:.0%}")


def equal_load_lines(ips: dict[float, Latency], pa: dict[float, Latency]) -> list[str]:
    lines = ["(b1) latency agreement at equal load: both open loop, constant arrivals at the same request rate, "
             "back to back; ipsbench-load's service time (from the actual send, as perf_analyzer times) beside "
             "perf_analyzer's latency; ms",
             f"    {'req/s':>6} {'tool':<15}{'req/s':>8}{'p50':>8}{'p99':>8}{'mean':>8}{'srv q+c':>9}"
             f"{'p50 range':>14}{'p99 range':>15}   from intended send (ipsbench-load): p50, p99"]
    for rate in sorted(ips):
        for tool, figures in (("ipsbench-load", ips.get(rate)), ("perf_analyzer", pa.get(rate))):
            if figures is None:
                continue
            intended = (f"   {ms(figures.from_intended[0])}, {ms(figures.from_intended[1])}"
                        if figures.from_intended else "")
            lines.append(f"    {rate:>6g} {tool:<15}{figures.requests_per_s:8.1f}{ms(figures.p50_us):>8}"
                         f"{ms(figures.p99_us):>8}{ms(figures.mean_us):>8}{ms(figures.server_queue_compute_us):>9}"
                         f"{spread(figures)}{intended}")
    lines.append(f"    ratios ipsbench-load / perf_analyzer (aim within {AIM_AGREEMENT:.0%}):")
    lines += [ratio_line(f"{rate:g}/s", ips.get(rate), pa.get(rate)) for rate in sorted(ips)]
    return lines


def equal_concurrency_lines(
    ips: dict[int, Latency], pa: dict[int, Latency], floor: dict[int, Latency]
) -> list[str]:
    lines = ["(b2) latency agreement at equal concurrency (closed loop, back to back, same server, the same window "
             "length and stability tolerance); ms",
             f"    {'conc':>6} {'tool':<15}{'req/s':>8}{'p50':>8}{'p99':>8}{'mean':>8}{'srv q+c':>9}"
             f"{'srv req':>9}{'mean-q+c':>10}{'mean*req/s':>12}{'batch':>7}"
             f"{'p50 range':>14}{'p99 range':>15}"]
    for level in CONCURRENCY_LEVELS:
        for tool, figures in (("ipsbench-load", ips.get(level)), ("perf_analyzer", pa.get(level)),
                              ("raw grpcio", floor.get(level))):
            if figures is None:
                continue
            over = figures.mean_us - figures.server_queue_compute_us if figures.server_queue_compute_us else None
            flag = "" if figures.stable else "  UNSTABLE"
            lines.append(f"    {level:>6} {tool:<15}{figures.requests_per_s:8.1f}{ms(figures.p50_us):>8}"
                         f"{ms(figures.p99_us):>8}{ms(figures.mean_us):>8}{ms(figures.server_queue_compute_us):>9}"
                         f"{ms(figures.server_request_us):>9}{ms(over):>10}"
                         f"{figures.mean_us / 1e6 * figures.requests_per_s:12.2f}"
                         f"{figures.server_batch or float('nan'):7.2f}{spread(figures)}{flag}")
    lines.append("    srv q+c: the server's queue + compute per request (ModelStatistics; for ipsbench-load "
                 "differenced over its measured windows, for perf_analyzer its own CSV); srv req: the server's whole "
                 "request time; mean-q+c: what the client, gRPC and the network add; mean*req/s: Little's law, "
                 "the requests in flight each tool's own figures imply (should be the concurrency); batch: the "
                 "server's average batch meanwhile; raw grpcio: N threads of blocking calls over one channel, "
                 "the minimal client, as a third opinion")
    lines.append(f"    ratios ipsbench-load / perf_analyzer (aim within {AIM_AGREEMENT:.0%}; where the server is "
                 "saturated, the tools' throughputs can differ, and latency follows concurrency / throughput):")
    lines += [ratio_line(f"c={level}", ips.get(level), pa.get(level)) for level in CONCURRENCY_LEVELS]
    return lines


def medians(rounds: dict) -> dict:
    return {key: median_latency(values) for key, values in rounds.items() if values}


# --- main -----------------------------------------------------------------------------------------------------


def measure_round(
    pa: list[str] | None, server: Server, stats: ModelStatistics, out: Path, plan: Plan,
    costs: dict[str, list[CpuCost]], ips_rate: dict, pa_rate: dict, ips_conc: dict, pa_conc: dict,
    floor_conc: dict,
) -> None:
    """One round of every measurement, each tool's figures appended to its lists."""
    out.mkdir(parents=True, exist_ok=True)

    def note_cost(cost: CpuCost | None) -> None:
        if cost is not None:
            costs.setdefault(cost.name, []).append(cost)

    cost, latency = ipsbench_rate(server, stats, out, plan, RATE_PER_S)
    note_cost(cost)
    ips_rate.setdefault(RATE_PER_S, []).append(latency)
    note_cost(floor_cost(server, stats, out, plan))
    if pa:
        for rate in (RATE_PER_S, HIGH_RATE_PER_S):
            cost, latency = perf_analyzer_rate(pa, server, stats, out, plan, rate)
            if rate == RATE_PER_S:
                note_cost(cost)
            if latency is not None:
                pa_rate.setdefault(rate, []).append(latency)
        _, latency = ipsbench_rate(server, stats, out, plan, HIGH_RATE_PER_S)
        ips_rate.setdefault(HIGH_RATE_PER_S, []).append(latency)
        for level, latency in perf_analyzer_sweep(pa, server, stats, out, plan).items():
            pa_conc.setdefault(level, []).append(latency)
    for level, latency in ipsbench_sweep(server, stats, out, plan).items():
        ips_conc.setdefault(level, []).append(latency)
    for level in CONCURRENCY_LEVELS:
        floor_conc.setdefault(level, []).append(floor_closed_loop(server, stats, out, plan, level))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FLOOR_COMMAND]:
        return floor_client(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, a few seconds per part (about 1.5 min)")
    parser.add_argument("--perf-analyzer", metavar="PATH",
                        help=f"perf_analyzer binary or wrapper script (default: ${PERF_ANALYZER_ENV}, then PATH)")
    parser.add_argument("--keep", type=Path, help="copy reports and logs into this folder instead of discarding")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default 3; 1 with --quick)")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores (server on core 0, load generator on core 1)")
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    pa = find_perf_analyzer(args.perf_analyzer)
    if pa is None:
        print(f"perf_analyzer parts skipped: not found (give --perf-analyzer PATH or set {PERF_ANALYZER_ENV})")
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="ipsbench-loadgen-overhead-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        repo = Path(tmp) / "models"
        repo.mkdir()
        write_tiny_model(repo)
        server = Server(repo, out / "server.log")
        stats = ModelStatistics(server.port)
        costs: dict[str, list[CpuCost]] = {}
        ips_rate: dict[float, list[Latency]] = {}
        pa_rate: dict[float, list[Latency]] = {}
        ips_conc: dict[int, list[Latency]] = {}
        pa_conc: dict[int, list[Latency]] = {}
        floor_conc: dict[int, list[Latency]] = {}
        try:
            for number in range(1, plan.rounds + 1):
                if plan.rounds > 1:
                    print(f"round {number} of {plan.rounds}", flush=True)
                measure_round(pa, server, stats, out / f"round{number}", plan, costs, ips_rate, pa_rate, ips_conc,
                              pa_conc, floor_conc)
        finally:
            stats.close()
            server.stop()

    lines = [f"ipsbench-load's own cost and agreement: server on core {SERVER_CORE}, load generator on core "
             f"{CLIENT_CORE}, model {TINY} (negligible compute), one load-generating process each"]
    if plan.rounds > 1:
        lines.append(f"every figure: the median of {plan.rounds} rounds, the tools alternating within each round")
    lines += cost_lines([median_cost(rounds) for rounds in costs.values()])
    if pa:
        lines += equal_load_lines(medians(ips_rate), medians(pa_rate))
    lines += equal_concurrency_lines(medians(ips_conc), medians(pa_conc), medians(floor_conc))
    if stats.missed:
        lines.append(f"    ModelStatistics did not answer within {STATISTICS_DEADLINE_S:g} s {stats.missed} times "
                     f"({stats.last_error}); those samples were left out")
    # Other work on either core shows as noise in every figure above; the load average says how much there was.
    lines.append(f"load average (1 min) at start {load_at_start:.1f}, at end {os.getloadavg()[0]:.1f} on "
                 f"{os.cpu_count()} cores")
    lines.append(f"run took {time.monotonic() - started:.0f} s; reproduce with: .venv/bin/python "
                 f"benchmarks/loadgen_overhead.py{' --quick' if args.quick else ''}"
                 f"{f' --rounds {args.rounds}' if args.rounds else ''} --perf-analyzer PATH")
    print("\n" + "=" * 110 + "\n" + "\n".join(lines) + "\n" + "=" * 110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
