"""Bounded soak of ipsbench-serve (matrix rows F21, F22): open-loop load at ~70 % of measured capacity, with faults.

1. Starts ipsbench-serve on a model repository (by default resnet18 at 64x64, exported into a temporary folder).
2. Measures capacity: a short closed-loop ``ipsbench-load sweep``; capacity = the best step's requests/sec.
3. Runs ``ipsbench-load rate`` at ``--load-fraction`` (0.7) of it for ``--duration``, in steps of ``--step``, while
   a fault injector mixes in bad requests (wrong dtype, unknown model, oversize message, unparseable bytes, an
   output named 10,000 times, a 100 KB input name), client-side cancels, clients in a separate process killed with
   SIGKILL mid-request, and every minute a burst of 48 concurrent 6 MiB requests against ``--max-inflight-mb 64``.
4. Samples the server's resident memory and open file descriptors (/proc/<pid>/status, /proc/<pid>/fd) every
   ``--sample-interval``.

Prints and writes ``soak.json``: restarts (must be 0: the server process is the same one, alive and ready at the
end), the accounting identity per step, injected faults by class with the status codes they got (each class must
get its expected code), requests lost (issued but never accounted: must be 0), RSS growth after warm-up (the
median RSS of the last third over that of the first third, bound ``--rss-bound-mb``, 100 MB), the peak RSS
(VmHWM, bursts included), RSS after each burst, and the fd count first/last.
Exits 0 when every check holds, 1 otherwise.

Usage: .venv/bin/python benchmarks/soak.py [--duration 10m] [--model-repository DIR --model NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ipsbench.loadgen.report.schema import COUNT_FIELDS
from ipsbench.server.durations import parse_duration_s

REPO_ROOT = Path(__file__).resolve().parent.parent

GRPC_LINE = re.compile(r"gRPC listening on (?P<host>[^\s]+):(?P<port>\d+)$")
READY_LINE = "ipsbench-serve: ready"
SERVER_MAX_MESSAGE_MB = 8
"""The soak's server message limit: an oversize request only needs to exceed this."""
SERVER_MAX_INFLIGHT_MB = 64
"""The soak's bound on request bytes held at once: a burst exceeds it."""
FAULT_INTERVAL_S = 0.25
KILL_INTERVAL_S = 10.0
BURST_INTERVAL_S = 60.0
BURST_SIZE = 48
BURST_REQUEST_MB = 6
"""Each burst: BURST_SIZE concurrent requests of this many MiB (a shape the model refuses), 288 MiB offered at once
to a server that holds at most SERVER_MAX_INFLIGHT_MB: most are refused RESOURCE_EXHAUSTED, the rest
INVALID_ARGUMENT."""
BURST_CODES = {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}
END_SAMPLES = 3
"""The soak's end level: the median of this many last RSS samples."""
EXPECTED_CODES = {
    "wrong_dtype": {"INVALID_ARGUMENT"},
    "unknown_model": {"NOT_FOUND"},
    "oversize": {"RESOURCE_EXHAUSTED"},
    "unparseable": {"INTERNAL", "UNKNOWN"},
    "cancel": {"CANCELLED", "OK"},  # a cancel that arrives after the answer leaves it OK
    "repeated_output": {"INVALID_ARGUMENT"},
    "huge_name": {"INVALID_ARGUMENT"},
}
"""Status codes each injected fault class may get (``unparseable``: gRPC's own answer to bytes that do not parse)."""
KILLED_CLIENT = """
import sys, grpc
from tritonclient.grpc import service_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                            response_deserializer=None)
request = open(sys.argv[2], "rb").read()
futures = [infer.future(request, timeout=60) for _ in range(16)]
print("sent", flush=True)
for future in futures:
    future.result()
"""


# -- the server ------------------------------------------------------------------------------------------------


