"""Pieces checked without a server: converters (round trips), batch merge/split, config and repository rules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from ipsbench.server import convert
from ipsbench.server.batching.batch import merge, split
from ipsbench.server.dataplane import InferResponse, OutputTensor
from ipsbench.server.repository.scan import ModelLoadError, scan_repository
from ipsbench.server.dataplane import InferRequest, InputTensor


def test_infer_request_round_trips_through_grpc():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    request = InferRequest("m", "3", "id-1", [InputTensor("input", "FP32", (2, 3, 4), x.tobytes())], ["output"])
    back = convert.infer_request_from_grpc(convert.infer_request_to_grpc(request))
    assert (back.model_name, back.model_version, back.id, list(back.outputs)) == ("m", "3", "id-1", ["output"])
    [tensor] = back.inputs
    assert (tensor.name, tensor.datatype, tuple(tensor.shape)) == ("input", "FP32", (2, 3, 4))
    np.testing.assert_array_equal(np.frombuffer(tensor.raw, np.float32).reshape(2, 3, 4), x)


def test_typed_contents_convert_to_the_same_raw_bytes():
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="input", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1.0, 2.0, 3.0])
    request = convert.infer_request_from_grpc(message)
    assert request.inputs[0].raw is None
    raw = convert.infer_request_to_grpc(request).raw_input_contents[0]
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32), [1.0, 2.0, 3.0])


def test_infer_response_round_trips_through_grpc():
    out = np.linspace(0, 1, 10, dtype=np.float32).reshape(2, 5)
    response = InferResponse("m", "1", "id-2", [OutputTensor("output", "FP32", out)])
    message = convert.infer_response_to_grpc(response)
    assert list(message.outputs[0].shape) == [2, 5]
    back = convert.infer_response_from_grpc(message)
    assert (back.model_name, back.model_version, back.id) == ("m", "1", "id-2")
    np.testing.assert_array_equal(back.outputs[0].array, out)


def test_merge_concatenates_and_split_returns_each_request_its_rows():
    parts = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 3, 2)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 2)
    pieces = split([merged["x"] * 10], [1, 3, 2])
    for n, [piece] in zip((1, 3, 2), pieces):
        np.testing.assert_array_equal(piece, np.full((n, 2), n * 10))
    with pytest.raises(ValueError, match="batch dimension 6"):
        split([np.zeros((5, 2))], [1, 3, 2])


def test_a_single_request_passes_through_without_copies():
    x = np.zeros((2, 3), np.float32)
    assert merge([{"x": x}])["x"] is x
    [[out]] = split([x], [2])
    assert out is x


CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 4 ] }} ]
{extra}
"""


def _entry(root, name, versions=(1,), max_batch_size=8, extra="", config_name=None):
    folder = root / name
    folder.mkdir()
    (folder / "config.pbtxt").write_text(
        CONFIG.format(name=config_name or name, max_batch_size=max_batch_size, extra=extra)
    )
    for version in versions:
        (folder / str(version)).mkdir()
        (folder / str(version) / "model.onnx").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(config_name="other"), "model name 'other' in config.pbtxt does not match directory"),
        (dict(extra='platform: "tensorflow_savedmodel"'), "does not match backend 'onnxruntime'"),
        (dict(max_batch_size=0, extra="dynamic_batching { }"), "dynamic_batching needs max_batch_size > 0"),
        (dict(extra="dynamic_batching { preferred_batch_size: 16 }"), "preferred_batch_size [16]"),
        (dict(versions=()), "at least one version must be available"),
        (dict(extra="version_policy { specific { versions: [2] } }"), "version(s) [2], which do not exist"),
        (dict(extra="max_queue_size: 3"), "cannot parse config.pbtxt"),
    ],
)
def test_invalid_configs_are_refused_with_a_reason(tmp_path, kwargs, message):
    _entry(tmp_path, "m", **kwargs)
    sources, errors = scan_repository(tmp_path)
    assert not sources
    [error] = errors
    assert isinstance(error, ModelLoadError) and error.name == "m"
    assert message in error.message


def test_version_policies_select_versions(tmp_path):
    _entry(tmp_path, "latest", versions=(1, 2, 10))
    _entry(tmp_path, "every", versions=(1, 2), extra="version_policy { all { } }")
    _entry(tmp_path, "two", versions=(1, 2, 3), extra="version_policy { latest { num_versions: 2 } }")
    _entry(tmp_path, "pinned", versions=(1, 2), extra="version_policy { specific { versions: [1] } }")
    sources, errors = scan_repository(tmp_path)
    assert not errors
    assert {s.name: sorted(s.version_files) for s in sources} == {
        "latest": [10],
        "every": [1, 2],
        "two": [2, 3],
        "pinned": [1],
    }


def test_names_and_links_outside_the_repository_are_refused(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    outside = _entry(tmp_path, "outside")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    _entry(root, "-dash")
    (root / ".hidden").mkdir()
    _entry(root, "ok..name")
    sources, errors = scan_repository(root)
    assert [s.name for s in sources] == ["ok..name"]
    assert {e.name: e.message for e in errors} == {
        "escape": "path resolves outside the model repository",
        "-dash": "invalid model name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
    }


def test_backends_are_imported_only_when_used_and_missing_ones_say_what_to_install(tmp_path):
    (tmp_path / "needs_missing.py").write_text("import ipsbench_no_such_package\n")
    (tmp_path / "broken_backend.py").write_text("raise ImportError('broken on purpose')\n")
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
from ipsbench.server.app import App
from ipsbench.server.backends.registry import BACKENDS, BackendEntry, BackendUnavailable, get_backend, load_backend
assert "onnxruntime" not in sys.modules, "onnxruntime imported before a model needs it"
get_backend("onnxruntime")
assert "onnxruntime" in sys.modules
assert "torch" not in sys.modules and "tensorrt" not in sys.modules
for target, requires, expected in [
    ("needs_missing:Backend", "ipsbench_no_such_package", "is not installed; install ipsbench[gpu]"),
    ("broken_backend:Backend", "broken_backend", "installed but failed to import: broken on purpose"),
]:
    entry = BackendEntry("x", "x_platform", "model.x", target, requires, "ipsbench[gpu]")
    try:
        load_backend(entry)
    except BackendUnavailable as exc:
        assert expected in str(exc), str(exc)
    else:
        raise AssertionError("no error")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
