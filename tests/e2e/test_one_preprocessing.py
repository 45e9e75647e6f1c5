"""One JPEG, one tensor, in every role: the exporter's verification images, the load generator's fp32 and uint8
payloads and the server's jpeg and uint8 fronts turn the same JPEG into byte-identical tensors, with the recipe the
model's config states (read by the load generator through the server's ModelConfig, not assumed).

The served model is an identity network, so the server's answer is the tensor its front produced.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2, service_pb2_grpc

import grpc
from ipsbench.export import images as export_images
from ipsbench.export.models import NetworkSpec
from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.loadgen.images import synthetic_image
from ipsbench.loadgen.settings import TargetSettings, WorkloadSettings
from ipsbench.loadgen.workload import prepare_workload
from ipsbench.server import datatypes
from ipsbench.server.preprocess.recipe import Recipe
from ipsbench.server.repository.layout import write_config

CROP = 32
RECIPE = Recipe(crop=CROP, resize=40, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic")
"""Not ResNet's defaults anywhere, so a role that assumed them instead of reading the config would differ."""


def write_identity_model(repository, name: str = "identity") -> None:
    """An FP32 [3, CROP, CROP] → the same tensor network whose config states :data:`RECIPE`."""
    shape = ["batch", 3, CROP, CROP]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repository / name / "1").mkdir(parents=True)
    onnx.save(model, repository / name / "1" / "model.onnx")
    config = mc.ModelConfig(
        name=name, backend="onnxruntime", max_batch_size=4,
        input=[mc.ModelInput(name="input", data_type=mc.TYPE_FP32, dims=[3, CROP, CROP])],
        output=[mc.ModelOutput(name="output", data_type=mc.TYPE_FP32, dims=[3, CROP, CROP])],
    )
    for key, value in RECIPE.parameters().items():
        config.parameters[key].string_value = value
    write_config(repository / name, config)


def served_tensor(stub, model: str, datatype: str, shape: list[int], raw: bytes, input_name: str = "image") -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return stub.ModelInfer(request, timeout=30).raw_output_contents[0]


def client_tensor(url: str, model: str, payload: str, folder) -> bytes:
    """The one request the load generator builds for ``model`` from the image in ``folder``: its input bytes."""
    prepared = prepare_workload(
        TargetSettings(target=url, model=model), WorkloadSettings(payload=payload, distinct_requests=1,
                                                                  images_dir=str(folder)),
    )
    (request,) = prepared.payloads.requests
    return service_pb2.ModelInferRequest.FromString(request).raw_input_contents[0]


def test_the_exporter_the_load_generator_and_the_servers_fronts_agree_byte_for_byte(tmp_path, start_server):
    repository = tmp_path / "models"
    write_identity_model(repository)
    for kind in ("jpeg", "uint8"):
        write_preprocess_front(repository, "identity", kind, RECIPE)
    server = start_server(repository)
    jpeg = synthetic_image(seed=0, index=3).jpeg  # an ImageNet-sized photo, decoded downscaled in the DCT domain
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(jpeg)

    network = NetworkSpec(name="identity", crop_size=CROP, resize_size=RECIPE.resize, num_classes=0, labels=(),
                          mean=RECIPE.mean, std=RECIPE.std, interpolation=RECIPE.interpolation)
    exported = export_images.from_folder(folder, network, limit=1)  # the exporter's verification batch
    assert exported.shape == (1, 3, CROP, CROP) and exported.dtype == np.float32

    fp32_payload = client_tensor(server.grpc_url, "identity", "fp32", folder)
    uint8_payload = client_tensor(server.grpc_url, "identity_uint8", "uint8", folder)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        jpeg_front = served_tensor(stub, "identity_jpeg", "BYTES", [1, 1], datatypes.join_bytes_elements([jpeg]))
        uint8_front = served_tensor(stub, "identity_uint8", "UINT8", [1, CROP, CROP, 3], uint8_payload)
        plain = served_tensor(stub, "identity", "FP32", [1, 3, CROP, CROP], fp32_payload, input_name="input")

    assert exported.tobytes() == fp32_payload  # exporter == load generator (fp32)
    assert jpeg_front == fp32_payload  # the server's jpeg front == load generator
    assert uint8_front == fp32_payload  # the server's uint8 front on the load generator's crop == the same
    assert plain == fp32_payload  # and the identity network passed it through untouched
    reference = Recipe.imagenet(CROP)
    assert reference.resize != RECIPE.resize and reference.mean != RECIPE.mean  # the test would see a default