class Server:
    """``python -m ipsbench.server`` on free ports, pinned to ``cores``; its log in ``log_path``."""

    def __init__(self, repository: Path, log_path: Path, cores: set[int] | None) -> None:
        cmd = [sys.executable, "-m", "ipsbench.server", "--model-repository", str(repository), "--grpc-port", "0",
               "--metrics-port", "0", "--grpc-max-message-mb", str(SERVER_MAX_MESSAGE_MB),
               "--max-inflight-mb", str(SERVER_MAX_INFLIGHT_MB)]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
            )
        self.pid = self.process.pid
        self.port = self._wait_ready()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self, timeout_s: float = 300.0) -> int:
        deadline = time.monotonic() + timeout_s
        port = 0
        for line in self.process.stdout:
            if match := GRPC_LINE.search(line.strip()):
                port = int(match["port"])
            if line.strip() == READY_LINE and port:
                threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep the pipe drained
                return port
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"the server did not become ready; see {self.log_path}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        with grpc.insecure_channel(self.url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                return stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5).ready
            except grpc.RpcError:
                return False

    def stop(self) -> int | None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the load generator ----------------------------------------------------------------------------------------


def run_load(args: list[str], out: Path, cores: set[int] | None, timeout_s: float) -> tuple[int, dict, str]:
    """``python -m ipsbench.loadgen ARGS --out OUT``; (exit code, report.json, stderr tail)."""
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.loadgen", *args, "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout_s, preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return result.returncode, report, result.stderr[-3000:]


def measure_capacity(server: Server, model: str, out: Path, cores: set[int] | None) -> float:
    """Requests/sec of the best step of a short closed-loop sweep."""
    code, report, stderr = run_load(
        ["sweep", "--target", server.url, "--model", model, "--concurrency", "1,2,4,8", "--warmup", "1s",
         "--duration", "3s", "--drain", "5s", "--max-trials", "3"], out, cores, timeout_s=600,
    )
    rates = [step["requests_per_s"] or 0.0 for step in report.get("steps", [])]
    if not rates or max(rates) <= 0:
        raise RuntimeError(f"capacity sweep failed (exit {code}):\n{stderr}")
    return max(rates)


# -- faults ----------------------------------------------------------------------------------------------------


