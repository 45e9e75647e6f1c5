"""Two minimal KServe v2 gRPC servers to measure ipsbench-serve against: a fixed response, and the model run inline.

Both are one grpc.aio server with tritonclient's ``GRPCInferenceService`` stubs (so every request is parsed by
protobuf, as any Python servicer of that service would), serving every model of a repository in Triton's layout:

* ``fixed``: ``ModelInfer`` answers every request with one response built at start-up (the model's outputs, zeros,
  for one sample): the floor of what a Python gRPC servicer costs per request (receive, parse, reply);
* ``inline``: ``ModelInfer`` runs the model in the event loop itself, one ONNX Runtime session per model (one
  intra-op and one inter-op thread), no batching, no queue; a ``_uint8`` or ``_jpeg`` front is preprocessed inline
  first, by the same functions ipsbench-serve uses (``ipsbench.server.preprocess.image``).

Both answer ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata, ModelConfig (the config.pbtxt) and
ModelStatistics (success count and time, what a load tool reads), enough for perf_analyzer. No validation beyond what
running the model needs: these are yardsticks, not servers to expose.

Prints ``yardstick: gRPC listening on HOST:PORT`` then ``yardstick: ready``; stops on SIGTERM or SIGINT.

Usage: .venv/bin/python benchmarks/yardstick_servers.py {fixed,inline} --model-repository DIR [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor

from ipsbench.server.preprocess.image import image_tensor, normalized
from ipsbench.server.preprocess.recipe import read_parameters
from ipsbench.server.repository.layout import read_config

KINDS = ("fixed", "inline")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
WIRE_TYPES = {mc.TYPE_FP32: "FP32", mc.TYPE_FP16: "FP16", mc.TYPE_UINT8: "UINT8", mc.TYPE_INT64: "INT64",
              mc.TYPE_STRING: "BYTES"}
NUMPY_TYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64}


@dataclass
class Model:
    """One repository entry: its config, its ONNX session (inline only), its front, and its success counters."""

    config: mc.ModelConfig
    session: object | None = None
    front: object | None = None
    fixed: service_pb2.ModelInferResponse | None = None
    count: int = 0
    total_ns: int = 0
    last_ns: int = 0
    metadata: service_pb2.ModelMetadataResponse = field(default_factory=service_pb2.ModelMetadataResponse)


def tensor_metadata(tensor, batched: bool) -> service_pb2.ModelMetadataResponse.TensorMetadata:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=WIRE_TYPES[tensor.data_type], shape=[-1, *tensor.dims] if batched else tensor.dims)


def load_model(folder: Path, kind: str) -> Model:
    config = read_config(folder)
    batched = config.max_batch_size > 0
    model = Model(config)
    model.metadata = service_pb2.ModelMetadataResponse(
        name=config.name, versions=["1"], platform="onnxruntime_onnx",
        inputs=[tensor_metadata(t, batched) for t in config.input],
        outputs=[tensor_metadata(t, batched) for t in config.output])
    fixed = service_pb2.ModelInferResponse(model_name=config.name, model_version="1")
    for output in config.output:
        shape = [1, *output.dims] if batched else list(output.dims)
        fixed.outputs.add(name=output.name, datatype=WIRE_TYPES[output.data_type], shape=shape)
        dtype = NUMPY_TYPES[WIRE_TYPES[output.data_type]]
        fixed.raw_output_contents.append(np.zeros(shape, dtype).tobytes())
    model.fixed = fixed
    if kind == "inline":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        model.session = ort.InferenceSession(str(folder / "1" / "model.onnx"), options,
                                             providers=["CPUExecutionProvider"])
        _, model.front = read_parameters({k: v.string_value for k, v in config.parameters.items()})
    return model


def engine_input(model: Model, request: service_pb2.ModelInferRequest) -> tuple[str, np.ndarray]:
    """The engine's input name and tensor for a request: the raw tensor as it came, or a front's images
    preprocessed."""
    tensor, raw = request.inputs[0], request.raw_input_contents[0]
    front = model.front
    if front is None:
        return tensor.name, np.frombuffer(raw, NUMPY_TYPES[tensor.datatype]).reshape(tensor.shape)
    dtype = NUMPY_TYPES[front.engine_datatype]
    if front.kind == "uint8":
        pixels = np.frombuffer(raw, np.uint8).reshape(tensor.shape)
        return front.engine_input, np.stack([normalized(image, front.recipe, dtype) for image in pixels])
    images = deserialize_bytes_tensor(raw)
    return front.engine_input, np.stack([image_tensor(bytes(data), front.recipe, dtype=dtype) for data in images])


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs perf_analyzer and tritonclient need, over a dict of models."""

    def __init__(self, kind: str, models: dict[str, Model]) -> None:
        self.kind = kind
        self.models = models

    async def _model(self, name: str, context) -> Model:
        model = self.models.get(name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
        return model

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name in self.models)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name=f"yardstick-{self.kind}", version="0")

    async def ModelMetadata(self, request, context):
        return (await self._model(request.name, context)).metadata

    async def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(config=(await self._model(request.name, context)).config)

    async def ModelStatistics(self, request, context):
        response = service_pb2.ModelStatisticsResponse()
        for name, model in self.models.items():
            if request.name and request.name != name:
                continue
            stats = response.model_stats.add(name=name, version="1", last_inference=model.last_ns // 1_000_000,
                                             inference_count=model.count, execution_count=model.count)
            for part in (stats.inference_stats.success, stats.inference_stats.compute_infer):
                part.count, part.ns = model.count, model.total_ns
        return response

    async def ModelInfer(self, request, context):
        started = time.perf_counter_ns()
        model = await self._model(request.model_name, context)
        if self.kind == "fixed":
            response = model.fixed
        else:
            name, tensor = engine_input(model, request)
            outputs = model.session.run(None, {name: tensor})
            response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1",
                                                      id=request.id)
            for meta, array in zip(model.config.output, outputs):
                response.outputs.add(name=meta.name, datatype=WIRE_TYPES[meta.data_type], shape=array.shape)
                response.raw_output_contents.append(array.tobytes())
        model.count += 1
        model.total_ns += time.perf_counter_ns() - started
        model.last_ns = time.time_ns()
        return response


async def serve(kind: str, repository: Path, host: str, port: int) -> None:
    models = {}
    for folder in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        model = load_model(folder, kind)
        models[model.config.name] = model
    server = grpc.aio.server(options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(kind, models), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"yardstick: gRPC listening on {host}:{bound}", flush=True)
    print("yardstick: ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.kind, args.model_repository, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
