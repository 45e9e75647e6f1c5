"""Triton's model repository layout, spelled once for every role: folder and file names, the model-name rule and
the config file's text format.

``<root>/<model>/config.pbtxt``, ``<root>/<model>/<version>/<model file>`` and the labels next to the config.
ipsbench-export writes this layout and ipsbench-serve reads it (:mod:`~ipsbench.server.repository.scan`); the same
folder loads in Triton.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

CONFIG_FILENAME = "config.pbtxt"
LABELS_FILENAME = "labels.txt"
"""The class labels ipsbench-export writes (one per line), named by each output's ``label_filename``."""
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MODEL_FILENAMES = {"onnxruntime": "model.onnx", "pytorch": "model.pt", "tensorrt": "model.plan"}
"""Triton's default model file name per backend (a config's ``default_model_filename`` may name another)."""
MAX_CONFIG_BYTES = 1024 * 1024


def model_dir(root: Path, name: str) -> Path:
    return Path(root) / name


def version_dir(root: Path, name: str, version: int) -> Path:
    return model_dir(root, name) / str(version)


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """config.pbtxt's text → ModelConfig; ``text_format.ParseError`` when it is not one."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


def read_config(folder: Path) -> model_config_pb2.ModelConfig:
    """The config of the model in ``folder`` (a tool's read of its own repository; the server reads through
    :mod:`~ipsbench.server.repository.scan`, which checks sizes and paths)."""
    path = Path(folder) / CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILENAME} in {folder}")
    return parse_config(path.read_text(encoding="utf-8"))


def write_config(folder: Path, config: model_config_pb2.ModelConfig) -> Path:
    """Write ``config`` as ``folder/config.pbtxt``; returns its path."""
    path = Path(folder) / CONFIG_FILENAME
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return path
