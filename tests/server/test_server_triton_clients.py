"""Triton's own Python clients, unmodified, against ipsbench-serve: every method of ``tritonclient.grpc`` and
``tritonclient.grpc.aio``'s ``InferenceServerClient``.

The methods are enumerated from the client classes and each must appear in :data:`SYNC_OUTCOMES` or
:data:`AIO_OUTCOMES` with the outcome a user gets, so a method added by a newer tritonclient fails
``test_outcome_table_names_every_client_method`` until someone decides what ipsbench answers. Inference results are
compared with ONNX Runtime run here on the same model file.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import queue
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from server_helpers import CALL_TIMEOUT_S
from tritonclient.utils import InferenceServerException

MODEL = "resnet18"
ADMIN_TOKEN = "triton-clients-test-token"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CONTROL_DISABLED_TEXT = "explicit model load / unload is not allowed if polling is enabled"
"""Triton's text (and UNAVAILABLE) for repository load/unload when model control is not explicit."""
CLIENTS = ("sync", "aio")


class Outcome(enum.Enum):
    SERVED = "answered as Triton answers it"
    MODEL_CONTROL = "served with --model-control-mode explicit; UNAVAILABLE with Triton's text in the default mode"
    UNIMPLEMENTED = "InferenceServerException with status UNIMPLEMENTED and a message (extension not offered)"
    CLIENT_SIDE = "no RPC of its own: client state (plugins, channel)"
    SHARED_MEMORY = (
        "served as Triton serves it (tests/server/test_shared_memory.py); CUDA registration UNIMPLEMENTED where the "
        "server has no CUDA"
    )


_COMMON_OUTCOMES = {
    "is_server_live": Outcome.SERVED,
    "is_server_ready": Outcome.SERVED,
    "get_server_metadata": Outcome.SERVED,
    "is_model_ready": Outcome.SERVED,
    "get_model_metadata": Outcome.SERVED,
    "get_model_config": Outcome.SERVED,
    "get_model_repository_index": Outcome.SERVED,
    "get_inference_statistics": Outcome.SERVED,
    "infer": Outcome.SERVED,
    "load_model": Outcome.MODEL_CONTROL,
    "unload_model": Outcome.MODEL_CONTROL,
    "get_log_settings": Outcome.UNIMPLEMENTED,
    "update_log_settings": Outcome.UNIMPLEMENTED,
    "get_trace_settings": Outcome.UNIMPLEMENTED,
    "update_trace_settings": Outcome.UNIMPLEMENTED,
    "get_system_shared_memory_status": Outcome.SHARED_MEMORY,
    "register_system_shared_memory": Outcome.SHARED_MEMORY,
    "unregister_system_shared_memory": Outcome.SHARED_MEMORY,
    "get_cuda_shared_memory_status": Outcome.SHARED_MEMORY,
    "register_cuda_shared_memory": Outcome.SHARED_MEMORY,
    "unregister_cuda_shared_memory": Outcome.SHARED_MEMORY,
    "plugin": Outcome.CLIENT_SIDE,
    "register_plugin": Outcome.CLIENT_SIDE,
    "unregister_plugin": Outcome.CLIENT_SIDE,
    "close": Outcome.CLIENT_SIDE,
}
SYNC_OUTCOMES = {
    **_COMMON_OUTCOMES,
    "async_infer": Outcome.SERVED,
    "start_stream": Outcome.SERVED,
    "async_stream_infer": Outcome.SERVED,
    "stop_stream": Outcome.SERVED,
}
AIO_OUTCOMES = {**_COMMON_OUTCOMES, "stream_infer": Outcome.SERVED}
OUTCOMES = {"sync": SYNC_OUTCOMES, "aio": AIO_OUTCOMES}
CLIENT_CLASSES = {"sync": grpcclient.InferenceServerClient, "aio": aioclient.InferenceServerClient}