class FaultInjector:
    """Bad requests, cancels and killed client processes, on their own channels, until stopped."""

    def __init__(self, server: Server, model: str, good_request: bytes, scratch: Path, seed: int = 0) -> None:
        self.server = server
        self.model = model
        self.good_request = good_request
        self.request_file = scratch / "good-request.bin"
        self.request_file.write_bytes(good_request)
        self.rng = random.Random(seed)
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.killed_clients = 0
        self._stop = threading.Event()
        self.burst_rss_mb: list[float] = []
        """The server's RSS right after each burst."""
        self._threads = [threading.Thread(target=self._bad_requests, daemon=True),
                         threading.Thread(target=self._killed_clients, daemon=True),
                         threading.Thread(target=self._bursts, daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _bad_requests(self) -> None:
        parsed = service_pb2.ModelInferRequest.FromString(self.good_request)
        with grpc.insecure_channel(self.server.url) as channel:
            raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                      response_deserializer=None)
            while not self._stop.wait(FAULT_INTERVAL_S):
                kind = self.rng.choice(sorted(EXPECTED_CODES))
                payload = self._payload(kind, parsed)
                try:
                    if kind == "cancel":
                        future = raw.future(payload, timeout=30)
                        time.sleep(0.005)
                        future.cancel()
                        future.result(timeout=30)
                    else:
                        raw(payload, timeout=30)
                    code = "OK"
                except grpc.FutureCancelledError:
                    code = "CANCELLED"
                except grpc.RpcError as error:
                    code = error.code().name
                self.codes[kind][code] += 1

    def _payload(self, kind: str, good: service_pb2.ModelInferRequest) -> bytes:
        request = service_pb2.ModelInferRequest()
        request.CopyFrom(good)
        if kind == "wrong_dtype":
            request.inputs[0].datatype = "FP16"
            request.raw_input_contents[0] = request.raw_input_contents[0][: len(request.raw_input_contents[0]) // 2]
        elif kind == "unknown_model":
            request.model_name = f"no-such-model-{self.rng.randrange(10**6)}"
        elif kind == "oversize":
            request.raw_input_contents[0] = bytes(SERVER_MAX_MESSAGE_MB * 1024 * 1024 + 1024)
        elif kind == "unparseable":
            return b"\xff\xff\xff\xff\x0f" + self.rng.randbytes(64)
        elif kind == "repeated_output":
            for _ in range(10_000):
                request.outputs.add(name="output")
        elif kind == "huge_name":
            request.inputs[0].name = "n" * 100_000
        return request.SerializeToString()

    def _bursts(self) -> None:
        """Every BURST_INTERVAL_S, BURST_SIZE large requests at once, each on its own channel."""
        parsed = service_pb2.ModelInferRequest.FromString(self.good_request)
        request = service_pb2.ModelInferRequest()
        request.CopyFrom(parsed)
        request.raw_input_contents[0] = bytes(BURST_REQUEST_MB * 1024 * 1024)  # a byte size the shape refuses
        payload = request.SerializeToString()
        options = [("grpc.max_send_message_length", SERVER_MAX_MESSAGE_MB * 1024 * 1024)]

        def one() -> None:
            with grpc.insecure_channel(self.server.url, options=options) as channel:
                call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                           response_deserializer=None)
                try:
                    call(payload, timeout=60)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
            self.codes["burst"][code] += 1

        while not self._stop.wait(BURST_INTERVAL_S):
            threads = [threading.Thread(target=one) for _ in range(BURST_SIZE)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            self.burst_rss_mb.append(rss_mb(self.server.pid))

    def _killed_clients(self) -> None:
        while not self._stop.wait(KILL_INTERVAL_S):
            client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, self.server.url, str(self.request_file)],
                                      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
            try:
                client.stdout.readline()
                time.sleep(0.05)
            finally:
                client.send_signal(signal.SIGKILL)
                client.wait(timeout=30)
                client.stdout.close()
            self.killed_clients += 1


class Sampler:
    """The server's RSS (MB) and open fds every ``interval_s`` seconds, with the time since the load started."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._take()

    def _take(self) -> None:
        try:
            self.samples.append({"t_s": round(time.monotonic() - self._started, 1),
                                 "rss_mb": round(rss_mb(self.pid), 1), "fds": open_fds(self.pid)})
        except (OSError, RuntimeError):
            self.samples.append({"t_s": round(time.monotonic() - self._started, 1), "rss_mb": None, "fds": None})

    def _run(self) -> None:
        while True:
            self._take()
            if self._stop.wait(self.interval_s):
                return


# -- the soak --------------------------------------------------------------------------------------------------


def export_default_repository(folder: Path) -> tuple[Path, str]:
    cmd = [sys.executable, "-m", "ipsbench.export", "resnet18", "--image-size", "64", "--max-batch-size", "8",
           "--name", "resnet18", "--out", str(folder)]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, timeout=900)
    return folder, "resnet18"


def good_request_bytes(server: Server, model: str) -> bytes:
    """One valid request, built from the model's metadata (FP32, batch 1 where the model batches)."""
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model), timeout=30)
    tensor = metadata.inputs[0]
    shape = [1 if d < 0 else int(d) for d in tensor.shape]
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
    array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


