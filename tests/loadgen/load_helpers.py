"""Running ipsbench-load as a subprocess (locust patches the whole process for gevent on import, so the test
process itself never imports it)."""
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LoadRun:
    """A running or finished ``python -m loadgen`` process and where its report goes."""

    process: subprocess.Popen
    out: Path
    log: Path
    stdout: str = ""

    def finish(self, timeout: float) -> int:
        """Wait for the process to exit; keep what it printed."""
        self.stdout, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode

    def stderr(self) -> str:
        return self.log.read_text()

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Block until ``text`` appears on the run's stderr (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if self.process.poll() is not None:
                pytest.fail(f"ipsbench-load exited ({self.process.returncode}) before logging {text!r}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"ipsbench-load did not log {text!r} within {timeout} s:\n{self.stderr()}")
            time.sleep(0.05)


def assert_accounted(report: dict) -> None:
    """Every step accounts for every issued request."""
    assert report["steps"], report
    for step in report["steps"]:
        accounted = (step["ok"] + step["rejected"] + step["failed"] + step["deadline"] + step["cancelled"]
                     + step["abandoned"])
        assert step["issued"] > 0
        assert step["issued"] == accounted, step
        assert step["identity_holds"]


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