# How each unimplemented extension is called; the arguments are valid for Triton, so only the server can refuse.
UNIMPLEMENTED_CALLS: dict[str, Callable] = {
    "get_log_settings": lambda c: c.get_log_settings(client_timeout=CALL_TIMEOUT_S),
    "update_log_settings": lambda c: c.update_log_settings({"log_verbose_level": 1}, client_timeout=CALL_TIMEOUT_S),
    "get_trace_settings": lambda c: c.get_trace_settings(client_timeout=CALL_TIMEOUT_S),
    "update_trace_settings": lambda c: c.update_trace_settings(
        settings={"trace_rate": "1"}, client_timeout=CALL_TIMEOUT_S
    ),
}


# -- fixtures and helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        yield client


@pytest.fixture(scope="module")
def reference(model_repository):
    """ONNX Runtime on the server's own model file: what every inference result is compared with."""
    return ort.InferenceSession(str(model_repository / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def labels(model_repository) -> list[str]:
    return (model_repository / MODEL / "labels.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def explicit_server(model_repository, start_module_server, tmp_path_factory):
    """A second server in explicit model-control mode, its admin RPCs behind a bearer token; nothing loaded at start."""
    token_file = tmp_path_factory.mktemp("admin") / "token"
    token_file.write_text(ADMIN_TOKEN)
    return start_module_server(
        model_repository, "--model-control-mode", "explicit", "--admin-token-file", str(token_file)
    )


@pytest.fixture(scope="module")
def explicit_client(explicit_server):
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as client:
        yield client


def call(kind: str, url: str, sync_client, method: Callable):
    """``method(client)`` with the sync client, or awaited with a fresh asyncio client inside its own event loop."""
    if kind == "sync":
        return method(sync_client)

    async def run():
        async with aioclient.InferenceServerClient(url) as client:
            return await method(client)

    return asyncio.run(run())


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 64, 64)).astype(np.float32)


def infer_input(module, array: np.ndarray):
    tensor = module.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def infer_images(kind: str, url: str, client, batch: np.ndarray, class_count: int = 0, **options):
    """``infer`` on :data:`MODEL` with ``batch`` as its input, asking for ``output`` (as its top ``class_count``
    classes when given), through the ``kind`` client."""
    module = grpcclient if kind == "sync" else aioclient
    return call(
        kind,
        url,
        client,
        lambda c: c.infer(
            MODEL,
            [infer_input(module, batch)],
            outputs=[module.InferRequestedOutput("output", class_count=class_count)],
            client_timeout=CALL_TIMEOUT_S,
            **options,
        ),
    )


def reference_output(reference, array: np.ndarray) -> np.ndarray:
    return reference.run(["output"], {"input": array})[0]


def assert_matches_reference(got: np.ndarray, reference, array: np.ndarray) -> None:
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_output(reference, array), rtol=1e-4, atol=1e-4)