def summarize(samples: list[dict], warmup_s: float, bound_mb: float) -> dict:
    measured = [s for s in samples if s["rss_mb"] is not None]
    after = [s for s in measured if s["t_s"] >= warmup_s] or measured[-1:]
    baseline = after[0]["rss_mb"] if after else None
    # Growth is a rising level: the median RSS of the soak's last third over that of its first third after
    # warm-up. Both thirds hold the same bursts, whose transient peaks (rss_mb_max, peak_rss_mb, the RSS after each
    # burst) cancel out; a leak does not.
    third = max(1, len(after) // 3)
    end = statistics.median(s["rss_mb"] for s in after[-END_SAMPLES:]) if after else None
    growth = (statistics.median(s["rss_mb"] for s in after[-third:])
              - statistics.median(s["rss_mb"] for s in after[:third])) if after else None
    return {
        "rss_mb_first": measured[0]["rss_mb"] if measured else None,
        "rss_mb_after_warmup": baseline,
        "rss_mb_last": measured[-1]["rss_mb"] if measured else None,
        "rss_mb_end": round(end, 1) if end is not None else None,
        "rss_mb_max": max((s["rss_mb"] for s in measured), default=None),
        "rss_growth_after_warmup_mb": round(growth, 1) if growth is not None else None,
        "rss_growth_bound_mb": bound_mb,
        "fds_first": measured[0]["fds"] if measured else None,
        "fds_last": measured[-1]["fds"] if measured else None,
        "fds_median": statistics.median(s["fds"] for s in measured) if measured else None,
    }


def run_soak(options: argparse.Namespace) -> dict:
    cores = os.sched_getaffinity(0)
    server_cores, load_cores = ({min(cores)}, cores - {min(cores)}) if len(cores) >= 2 else (None, None)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ipsbench-soak-") as scratch:
        scratch = Path(scratch)
        if options.model_repository:
            repository, model = options.model_repository, options.model
        else:
            print("exporting resnet18 (64x64) for the soak ...", flush=True)
            repository, model = export_default_repository(scratch / "models")
        server = Server(repository, out / "server.log", server_cores)
        try:
            print(f"server pid {server.pid} on {server.url}; measuring capacity ...", flush=True)
            capacity = measure_capacity(server, model, out / "capacity", load_cores)
            rate = round(options.load_fraction * capacity, 2)
            steps = max(1, round(options.duration / options.step))
            step_s = options.duration / steps
            print(f"capacity {capacity:.1f} requests/s; soak at {rate} requests/s for {options.duration:g} s "
                  f"({steps} steps of {step_s:g} s)", flush=True)
            injector = FaultInjector(server, model, good_request_bytes(server, model), scratch)
            sampler = Sampler(server.pid, options.sample_interval)
            sampler.start()
            injector.start()
            try:
                code, report, stderr = run_load(
                    ["rate", "--target", server.url, "--model", model, "--rate", ",".join([str(rate)] * steps),
                     "--warmup", "0s", "--duration", f"{step_s}s", "--drain", "10s", "--max-error-rate", "1"],
                    out / "load", load_cores, timeout_s=options.duration * 2 + 600,
                )
            finally:
                injector.stop()
                sampler.stop()
            same_process_alive = server.alive()
            ready_at_end = same_process_alive and server.ready()
            peak_mb = peak_rss_mb(server.pid) if same_process_alive else None
        finally:
            exit_code = server.stop()
    memory = summarize(sampler.samples, min(options.warmup, options.duration / 2), options.rss_bound_mb)
    step_rows = [
        {"index": s["index"], **{name: s[name] for name in COUNT_FIELDS},
         "identity_holds": s["issued"] == sum(s[name] for name in COUNT_FIELDS[1:]),
         "requests_per_s": s["requests_per_s"], "p99_ms": (s["latency_us"] or {}).get("p99", 0) / 1000}
        for s in report.get("steps", [])
    ]
    faults = {kind: dict(codes) for kind, codes in injector.codes.items()}
    expected = {**EXPECTED_CODES, "burst": BURST_CODES}
    unexpected = {kind: {c: n for c, n in codes.items() if c not in expected[kind]}
                  for kind, codes in faults.items()}
    unexpected = {kind: codes for kind, codes in unexpected.items() if codes}
    checks = {
        "no_restart": same_process_alive and ready_at_end,
        "identity_every_step": bool(step_rows) and all(row["identity_holds"] for row in step_rows),
        "bursts_ran": bool(injector.burst_rss_mb) or options.duration < BURST_INTERVAL_S,
        "fault_codes_as_injected": not unexpected,
        "rss_growth_within_bound": memory["rss_growth_after_warmup_mb"] is not None
        and memory["rss_growth_after_warmup_mb"] <= options.rss_bound_mb,
        "fds_flat": memory["fds_first"] is not None and memory["fds_last"] <= memory["fds_first"] + 16,
    }
    return {
        "duration_s": options.duration,
        "model": model,
        "capacity_requests_per_s": capacity,
        "rate_requests_per_s": rate,
        "restarts": 0 if checks["no_restart"] else 1,
        "server_exit_code": exit_code,
        "load_exit_code": code,
        "steps": step_rows,
        "faults": faults,
        "unexpected_fault_codes": unexpected,
        "killed_clients": injector.killed_clients,
        "requests_lost": sum(s["issued"] - sum(s[name] for name in COUNT_FIELDS[1:]) for s in report.get("steps", [])),
        "memory": {**memory, "peak_rss_mb": peak_mb, "rss_mb_after_each_burst": injector.burst_rss_mb},
        "samples": sampler.samples,
        "checks": checks,
        "passed": all(checks.values()),
    }


def print_summary(result: dict) -> None:
    print(f"\nsoak of {result['duration_s']:g} s at {result['rate_requests_per_s']} requests/s "
          f"(70% of {result['capacity_requests_per_s']:.1f})")
    print(f"restarts: {result['restarts']}   killed clients: {result['killed_clients']}")
    print("step  " + "  ".join(f"{name:>{max(len(name), 6)}}" for name in COUNT_FIELDS) + "  identity  req/s    p99 ms")
    for row in result["steps"]:
        counts = "  ".join(f"{row[name]:>{max(len(name), 6)}}" for name in COUNT_FIELDS)
        print(f"{row['index']:>4}  {counts}  {str(row['identity_holds']):>8}  "
              f"{row['requests_per_s'] or 0:>5.1f}  {row['p99_ms']:>8.1f}")
    for kind, codes in sorted(result["faults"].items()):
        print(f"fault {kind:<14} {dict(sorted(codes.items()))}")
    memory = result["memory"]
    print(f"RSS MB: first {memory['rss_mb_first']}, after warm-up {memory['rss_mb_after_warmup']}, "
          f"end {memory['rss_mb_end']}, max {memory['rss_mb_max']}; growth after warm-up "
          f"{memory['rss_growth_after_warmup_mb']} MB (bound {memory['rss_growth_bound_mb']:g})")
    print(f"peak RSS (VmHWM) {memory['peak_rss_mb']} MB; after each burst {memory['rss_mb_after_each_burst']}")
    print(f"requests lost (issued but not accounted): {result['requests_lost']}")
    print(f"open fds: first {memory['fds_first']}, last {memory['fds_last']}")
    print("checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in result["checks"].items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration_s, default=600.0, help="soak length (default 10m)")
    parser.add_argument("--step", type=parse_duration_s, default=60.0, help="length of each load step (default 60s)")
    parser.add_argument("--warmup", type=parse_duration_s, default=60.0,
                        help="memory growth is measured after this much of the soak (default 60s)")
    parser.add_argument("--load-fraction", type=float, default=0.7, help="share of the measured capacity (0.7)")
    parser.add_argument("--sample-interval", type=parse_duration_s, default=5.0, help="RSS/fd sampling (5s)")
    parser.add_argument("--rss-bound-mb", type=float, default=100.0, help="allowed RSS growth after warm-up (100)")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="serve this repository (default: resnet18 at 64x64 exported into a temporary folder)")
    parser.add_argument("--model", default="resnet18", help="the model to load (with --model-repository)")
    parser.add_argument("--out", type=Path, default=Path("reports") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="folder for soak.json, the load reports and the server log")
    options = parser.parse_args(argv)
    if not 0 < options.load_fraction <= 1:
        parser.error("--load-fraction must be in (0, 1]")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    result = run_soak(options)
    print_summary(result)
    path = options.out / "soak.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
