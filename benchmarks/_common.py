"""Pieces the benchmarks share: core pinning, the negligible-compute model, a pinned ipsbench-serve, CPU time.

Every benchmark here runs on a 2-core box with the server pinned to one core and the load generator to the other,
on 127.0.0.1, in a temporary model repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER_SCRIPT = REPO_ROOT / "scripts" / "perf-analyzer.sh"
"""Triton's perf_analyzer, set up on first call by the project's own script (exit 2 when it cannot be)."""
SERVER_CORE = 0
CLIENT_CORE = 1
MAX_BATCH_SIZE = 8
TINY = "tiny_pool_linear"
THREAD_PARAMETERS = """
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "inter_op_thread_count" value { string_value: "1" } }
"""
SERVER_READY_TIMEOUT_S = 120.0


def pinned(core: int):
    """preexec_fn pinning the child (and everything it starts) to one core."""

    def _pin() -> None:
        os.sched_setaffinity(0, {core})

    return _pin


def run_pinned(cmd: list[str], core: int, timeout_s: float) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=REPO_ROOT, preexec_fn=pinned(core), capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}")
    return result


def write_tiny_model(repo: Path) -> None:
    """GlobalAveragePool over [-1,3,224,224] FP32 -> Flatten -> Gemm to 1000: compute is negligible, so what is
    measured is the cost of moving a 602 KB request through the server."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 1000)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(np.zeros(1000, dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["output"]),
        ],
        TINY,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, 1000])],
        initializer=[weight, bias],
    )
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (repo / TINY / "1").mkdir(parents=True)
    onnx.save(model, str(repo / TINY / "1" / "model.onnx"))
    (repo / TINY / "config.pbtxt").write_text(
        f"""name: "{TINY}"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH_SIZE}
input {{ name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] }}
output {{ name: "output" data_type: TYPE_FP32 dims: [ 1000 ] }}
instance_group {{ count: 1 kind: KIND_CPU }}
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
"""
        + THREAD_PARAMETERS,
        encoding="utf-8",
    )


class Server:
    """ipsbench-serve on core 0; ready when it prints its ready line (bounded wait)."""

    def __init__(self, repo: Path, log_path: Path) -> None:
        self.log = log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ipsbench.server", "--model-repository", str(repo), "--grpc-port", "0",
             "--metrics-port", "0"],
            cwd=REPO_ROOT, preexec_fn=pinned(SERVER_CORE), stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.port: int | None = None
        self._lines: list[str] = []
        ready = threading.Event()

        def _read() -> None:
            for line in self.proc.stdout:
                self._lines.append(line)
                match = re.search(r"gRPC listening on [^\s]*:(\d+)", line)
                if match:
                    self.port = int(match.group(1))
                if line.strip() == "ipsbench-serve: ready":
                    ready.set()

        threading.Thread(target=_read, daemon=True).start()
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server did not become ready; see {log_path}")
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def tree_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and everything it started (0 once it is gone)."""
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total