class BearerToken:
    """A tritonclient plugin: adds the admin credential to every request's headers."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def __call__(self, request) -> None:
        request.headers["authorization"] = self._value


# -- the outcome table ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_outcome_table_names_every_client_method(kind):
    public = {
        name
        for name, member in inspect.getmembers(CLIENT_CLASSES[kind])
        if callable(member) and not name.startswith("_")
    }
    assert public == set(OUTCOMES[kind]), "a client method has no expected outcome here, or one is gone"
    unimplemented = {name for name, outcome in OUTCOMES[kind].items() if outcome is Outcome.UNIMPLEMENTED}
    assert unimplemented == set(UNIMPLEMENTED_CALLS)


# -- SERVED: health, metadata, config, index, statistics -----------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_health_and_metadata_rpcs(kind, server, sync_client):
    rpcs = {
        "live": lambda c: c.is_server_live(client_timeout=CALL_TIMEOUT_S),
        "ready": lambda c: c.is_server_ready(client_timeout=CALL_TIMEOUT_S),
        "model_ready": lambda c: c.is_model_ready(MODEL, "1", client_timeout=CALL_TIMEOUT_S),
        "unknown_ready": lambda c: c.is_model_ready("nope", client_timeout=CALL_TIMEOUT_S),
        "server": lambda c: c.get_server_metadata(as_json=True, client_timeout=CALL_TIMEOUT_S),
        "model": lambda c: c.get_model_metadata(MODEL, as_json=True, client_timeout=CALL_TIMEOUT_S),
        "config": lambda c: c.get_model_config(MODEL, client_timeout=CALL_TIMEOUT_S),
        "index": lambda c: c.get_model_repository_index(as_json=True, client_timeout=CALL_TIMEOUT_S),
    }
    got = {key: call(kind, server.grpc_url, sync_client, method) for key, method in rpcs.items()}
    assert got["live"] is True and got["ready"] is True
    assert got["model_ready"] is True and got["unknown_ready"] is False
    assert got["server"]["name"] == "ipsbench"
    assert {"classification", "model_repository", "statistics"} <= set(got["server"]["extensions"])
    # Extensions answered UNIMPLEMENTED are not advertised (Triton's names), so clients do not try them.
    assert not {"logging", "trace"} & set(got["server"]["extensions"])
    assert got["model"]["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in got["model"]["inputs"]] == [
        ("input", "FP32", ["-1", "3", "64", "64"])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in got["model"]["outputs"]] == [
        ("output", "FP32", ["-1", "1000"])
    ]
    assert got["config"].config.max_batch_size == 8
    assert got["config"].config.output[0].label_filename == "labels.txt"
    assert got["index"]["models"] == [{"name": MODEL, "version": "1", "state": "READY"}]


@pytest.mark.parametrize("kind", CLIENTS)
def test_unknown_model_metadata_is_not_found(kind, server, sync_client):
    with pytest.raises(InferenceServerException) as raised:
        call(kind, server.grpc_url, sync_client, lambda c: c.get_model_metadata("nope", client_timeout=CALL_TIMEOUT_S))
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert "nope" in raised.value.message()


@pytest.mark.parametrize("kind", CLIENTS)
def test_inference_statistics_count_the_requests_sent(kind, server, sync_client, reference):
    before = call(kind, server.grpc_url, sync_client, lambda c: c.get_inference_statistics(MODEL, as_json=True))
    batch = images(2, seed=5)
    requests = 3
    for _ in range(requests):
        sync_client.infer(MODEL, [infer_input(grpcclient, batch)], client_timeout=CALL_TIMEOUT_S)
    after = call(kind, server.grpc_url, sync_client, lambda c: c.get_inference_statistics(MODEL, as_json=True))

    def counts(stats: dict) -> tuple[int, int]:
        (model,) = stats["model_stats"]
        assert (model["name"], model["version"]) == (MODEL, "1")
        return int(model["inference_stats"]["success"].get("count", 0)), int(model.get("inference_count", 0))

    (success_before, images_before), (success_after, images_after) = counts(before), counts(after)
    assert success_after - success_before == requests
    assert images_after - images_before == requests * len(batch)


# -- SERVED: inference ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_infer_matches_onnxruntime(kind, compression, server, sync_client, reference):
    batch = images(3, seed=1)
    result = infer_images(
        kind, server.grpc_url, sync_client, batch, request_id="req-1", compression_algorithm=compression
    )
    assert result.get_response().id == "req-1"
    assert result.get_response().model_name == MODEL
    assert_matches_reference(result.as_numpy("output"), reference, batch)


@pytest.mark.parametrize("kind", CLIENTS)
def test_classification_gives_the_top_three_with_labels(kind, server, sync_client, reference, labels):
    batch = images(2, seed=2)
    result = infer_images(kind, server.grpc_url, sync_client, batch, class_count=3)
    top = result.as_numpy("output")
    assert top.shape == (2, 3)
    expected = reference_output(reference, batch)
    for row, logits in zip(top, expected):
        entries = [entry.decode().split(":", 2) for entry in row]
        indices = [int(index) for _, index, _ in entries]
        assert indices == list(np.argsort(-logits)[:3])
        assert [label for _, _, label in entries] == [labels[i] for i in indices]
        np.testing.assert_allclose([float(score) for score, _, _ in entries], logits[indices], atol=1e-3)


def test_async_infer_answers_each_request_with_its_own_result(server, sync_client, reference):
    results: queue.Queue = queue.Queue()
    batches = {f"async-{n}": images(1 + n % 2, seed=10 + n) for n in range(4)}
    for request_id, batch in batches.items():
        sync_client.async_infer(
            MODEL,
            [infer_input(grpcclient, batch)],
            callback=lambda result, error: results.put((result, error)),
            request_id=request_id,
            client_timeout=CALL_TIMEOUT_S,
        )
    for _ in range(len(batches)):
        result, error = results.get(timeout=CALL_TIMEOUT_S * 2)
        assert error is None
        request_id = result.get_response().id
        assert_matches_reference(result.as_numpy("output"), reference, batches.pop(request_id))
    assert not batches


def test_sync_stream_answers_every_request_and_reports_errors_in_band(server, reference):
    results: queue.Queue = queue.Queue()
    batches = {f"stream-{n}": images(1 + n % 3, seed=20 + n) for n in range(5)}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)), stream_timeout=CALL_TIMEOUT_S)
        for request_id, batch in batches.items():
            client.async_stream_infer(MODEL, [infer_input(grpcclient, batch)], request_id=request_id)
        client.async_stream_infer("nope", [infer_input(grpcclient, batches["stream-0"])], request_id="bad")
        answers = [results.get(timeout=CALL_TIMEOUT_S * 2) for _ in range(len(batches) + 1)]
        client.stop_stream()
    errors = [error for _, error in answers if error is not None]
    assert [error.message() for error in errors] == ["Request for unknown model: 'nope' is not found"]
    for result, error in answers:
        if error is None:
            request_id = result.get_response().id
            assert_matches_reference(result.as_numpy("output"), reference, batches.pop(request_id))
    assert not batches
    assert results.empty()


def test_aio_stream_infer_answers_every_request_and_reports_errors_in_band(server, reference):
    batches = {f"aio-stream-{n}": images(1 + n % 3, seed=30 + n) for n in range(5)}

    async def requests():
        for request_id, batch in batches.items():
            yield {"model_name": MODEL, "inputs": [infer_input(aioclient, batch)], "request_id": request_id}
        yield {"model_name": "nope", "inputs": [infer_input(aioclient, batches["aio-stream-0"])], "request_id": "bad"}

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as client:
            answers = []
            async for answer in client.stream_infer(requests(), stream_timeout=CALL_TIMEOUT_S):
                answers.append(answer)
                if len(answers) == len(batches) + 1:
                    break
            return answers

    answers = asyncio.run(asyncio.wait_for(run(), CALL_TIMEOUT_S * 2))
    errors = [error for _, error in answers if error is not None]
    assert [error.message() for error in errors] == ["Request for unknown model: 'nope' is not found"]
    for result, error in answers:
        if error is None:
            assert_matches_reference(result.as_numpy("output"), reference, batches.pop(result.get_response().id))
    assert not batches


# -- UNIMPLEMENTED -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("method", sorted(UNIMPLEMENTED_CALLS))
def test_unsupported_extensions_raise_unimplemented(kind, method, server, sync_client, reference):
    with pytest.raises(InferenceServerException) as raised:
        call(kind, server.grpc_url, sync_client, UNIMPLEMENTED_CALLS[method])
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "not supported by ipsbench-serve" in raised.value.message()
    batch = images(1, seed=3)
    result = sync_client.infer(MODEL, [infer_input(grpcclient, batch)], client_timeout=CALL_TIMEOUT_S)
    assert_matches_reference(result.as_numpy("output"), reference, batch)


# -- MODEL_CONTROL -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("method", ["load_model", "unload_model"])
def test_model_control_is_refused_in_the_default_mode_with_tritons_text(kind, method, server, sync_client):
    with pytest.raises(InferenceServerException) as raised:
        call(kind, server.grpc_url, sync_client, lambda c: getattr(c, method)(MODEL, client_timeout=CALL_TIMEOUT_S))
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    assert raised.value.message() == CONTROL_DISABLED_TEXT
    assert sync_client.is_model_ready(MODEL)


@pytest.mark.parametrize("kind", CLIENTS)
def test_load_and_unload_in_explicit_mode(kind, explicit_server, explicit_client, reference):
    url = explicit_server.grpc_url
    batch = images(2, seed=4)

    def index_entries(c):
        return c.get_model_repository_index(as_json=True, client_timeout=CALL_TIMEOUT_S)

    def states() -> list[tuple[str, str]]:
        return [(m["name"], m.get("state")) for m in call(kind, url, explicit_client, index_entries)["models"]]

    assert not explicit_client.is_model_ready(MODEL)
    assert states() == [(MODEL, "UNAVAILABLE")]

    call(kind, url, explicit_client, lambda c: c.load_model(MODEL, headers=ADMIN_HEADERS, client_timeout=120))
    assert explicit_client.is_model_ready(MODEL)
    assert states() == [(MODEL, "READY")]
    result = infer_images(kind, url, explicit_client, batch)
    assert_matches_reference(result.as_numpy("output"), reference, batch)

    call(kind, url, explicit_client, lambda c: c.unload_model(MODEL, headers=ADMIN_HEADERS, client_timeout=120))
    assert not explicit_client.is_model_ready(MODEL)
    assert call(kind, url, explicit_client, index_entries)["models"] == [
        {"name": MODEL, "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    with pytest.raises(InferenceServerException) as raised:
        explicit_client.infer(MODEL, [infer_input(grpcclient, batch)], client_timeout=CALL_TIMEOUT_S)
    assert raised.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("kind", CLIENTS)
def test_load_of_a_model_not_in_the_repository_is_an_invalid_argument(kind, explicit_server, explicit_client):
    with pytest.raises(InferenceServerException) as raised:
        call(
            kind,
            explicit_server.grpc_url,
            explicit_client,
            lambda c: c.load_model("nope", headers=ADMIN_HEADERS, client_timeout=CALL_TIMEOUT_S),
        )
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "load failed for model 'nope'" in raised.value.message()


def test_load_with_a_config_override_applies_it_or_refuses_it(explicit_server):
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as client:
        client.register_plugin(BearerToken(ADMIN_TOKEN))
        try:
            client.load_model(MODEL, config=json.dumps({"max_batch_size": 2}), client_timeout=120)
        except InferenceServerException as refused:
            assert refused.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.UNIMPLEMENTED")
            return
        try:
            assert client.get_model_config(MODEL).config.max_batch_size == 2
        finally:
            client.unload_model(MODEL, client_timeout=120)


# -- CLIENT_SIDE ---------------------------------------------------------------------------------------------------


def test_sync_plugin_headers_reach_the_server_and_close_ends_the_client(explicit_server):
    """A registered plugin's header is the admin credential; once unregistered the admin RPC is refused again."""
    plugin = BearerToken(ADMIN_TOKEN)
    client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    client.register_plugin(plugin)
    assert client.plugin() is plugin
    client.unload_model(MODEL, client_timeout=CALL_TIMEOUT_S)  # unloading a model that is not loaded succeeds
    client.unregister_plugin()
    assert client.plugin() is None
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model(MODEL, client_timeout=CALL_TIMEOUT_S)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    client.close()
    with pytest.raises(ValueError):  # a closed client refuses to send rather than hang
        client.is_server_live(client_timeout=CALL_TIMEOUT_S)


def test_aio_plugin_headers_reach_the_server(explicit_server):
    plugin = BearerToken(ADMIN_TOKEN)

    async def run() -> str:
        async with aioclient.InferenceServerClient(explicit_server.grpc_url) as client:
            client.register_plugin(plugin)
            assert client.plugin() is plugin
            await client.unload_model(MODEL, client_timeout=CALL_TIMEOUT_S)
            client.unregister_plugin()
            assert client.plugin() is None
            try:
                await client.unload_model(MODEL, client_timeout=CALL_TIMEOUT_S)
            except InferenceServerException as refused:
                return refused.status()
            return "accepted without the credential"

    assert asyncio.run(run()) == "StatusCode.UNAUTHENTICATED"
