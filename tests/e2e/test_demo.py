"""The README's main job, end to end: export → serve → sweep → report, and nothing left running."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
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
        MAX_TRIALS="3",
        OUT=str(out),
        # The console scripts live beside this interpreter (the project's virtual environment).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=380
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"report: {out}" in result.stdout

    report = json.loads((out / "report.json").read_text())
    assert [step["concurrency"] for step in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["ok"] > 0 and step["images_per_s"] > 0
    # The engine measured in process beside the end-to-end steps, and the server's side scraped per step.
    assert [row["batch_size"] for row in report["engine"]["results"]] == [1, 4]
    assert all(step["server"] for step in report["steps"])
    assert "Engine and end to end" in (out / "report.md").read_text()
    assert "<svg" in (out / "report.html").read_text()

    # The server the script started has exited, and cleanly (SIGTERM → drain → exit 0).
    server_log = (out / "server.log").read_text()
    listening = re.search(r"ipsbench-serve: gRPC listening on 127\.0\.0\.1:(\d+)", server_log)
    assert listening, server_log
    leftover = subprocess.run(["pgrep", "-f", "--", f"--model-repository {tmp_path / 'models'}"], capture_output=True)
    assert leftover.returncode == 1, "ipsbench-serve still running after the demo"
