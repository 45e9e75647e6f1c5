"""Running ipsbench-load as a subprocess (locust patches the whole process for gevent on import, so the test
process itself never imports it)."""
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LoadRun:
    """A running or finished ``python -m ipsbench.loadgen`` process and where its report goes."""

    process: subprocess.Popen
    out: Path
    log: Path
    stdout: str = ""

    def finish(self, timeout: float) -> int:
        """Wait for the process to exit; keep what it printed."""
        self.stdout, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Block until ``text`` appears on the run's stderr (or fail after ``timeout``)."""
        wait_until(lambda: text in self.stderr(), timeout, f"ipsbench-load to log {text!r}", give_up=self._exited)

    def _exited(self) -> str | None:
        """Why waiting on this run is hopeless: it exited (with its stderr), or None while it runs."""
        if self.process.poll() is None:
            return None
        return f"ipsbench-load exited ({self.process.returncode}):\n{self.stderr()}"

    def partial_report(self) -> dict | None:
        """The report.json as the run last rewrote it (every few seconds while it goes on), or None."""
        try:
            return json.loads((self.out / "report.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_for_report(self, predicate, what: str, timeout: float = 120.0) -> dict:
        """Block until the partial report satisfies ``predicate`` (or fail after ``timeout``); return it."""

        def satisfied() -> dict | None:
            report = self.partial_report()
            return report if report is not None and predicate(report) else None

        return wait_until(satisfied, timeout, what, interval_s=0.1, give_up=self._exited)

    def wait_in_window(self, step: int = 0, ok: int = 1) -> dict:
        """Block until step ``step`` (from 0) has ``ok`` successful requests in its measured window, as the partial
        report shows: the run is then measuring, whatever the load on the machine."""

        def measuring(report: dict) -> bool:
            steps = report.get("steps") or []
            return len(steps) > step and (steps[step].get("window_requests") or {}).get("ok", 0) >= ok

        return self.wait_for_report(measuring, f"step {step + 1}'s measured window")

    def close(self) -> None:
        """Kill the process if it is still running, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):  # ValueError: its pipes were already read and closed
            pass


def start_load_run(
    out: Path, log: Path, scenario: str, target: str, model: str, *args: str, env: dict[str, str] | None = None
) -> LoadRun:
    """Start ``python -m ipsbench.loadgen SCENARIO --target TARGET --model MODEL --out OUT ARGS...``, its stderr into ``log``."""
    command = [sys.executable, "-m", "ipsbench.loadgen", scenario, "--target", target, "--model", model, "--out", str(out),
               *args]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    return LoadRun(process, out, log)


def report_from(steps: list, **facts) -> dict:
    """The report document of recorded ``steps`` and the run facts given (``RunFacts``' fields)."""
    from ipsbench.loadgen.report.build import RunFacts, build_report

    if facts.get("workers") is None:
        facts.pop("workers", None)
    return build_report(steps, RunFacts(**facts))


def sweep_report(steps: list, **arguments) -> dict:
    """The report of recorded ``steps`` as a sweep of resnet18 (64x64, fp32, synthetic images) with fixed run
    details; ``arguments`` replace any of ``RunFacts``' (``max_error_rate``, ``objectives``, ``engine``...)."""
    run = {
        "settings": {"target": {"deadline_s": 30.0}, "sweep": {"warmup_s": 1.0, "drain_s": 10.0}},
        "target": {"address": "127.0.0.1:8001", "server": {}},
        "model": {"name": "resnet18", "input": {"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}},
        "payload": {"mode": "fp32", "images_per_request": 1, "distinct_requests": 4, "request_bytes": 49_152,
                    "source": "synthetic"},
        "scenario": "sweep",
        "started_at": "2025-01-01T00:00:00+00:00",
        "duration_s": 7.0,
        "interrupted_by": None,
        "max_error_rate": 0.0,
    }
    return report_from(steps, **{**run, **arguments})


COUNT_FIELDS = ("ok", "rejected", "unreachable", "failed", "deadline", "cancelled", "abandoned")


def assert_accounted(report: dict) -> None:
    """ISSUED = OK + REJECTED + UNREACHABLE + FAILED + DEADLINE + CANCELLED + ABANDONED on every step (each of which issued
    something) and in the totals."""
    assert report["steps"], report
    for step in report["steps"]:
        assert step["issued"] > 0, step
        assert step["issued"] == sum(step[name] for name in COUNT_FIELDS), step
        assert step["identity_holds"], step
    totals = report["totals"]
    assert totals["issued"] == sum(totals[name] for name in COUNT_FIELDS), totals


def write_failing_image_model(repository: Path, name: str = "broken") -> Path:
    """An image model (input FP32 [-1,3,8,8]) that serves its warm-up batch of 8 but fails on every smaller batch.

    Its graph regroups the batch into 512 rows, which only works when the batch holds a multiple of 512 * 3
    values, so each request of 1 image fails inside the engine.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "rows"], ["regrouped"]),
         helper.make_node("Reshape", ["regrouped", "per_image"], ["output"])],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 192])],
        [numpy_helper.from_array(np.array([512, -1], np.int64), "rows"),
         numpy_helper.from_array(np.array([-1, 192], np.int64), "per_image")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 192 ] } ]\n'
        'model_warmup [ { name: "full_batch" batch_size: 8 inputs { key: "input" value {'
        ' data_type: TYPE_FP32 dims: [ 3, 8, 8 ] zero_data: true } } } ]\n'
    )
    return folder
