"""``ipsbench-serve bench --mode train``: forward + backward + SGD step of an exported entry's torchvision network,
per batch size, on the entry's device, and the errors that name what to pass."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export import models
from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.backends.device_profile import ProfileError, profile_from_document
from ipsbench.server.bench import BenchSettings
from ipsbench.server.bench_train import TrainStep, run_train_bench
from ipsbench.server.preprocess.recipe import is_preprocess_parameter

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ipsbench.server", "bench", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def entry_copy(model_repository: Path, tmp_path: Path, name: str, **changes: str) -> Path:
    """A copy of the exported ``resnet18`` entry named ``name``, with config parameters set as ``changes`` says
    (``kind="KIND_GPU"`` sets the instance group's kind instead)."""
    repo = tmp_path / "models"
    shutil.copytree(model_repository / "resnet18", repo / name)
    path = repo / name / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.name = name
    kind = changes.pop("kind", None)
    if kind is not None:
        config.instance_group[0].kind = mc.ModelInstanceGroup.Kind.Value(kind)
        config.instance_group[0].gpus[:] = [0]
    for key, value in changes.items():
        config.parameters[key].string_value = value
    path.write_text(text_format.MessageToString(config))
    return repo


def test_training_an_exported_entry_on_the_cpu_times_every_batch_size(model_repository, tmp_path):
    out = tmp_path / "train.json"
    result = run_bench(
        "resnet18", "--model-repository", str(model_repository), "--mode", "train", "--batch-sizes", "1,2",
        "--duration", "0.3s", "--warmup", "0.1s", "--json", str(out),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "trained as torchvision resnet18 on cpu" in lines[0]
    assert lines[1] == "train: forward + backward + SGD step of the PyTorch network, per batch: training images/s"
    assert [line.split()[0] for line in lines[3:5]] == ["1", "2"]
    report = json.loads(out.read_text())
    assert (report["schema_version"], report["kind"], report["mode"]) == (2, "engine_bench", "train")
    assert report["measures"].startswith("forward + backward + SGD step")
    assert (report["network"], report["device"], report["precision"], report["backend"]) == (
        "resnet18", "cpu", "fp32", "pytorch")
    assert report["note"] is None and report["input_shapes"] == {"input": [-1, 3, 64, 64]}
    assert [r["batch_size"] for r in report["results"]] == [1, 2]
    for row in report["results"]:
        assert row["images_per_s"] > 0 and row["images"] == row["batches"] * row["batch_size"]
        assert row["latency_ms"]["min"] > 0
        assert math.isfinite(row["final_loss"]) and row["final_loss"] >= 0  # a fixed batch is soon fitted
        assert row["power_w"] is None and row["images_per_joule"] is None  # the CPU has no NVML
    with pytest.raises(ProfileError, match="times training steps"):
        profile_from_document(report, "train.json")


def test_a_training_step_changes_the_weights_and_fits_its_batch():
    network = models.build("resnet18", seed=0, image_size=64)
    before = {name: value.detach().clone() for name, value in network.state_dict().items()}
    trainer = TrainStep(network, 1000, torch.device("cpu"), "fp32")
    step = trainer.for_batch(4, (3, 64, 64))
    losses = [step() for _ in range(8)]
    assert trainer.steps == 8 and all(math.isfinite(loss) for loss in losses)
    after = network.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    # Eight SGD steps on one fixed batch of four: its loss falls.
    assert losses[-1] < losses[0]


def test_an_fp16_entry_trains_in_fp32_on_the_cpu_and_says_so(model_repository, tmp_path):
    repo = entry_copy(model_repository, tmp_path, "resnet18_half", precision="fp16")
    result = run_train_bench(BenchSettings(model="resnet18_half", model_repository=repo, mode="train",
                                           batch_sizes=(2,), duration_s=0.05, warmup_s=0))
    assert (result.precision, result.device) == ("fp32", "cpu")
    assert "the entry is fp16: trained in FP32 on the CPU" in result.note
    assert [r.batch_size for r in result.results] == [2] and result.results[0].images_per_s > 0


def test_network_errors_say_what_to_pass(model_repository, tmp_path, write_test_model):
    unknown = run_bench("resnet18", "--model-repository", str(model_repository), "--mode", "train",
                        "--network", "resnet_nope", "--duration", "0.1s")
    assert unknown.returncode == 1
    assert "unknown network 'resnet_nope': `ipsbench-export --list` shows the torchvision networks" in unknown.stderr
    write_test_model(tmp_path, "affine")
    unnamed = run_bench("affine", "--model-repository", str(tmp_path), "--mode", "train", "--duration", "0.1s")
    assert unnamed.returncode == 1
    assert "no 'ipsbench.network' parameter in its config): pass --network NAME" in unnamed.stderr


def test_without_torchvision_the_error_names_the_install(model_repository, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what `import torchvision` meets where it is missing
    settings = BenchSettings(model="resnet18", model_repository=model_repository, mode="train", duration_s=0.1)
    with pytest.raises(RuntimeError, match=r"needs PyTorch and torchvision \(torchvision is not installed\): "
                                           r"pip install 'ipsbench\[export\]'"):
        run_train_bench(settings)


def test_options_that_cannot_mean_anything_are_refused_before_any_work(model_repository):
    repo = str(model_repository)
    infer_network = run_bench("resnet18", "--model-repository", repo, "--network", "resnet18")
    assert infer_network.returncode == 2 and "it needs --mode train" in infer_network.stderr
    huge = run_bench("resnet18", "--model-repository", repo, "--mode", "train", "--batch-sizes", "1,100000")
    assert huge.returncode == 2 and "batch sizes must be integers in 1..4096" in huge.stderr
    mode = run_bench("resnet18", "--model-repository", repo, "--mode", "fit")
    assert mode.returncode == 2 and "invalid choice: 'fit'" in mode.stderr


def test_a_front_keeps_its_entry_network_and_trains_it(model_repository, tmp_path):
    repo = entry_copy(model_repository, tmp_path, "resnet18")
    config = text_format.Parse((repo / "resnet18" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.parameters["ipsbench.network"].string_value == "resnet18"
    assert not is_preprocess_parameter("ipsbench.network")  # an engine parameter, not part of the recipe
    write_preprocess_front(repo, "resnet18", "jpeg", models.describe("resnet18", 64).recipe)
    result = run_train_bench(BenchSettings(model="resnet18_jpeg", model_repository=repo, mode="train",
                                           batch_sizes=(1,), duration_s=0.05, warmup_s=0))
    # The front's engine input (the preprocessed NCHW tensor) is what the network trains on.
    assert (result.network, result.input_shapes) == ("resnet18", {"input": [-1, 3, 64, 64]})
    assert result.parameters["ipsbench.network"] == "resnet18"
    assert not any(key.startswith("ipsbench.preprocess") for key in result.parameters)


@pytest.mark.gpu
def test_an_fp16_gpu_entry_trains_in_mixed_precision_with_power(model_repository, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is false)")
    repo = entry_copy(model_repository, tmp_path, "resnet18_gpu", precision="fp16", kind="KIND_GPU")
    result = run_train_bench(BenchSettings(model="resnet18_gpu", model_repository=repo, mode="train",
                                           batch_sizes=(8, 32), duration_s=0.5, warmup_s=0.2))
    assert (result.precision, result.device) == ("amp_fp16", "cuda:0")
    assert [r.batch_size for r in result.results] == [8]  # the entry's max_batch_size caps 32
    for row in result.results:
        assert row.images_per_s > 0 and math.isfinite(row.final_loss)
        if row.power_samples is not None:  # where NVML watches the device
            assert row.power_w > 0 and row.images_per_joule > 0 and row.sm_clock_mhz["max"] > 0
