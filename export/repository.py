"""Configs of exported classifiers, written into Triton's repository layout (:mod:`ipsbench.server.repository.layout`):
``<repo>/<name>/config.pbtxt``, ``<name>/<version>/<model file>`` and the labels.

Every config states its network's preprocessing recipe in its ``parameters``
(:mod:`ipsbench.server.preprocess.recipe`), so that clients that send tensors build them as the network expects.
"""
from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export import onnx, torchscript
from ipsbench.export.models import NetworkSpec
from ipsbench.server.repository.layout import LABELS_FILENAME, model_dir, write_config

DEFAULT_QUEUE_DELAY_US = 1000


def _instance_group(device: str, instance_count: int) -> mc.ModelInstanceGroup:
    if device == "gpu":
        return mc.ModelInstanceGroup(count=instance_count, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=[0])
    return mc.ModelInstanceGroup(count=instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)


def classifier_config(
    spec: NetworkSpec,
    name: str,
    max_batch_size: int,
    *,
    platform: str,
    backend: str,
    input_name: str,
    output_name: str,
    instance_count: int = 1,
    device: str = "cpu",
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    parameters: dict[str, str] | None = None,
) -> mc.ModelConfig:
    """Triton's config for an image classifier: NCHW FP32 in, logits out, dynamic batching on."""
    config = mc.ModelConfig(
        name=name,
        platform=platform,
        backend=backend,
        max_batch_size=max_batch_size,
        input=[
            mc.ModelInput(
                name=input_name,
                data_type=mc.TYPE_FP32,
                format=mc.ModelInput.FORMAT_NCHW,
                dims=[3, spec.crop_size, spec.crop_size],
            )
        ],
        output=[
            mc.ModelOutput(
                name=output_name, data_type=mc.TYPE_FP32, dims=[spec.num_classes], label_filename=LABELS_FILENAME
            )
        ],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=queue_delay_us),
        instance_group=[_instance_group(device, instance_count)],
    )
    for key, value in {**spec.recipe.parameters(), **(parameters or {})}.items():
        config.parameters[key].string_value = value
    config.parameters["ipsbench.network"].string_value = spec.name  # what `ipsbench-serve bench --mode train` trains
    return config


def onnx_config(
    spec: NetworkSpec,
    name: str,
    max_batch_size: int,
    instance_count: int = 1,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    device: str = "cpu",
    precision: str = "fp32",
) -> mc.ModelConfig:
    """Config for an ONNX classifier served by ONNX Runtime; ``precision`` (the arithmetic inside the graph; the
    wire types stay FP32) is recorded in ``parameters`` for reports."""
    return classifier_config(
        spec,
        name,
        max_batch_size,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        input_name=onnx.INPUT_NAME,
        output_name=onnx.OUTPUT_NAME,
        instance_count=instance_count,
        device=device,
        queue_delay_us=queue_delay_us,
        parameters={"precision": precision} if precision != "fp32" else None,
    )


def tensorrt_config(
    spec: NetworkSpec, name: str, max_batch_size: int, *, instance_count: int = 1, precision: str = "fp16"
) -> mc.ModelConfig:
    """Config for a TensorRT engine (``model.plan``), always on GPU 0; the names are the ONNX file's."""
    return classifier_config(
        spec,
        name,
        max_batch_size,
        platform="tensorrt_plan",
        backend="tensorrt",
        input_name=onnx.INPUT_NAME,
        output_name=onnx.OUTPUT_NAME,
        instance_count=instance_count,
        device="gpu",
        parameters={"precision": precision},
    )


def torchscript_config(
    spec: NetworkSpec,
    name: str,
    max_batch_size: int,
    *,
    instance_count: int = 1,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    cuda_graphs: bool = False,
) -> mc.ModelConfig:
    """Config for a TorchScript classifier served by the PyTorch backend; engine options in ``parameters``."""
    parameters = {"precision": precision, "channels_last": str(channels_last).lower()}
    if cuda_graphs:
        parameters["cuda_graphs"] = "true"
    return classifier_config(
        spec,
        name,
        max_batch_size,
        platform="pytorch_libtorch",
        backend="pytorch",
        input_name=torchscript.INPUT_NAME,
        output_name=torchscript.OUTPUT_NAME,
        instance_count=instance_count,
        device=device,
        parameters=parameters,
    )


def write_entry(repository: Path, config: mc.ModelConfig, labels: tuple[str, ...]) -> Path:
    """config.pbtxt and labels next to the version folders; returns the config path."""
    folder = model_dir(repository, config.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABELS_FILENAME).write_text("\n".join(labels) + "\n", encoding="utf-8")
    return write_config(folder, config)

