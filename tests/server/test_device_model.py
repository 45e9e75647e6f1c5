"""The device-time model backend (``ipsbench_device_model``) in a real ipsbench-serve: batches take the profile's
time (compared as ratios and lower bounds: sleeps only get longer on a busy machine), waiting holds no CPU, outputs
have the config's shapes and datatypes, one simulated device runs one batch at a time, bad profiles are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from waiting import wait_until

from ipsbench.server.backends.device_profile import DeviceProfile

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "Test GPU 1"
CALL_TIMEOUT_S = 60.0


def bench_profile(rates: dict[int, float], device_name: str = DEVICE, **fields) -> dict:
    """``ipsbench-serve bench --json`` output with ``rates`` (batch size → images/sec)."""
    return {
        "schema_version": 1, "kind": "engine_bench", "model": "net", "platform": "pytorch_libtorch",
        "backend": "pytorch", "device": "cuda:0", "device_name": device_name, "precision": "fp16",
        "results": [{"batch_size": size, "images_per_s": rate} for size, rate in rates.items()], **fields,
    }


def write_entry(
    repo: Path, name: str, profile: dict | str | bytes | None, *, max_batch_size: int = 16, dynamic: bool = True,
    outputs: str = 'output [ { name: "output" data_type: TYPE_FP32 dims: [ 10 ] } ]', gpus: str = "[ 0 ]",
    count: int = 1, parameters: dict[str, str] | None = None,
) -> Path:
    """A device-model entry: its config and, unless ``profile`` is None, ``1/profile.json``."""
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    params = "".join(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
                     for key, value in (parameters or {}).items())
    (folder / "config.pbtxt").write_text(
        f'backend: "ipsbench_device_model"\nmax_batch_size: {max_batch_size}\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        f"{outputs}\n"
        f"instance_group [ {{ kind: KIND_GPU count: {count} gpus: {gpus} }} ]\n"
        + ("dynamic_batching { max_queue_delay_microseconds: 1000 }\n" if dynamic else "") + params
    )
    if profile is not None:
        data = profile if isinstance(profile, bytes) else (
            profile if isinstance(profile, str) else json.dumps(profile)).encode()
        (folder / "1" / "profile.json").write_bytes(data)
    return folder


def infer(client: grpcclient.InferenceServerClient, model: str, batch: int, outputs: tuple[str, ...] = ("output",)):
    inp = grpcclient.InferInput("input", [batch, 4] if batch else [4], "FP32")
    inp.set_data_from_numpy(np.ones((batch, 4) if batch else (4,), dtype=np.float32))
    return client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                        client_timeout=CALL_TIMEOUT_S)


def batch_means_s(client: grpcclient.InferenceServerClient, model: str) -> dict[int, float]:
    """Mean execution time per batch size, from the server's statistics (Triton's batch_stats)."""
    stats = client.get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.ns / b.compute_infer.count / 1e9 for b in stats.batch_stats}


# -- the time of a batch --------------------------------------------------------------------------------------------

SCALING = {1: 25.0, 16: 200.0}
"""40 ms for one image, 80 ms for 16: throughput 8x higher at batch 16."""


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_module_server):
    repo = tmp_path_factory.mktemp("device-models")
    write_entry(repo, "scaling", bench_profile(SCALING), max_batch_size=32)
    write_entry(repo, "idle", bench_profile({1: 4.0}), max_batch_size=1, dynamic=False)
    # Two instances of one model and a second model, all on simulated device 0, 300 ms a batch.
    write_entry(repo, "shared", bench_profile({1: 1 / 0.3}), max_batch_size=1, dynamic=False, count=2)
    write_entry(repo, "neighbour", bench_profile({1: 1 / 0.3}), max_batch_size=1, dynamic=False)
    outputs = ('output [ { name: "scores" data_type: TYPE_FP32 dims: [ 10 ] }, '
               '{ name: "boxes" data_type: TYPE_INT64 dims: [ 2, 3 ] }, '
               '{ name: "half" data_type: TYPE_FP16 dims: [ 4 ] }, '
               '{ name: "names" data_type: TYPE_STRING dims: [ 2 ] } ]')
    write_entry(repo, "shapes", bench_profile({1: 1000.0, 8: 4000.0}), max_batch_size=8, outputs=outputs)
    write_entry(repo, "unbatched", bench_profile({1: 1000.0}), max_batch_size=0, dynamic=False,
                outputs=outputs)
    return start_module_server(repo)


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def test_a_batch_takes_the_profiles_time_and_throughput_scales_as_measured(client):
    for batch in (1, 16, 1, 16, 1, 16, 8, 32):
        infer(client, "scaling", batch)
    means = batch_means_s(client, "scaling")
    # Lower bounds hold on any machine: a sleep never ends early.
    assert means[1] >= 0.040 * 0.99 and means[16] >= 0.080 * 0.99, means
    assert means[8] >= (0.040 + 7 / 15 * 0.040) * 0.99, means  # interpolated between 1 and 16
    assert means[32] >= (0.080 + 16 / 15 * 0.040) * 0.99, means  # extrapolated along the last segment
    measured_ratio = (16 / means[16]) / (1 / means[1])
    assert 0.6 * 8 <= measured_ratio <= 1.6 * 8, means  # 16 (batch-blind) or 1 (per image) are far outside


def test_waiting_for_the_device_holds_no_cpu(client, server):
    process = psutil.Process(server.process.pid)
    infer(client, "idle", 1)
    before_cpu, started = sum(process.cpu_times()[:2]), time.monotonic()
    for _ in range(8):
        infer(client, "idle", 1)  # 250 ms each
    wall_s, cpu_s = time.monotonic() - started, sum(process.cpu_times()[:2]) - before_cpu
    assert wall_s >= 8 * 0.25 * 0.99
    assert cpu_s < 0.1 * wall_s, f"the server used {cpu_s:.2f} s of CPU in {wall_s:.2f} s"


def test_one_simulated_device_runs_one_batch_at_a_time(server):
    """Two instances of one model and another model on the same simulated device: three 300 ms batches sent at
    once take at least 900 ms, as one device would take them."""
    results: list[object] = []
    clients = [grpcclient.InferenceServerClient(server.grpc_url) for _ in range(3)]
    threads = [threading.Thread(target=lambda c=c, m=m: results.append(infer(c, m, 1)))
               for c, m in zip(clients, ("shared", "shared", "neighbour"))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CALL_TIMEOUT_S)
    elapsed_s = time.monotonic() - started
    for c in clients:
        c.close()
    assert len(results) == 3
    assert elapsed_s >= 3 * 0.3 * 0.99, f"three batches overlapped: {elapsed_s:.3f} s"


@pytest.mark.parametrize(("model", "batch"), [("shapes", 3), ("unbatched", 0)])
def test_outputs_have_the_configs_shapes_and_datatypes(client, model, batch):
    result = infer(client, model, batch, outputs=("scores", "boxes", "half", "names"))
    lead = (batch,) if batch else ()
    expected = {"scores": ((10,), np.float32), "boxes": ((2, 3), np.int64), "half": ((4,), np.float16)}
    for name, (dims, dtype) in expected.items():
        array = result.as_numpy(name)
        assert array.shape == lead + dims and array.dtype == dtype, name
        assert not array.any()
    names = result.as_numpy("names")
    assert names.shape == lead + (2,) and names.dtype == object and set(names.ravel()) == {b""}
    assert {o.datatype for o in result.get_response().outputs} == {"FP32", "INT64", "FP16", "BYTES"}


def test_the_config_says_which_backend_and_device(client):
    config = client.get_model_config("scaling").config
    assert config.backend == "ipsbench_device_model" and config.platform == "ipsbench_device_model"
    assert client.get_model_metadata("scaling").platform == "ipsbench_device_model"


# -- the profile ----------------------------------------------------------------------------------------------------

def test_time_per_batch_is_interpolated_and_extrapolated_linearly():
    profile = DeviceProfile("gpu", "fp16", "net", (4, 8, 16), (0.010, 0.012, 0.020))
    assert profile.batch_time_s(1) == profile.batch_time_s(4) == 0.010
    assert profile.batch_time_s(6) == pytest.approx(0.011)
    assert profile.batch_time_s(12) == pytest.approx(0.016)
    assert profile.batch_time_s(32) == pytest.approx(0.036)
    assert DeviceProfile("gpu", "fp16", "net", (8,), (0.016,)).batch_time_s(16) == pytest.approx(0.032)
    falling = DeviceProfile("gpu", "fp16", "net", (8, 16), (0.02, 0.01))
    assert falling.batch_time_s(64) == pytest.approx(0.01)


GOOD = bench_profile({1: 100.0, 8: 400.0})
BAD_PROFILES = {
    "empty": (b"", "device profile 'profile.json' is empty"),
    "not_json": (b"{batch: 1}", "is not JSON as ipsbench-serve bench --json writes it"),
    "nan": (json.dumps(GOOD).replace("400.0", "NaN"), "NaN is not a number a profile may hold"),
    "infinite": (json.dumps(GOOD).replace("400.0", "1e999"), "results[1].images_per_s must be a finite number > 0"),
    "zero_rate": (bench_profile({1: 0.0}), "results[0].images_per_s must be a finite number > 0, got 0.0"),
    "no_results": (bench_profile({}), "has no results"),
    "not_bench": ({"results": GOOD["results"]}, "must be ipsbench-serve bench --json output"),
    "list": ([1, 2], "must be a JSON object, got list"),
    "too_many": (bench_profile({size: 100.0 for size in range(1, 1026)}), "has 1025 results; at most 1024"),
    "too_large": (json.dumps({**GOOD, "pad": "x" * (1 << 20)}), "is larger than 1048576 bytes"),
    "nested": (b"[" * 200_000, "is not JSON as ipsbench-serve bench --json writes it"),
    "fractional": (json.dumps(GOOD).replace('"batch_size": 8', '"batch_size": 1.5'),
                   "results[1].batch_size must be an integer in 1..1048576, got 1.5"),
    "repeated": (json.dumps(GOOD).replace('"batch_size": 8', '"batch_size": 1'),
                 "measures batch size(s) [1] more than once"),
    "too_slow": (bench_profile({1: 0.01}), "a batch of 1 at 0.01 images/s takes 100 s; at most 60 s"),
    "simulated": (bench_profile({1: 100.0}, simulated="SIMULATED (x)"), "was measured against a device-time model"),
}


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory, start_module_server):
    repo = tmp_path_factory.mktemp("bad-profiles")
    for name, (profile, _) in BAD_PROFILES.items():
        write_entry(repo, name, profile, max_batch_size=8)
    write_entry(repo, "extrapolated_too_far", bench_profile({1: 100.0}), max_batch_size=8000)
    (repo / "outside.json").write_text(json.dumps(GOOD))
    for name, path in (("escaping", "../outside.json"), ("absolute", str(repo / "outside.json")),
                       ("missing", "nope.json")):
        write_entry(repo, name, GOOD, max_batch_size=8, parameters={"ipsbench.device_model.profile": path})
    write_entry(repo, "other_device", GOOD, max_batch_size=8, parameters={"ipsbench.device_model.device": "GPU 2"})
    folder = write_entry(repo, "named_profile", None, max_batch_size=8,
                         parameters={"ipsbench.device_model.profile": "profiles/h.json"})
    (folder / "1" / "profile.json").write_text("not a profile: the parameter names another file")
    (folder / "profiles").mkdir()
    (folder / "profiles" / "h.json").write_text(json.dumps(GOOD))
    return start_module_server(repo, "--no-exit-on-error", wait_ready=False)


REFUSED = {
    **{name: message for name, (_, message) in BAD_PROFILES.items()},
    "extrapolated_too_far": "a batch of 8000 would take 80 s by the profile; at most 60 s",
    "escaping": "parameter 'ipsbench.device_model.profile' leads outside the model's folder",
    "absolute": "parameter 'ipsbench.device_model.profile' must be a path relative to the model's folder",
    "missing": "cannot read device profile 'nope.json': No such file or directory",
    "other_device": "parameter 'ipsbench.device_model.device' says 'GPU 2', but the profile was measured on "
                    f"'{DEVICE}'",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_bad_profile_is_refused_with_its_reason(refusing_server, name):
    line = f"load failed for model '{name}': "
    found = wait_until(lambda: [text for text in refusing_server.log().splitlines() if line in text], 60,
                       f"the load failure of {name}", give_up=lambda: refusing_server.process.poll() is not None
                       and "the server exited")
    assert REFUSED[name] in found[0], found[0]
    with grpcclient.InferenceServerClient(refusing_server.grpc_url) as c:
        assert not c.is_model_ready(name)


def test_a_profile_named_by_the_parameter_serves(refusing_server):
    with grpcclient.InferenceServerClient(refusing_server.grpc_url) as c:
        wait_until(lambda: c.is_model_ready("named_profile"), 60, "named_profile to be ready")
        assert infer(c, "named_profile", 2).as_numpy("output").shape == (2, 10)


# -- ipsbench-serve bench ---------------------------------------------------------------------------------------------

def test_bench_of_a_device_model_says_simulated_and_replays_the_profile(tmp_path):
    write_entry(tmp_path, "scaling", bench_profile(SCALING), max_batch_size=16)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", "bench", "scaling", "--model-repository", str(tmp_path),
         "--batch-sizes", "1,16", "--duration", "0.5s", "--warmup", "0", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"SIMULATED (device-time model from {DEVICE}): scaling v1")
    report = json.loads(out.read_text())
    assert report["simulated"] == f"SIMULATED (device-time model from {DEVICE})"
    assert report["device"] == "sim:0" and report["device_name"] == DEVICE and report["precision"] == "fp16"
    rates = {row["batch_size"]: row["images_per_s"] for row in report["results"]}
    assert rates[1] <= SCALING[1] * 1.01 and rates[16] <= SCALING[16] * 1.01, rates
    assert 0.6 * 8 <= rates[16] / rates[1] <= 1.6 * 8, rates
