"""ipsbench-load against a device-time model (an ``ipsbench-export --simulate`` entry of the committed H100 profile,
served by a real ipsbench-serve): the run learns it from the target's ModelConfig, and report.json, report.md,
report.html and the terminal summary head the report with SIMULATED and the profile's device."""
import subprocess
import sys
from pathlib import Path

import pytest
from load_helpers import assert_accounted

from ipsbench.loadgen.report.compare import render_comparison
from ipsbench.loadgen.report.html import render_html
from ipsbench.loadgen.report.markdown import render_markdown

ROOT = Path(__file__).resolve().parents[2]
H100_PROFILE = ROOT / "results" / "profiles" / "h100-resnet50-fp16.json"
LABEL = "SIMULATED (device-time model from NVIDIA H100 80GB HBM3)"
BEST_PROFILED_IMAGES_PER_S = 9047.0
SHORT = ("--warmup", "500ms", "--duration", "1500ms", "--drain", "5s")


@pytest.fixture(scope="module")
def simulated_server(tmp_path_factory, start_module_server):
    repo = tmp_path_factory.mktemp("simulated")
    command = [sys.executable, "-m", "ipsbench.export", "resnet18", "--image-size", "64", "--simulate",
               str(H100_PROFILE), "--out", str(repo)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return start_module_server(repo)


def test_a_sweep_against_a_device_model_is_reported_simulated_everywhere(simulated_server, start_load):
    run = start_load(simulated_server.grpc_url, "--concurrency", "1,4", *SHORT, model="resnet18_simulated")
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"], report["invalid_reasons"]
    assert_accounted(report)
    assert report["simulated"] == {"backend": "ipsbench_device_model", "device": "NVIDIA H100 80GB HBM3",
                                   "label": LABEL}
    assert report["model"]["backend"] == "ipsbench_device_model"
    # One simulated device: no step can serve faster than the profile's best batch.
    assert all(0 < step["images_per_s"] <= BEST_PROFILED_IMAGES_PER_S for step in report["steps"])

    markdown = (run.out / "report.md").read_text()
    title = f"{LABEL}: ipsbench-load sweep: resnet18_simulated on {simulated_server.grpc_url}"
    assert markdown.startswith(f"# {title}\n\n**{LABEL}**: the target's backend replays a profile measured on "
                               "NVIDIA H100 80GB HBM3; no device computed.")
    page = (run.out / "report.html").read_text()
    assert f"<title>{title}</title>" in page and f"<h1>{title}</h1>" in page
    assert f'<p id="simulated" class="bad"><strong>{LABEL}</strong>' in page
    assert f"{LABEL}: no device computed" in run.stdout, run.stdout
    assert "device-time model" in run.stderr()  # said before the run, from the target's ModelConfig

    real = {**report, "simulated": None}
    assert "SIMULATED" not in render_markdown(real) and "SIMULATED" not in render_html(real)
    comparison = render_comparison(report, real, Path("a.json"), Path("b.json"))
    assert f"- **A**: `a.json`: **{LABEL}**, sweep of `resnet18_simulated`" in comparison
    assert f"the runs differ in device ({LABEL} vs a real engine)" in comparison
