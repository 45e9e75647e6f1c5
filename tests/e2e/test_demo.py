"""The README's main job, end to end: a one-network matrix (export → bench → serve → sweep → report at each
precision), and nothing left running."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(660)
def test_demo_script_exports_serves_loads_and_reports(tmp_path):
    out = tmp_path / "report"
    env = dict(
        os.environ,
        MODEL="resnet18",
        IMAGE_SIZE="64",
        REPO=str(tmp_path / "models"),
        CONCURRENCY="1,2",
        DURATION="1s",
        WARMUP="1s",
        MAX_TRIALS="1",
        BENCH_DURATION="0.5s",
        OUT=str(out),
        # The console scripts live beside this interpreter (the project's virtual environment).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=640
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"report: {out / 'matrix.md'}" in result.stdout

    matrix = json.loads((out / "matrix.json").read_text())
    assert [cell["precision"] for cell in matrix["cells"]] == ["fp32", "fp16", "int8"]
    for cell in matrix["cells"]:
        assert cell["status"] == "ok", cell["failures"]
        assert [row["batch_size"] for row in cell["engine"]["rows"]] == [1, 4]
        assert cell["end_to_end"]["images_per_s"] > 0 and cell["ratio"]["value"] > 0
    report = json.loads((out / "cells" / "resnet18_fp32" / "load" / "report.json").read_text())
    assert [step["concurrency"] for step in report["steps"]] == [1, 2]
    assert all(step["server"] for step in report["steps"])
    assert "Images per second: engine and end to end" in (out / "matrix.md").read_text()
    assert "<table" in (out / "matrix.html").read_text()

    # The server the script started has exited, and cleanly (SIGTERM → drain → exit 0).
    server_log = (out / "cells" / "resnet18_fp32" / "server.log").read_text()
    listening = re.search(r"ipsbench-serve: gRPC listening on 127\.0\.0\.1:(\d+)", server_log)
    assert listening, server_log
    leftover = subprocess.run(["pgrep", "-f", "--", f"--model-repository {tmp_path / 'models'}"], capture_output=True)
    assert leftover.returncode == 1, "ipsbench-serve still running after the demo"
