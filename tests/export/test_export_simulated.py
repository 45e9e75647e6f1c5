"""``ipsbench-export MODEL --simulate PROFILE``: a device-time model entry with the network's signature, serving a
measured profile (the committed H100 one here), and the refusals of profiles and options that cannot apply."""
import json
import subprocess
import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[2]
H100_PROFILE = ROOT / "results" / "profiles" / "h100-resnet50-fp16.json"
H100 = "NVIDIA H100 80GB HBM3"


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "ipsbench.export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_simulate_writes_an_entry_with_the_networks_signature_and_the_profile(tmp_path):
    result = run_export("resnet50", "--simulate", str(H100_PROFILE), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    entry = tmp_path / "resnet50_simulated"
    assert result.stdout.startswith(f"wrote {entry / 'config.pbtxt'}: SIMULATED (device-time model from {H100})")
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (config.backend, config.platform) == ("ipsbench_device_model", "ipsbench_device_model")
    assert config.max_batch_size == 64  # the profile's largest measured batch
    assert config.HasField("dynamic_batching")
    (given,), (made,) = config.input, config.output
    assert (given.name, given.data_type, list(given.dims)) == ("input", mc.TYPE_FP32, [3, 224, 224])
    assert (made.name, made.data_type, list(made.dims)) == ("output", mc.TYPE_FP32, [1000])
    assert config.parameters["ipsbench.device_model.device"].string_value == H100
    assert config.parameters["ipsbench.preprocess.crop"].string_value == "224"
    assert (entry / "1" / "profile.json").read_bytes() == H100_PROFILE.read_bytes()
    assert len((entry / "labels.txt").read_text().splitlines()) == 1000


def test_simulate_refuses_an_unusable_profile_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "kind": "engine_bench", "results": []}))
    result = run_export("resnet50", "--simulate", str(bad), "--out", str(tmp_path / "models"))
    assert result.returncode == 1
    assert "error: device profile 'bad.json' has no results" in result.stderr
    assert not (tmp_path / "models").exists()


def test_simulate_refuses_options_of_a_network_export(tmp_path):
    result = run_export("resnet50", "--simulate", str(H100_PROFILE), "--format", "torchscript", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--simulate exports no network, so --format cannot apply" in result.stderr
    result = run_export("resnet50", "--simulate", str(H100_PROFILE), "--max-batch-size", "8", "--out", str(tmp_path))
    assert result.returncode == 2 and "so --max-batch-size cannot apply" in result.stderr
