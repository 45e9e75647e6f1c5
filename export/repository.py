"""Write a model into Triton's repository layout: <repo>/<name>/config.pbtxt, <name>/<version>/model.onnx, labels."""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.models import ModelSpec
from export.onnx import INPUT_NAME, OUTPUT_NAME

LABELS_FILE = "labels.txt"
DEFAULT_QUEUE_DELAY_US = 1000


def onnx_config(
    spec: ModelSpec, name: str, max_batch_size: int, instance_count: int = 1, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
) -> mc.ModelConfig:
    """Triton's config for an ONNX classifier: NCHW FP32 in, logits out, dynamic batching on."""
    return mc.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=max_batch_size,
        input=[
            mc.ModelInput(
                name=INPUT_NAME,
                data_type=mc.TYPE_FP32,
                format=mc.ModelInput.FORMAT_NCHW,
                dims=[3, spec.crop_size, spec.crop_size],
            )
        ],
        output=[
            mc.ModelOutput(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[spec.num_classes], label_filename=LABELS_FILE)
        ],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(count=instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )


def model_dir(repository: Path, name: str) -> Path:
    return repository / name


def version_dir(repository: Path, name: str, version: int) -> Path:
    return model_dir(repository, name) / str(version)


def write_entry(repository: Path, config: mc.ModelConfig, labels: tuple[str, ...]) -> Path:
    """config.pbtxt and labels next to the version folders; returns the config path."""
    folder = model_dir(repository, config.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    config_path = folder / "config.pbtxt"
    config_path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return config_path
