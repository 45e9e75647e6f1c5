"""Preprocessing fronts: a second repository entry for an exported classifier that takes images instead of tensors.

``<name>_jpeg`` takes encoded JPEG/PNG images (input ``image``, BYTES, dims [1]); ``<name>_uint8`` takes decoded,
resized and cropped HWC RGB pixels (input ``image``, UINT8, dims [crop, crop, 3]). ipsbench-serve turns either into
the engine's normalized NCHW input as the ``ipsbench.preprocess*`` parameters of the entry's config.pbtxt say. The
model files are the plain entry's, hard-linked where the filesystem allows (else copied); other files in the
version folders are copied.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

KINDS = ("jpeg", "uint8")
CLIENT_INPUT = "image"
CONFIG_FILENAME = "config.pbtxt"
PARAMETER_PREFIX = "ipsbench.preprocess"
MODEL_FILENAMES = ("model.onnx", "model.plan", "model.pt")
"""Model files hard-linked into the front's version folders (Triton's default names)."""
_ENGINE_TYPES = {mc.TYPE_FP32: "FP32", mc.TYPE_FP16: "FP16"}


def front_name(name: str, kind: str) -> str:
    """``resnet50`` + ``jpeg`` → ``resnet50_jpeg``."""
    return f"{name}_{kind}"


def write_preprocess_front(
    repository: Path,
    name: str,
    kind: str,
    *,
    resize: int,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Path:
    """Write ``<repository>/<name>_<kind>`` from the plain entry ``<repository>/<name>``; return the new folder.

    The plain entry must have one NCHW input ``[3, crop, crop]`` in FP32 or FP16 and ``max_batch_size > 0``. An
    existing front of the same name is replaced; any other folder of that name is left alone (FileExistsError).
    """
    repository = Path(repository)
    if kind not in KINDS:
        raise ValueError(f"unknown front kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop} resize={resize}")
    mean_text, std_text = _triple("mean", mean), _triple("std", std)
    if any(float(v) <= 0 for v in std):
        raise ValueError(f"std values must be > 0, got {list(std)}")
    source = repository / name
    plain = _read_config(source / CONFIG_FILENAME)
    engine_input, engine_type = _engine_input(plain, crop)

    config = mc.ModelConfig()
    config.CopyFrom(plain)
    config.name = front_name(name, kind)
    del config.input[:]
    if kind == "jpeg":
        config.input.add(name=CLIENT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    else:
        config.input.add(name=CLIENT_INPUT, data_type=mc.TYPE_UINT8, dims=[crop, crop, 3])
    for warmup in config.model_warmup:
        # Warm-up data for the engine's tensor does not fit the image input; the server generates an image.
        warmup.inputs.clear()
    parameters = {
        PARAMETER_PREFIX: kind,
        f"{PARAMETER_PREFIX}.engine_input": engine_input,
        f"{PARAMETER_PREFIX}.engine_datatype": engine_type,
        f"{PARAMETER_PREFIX}.resize": str(resize),
        f"{PARAMETER_PREFIX}.crop": str(crop),
        f"{PARAMETER_PREFIX}.mean": mean_text,
        f"{PARAMETER_PREFIX}.std": std_text,
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value

    target = repository / config.name
    _clear_previous_front(target)
    target.mkdir(parents=True)
    linked = set(MODEL_FILENAMES) | ({plain.default_model_filename} - {""})

    def link_model_files(source_file: str, destination: str) -> str:
        if Path(source_file).name in linked:
            return _link_or_copy(source_file, destination)
        # Anything else (ONNX external data, checksum manifests) is copied: the server refuses hard-linked
        # external data files.
        return shutil.copy2(source_file, destination)

    for entry in sorted(source.iterdir()):
        if entry.name == CONFIG_FILENAME or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, copy_function=link_model_files)
        elif entry.is_file():
            # Labels and other side files next to config.pbtxt.
            shutil.copy2(entry, target / entry.name)
    (target / CONFIG_FILENAME).write_text(text_format.MessageToString(config), encoding="utf-8")
    return target


def _read_config(path: Path) -> mc.ModelConfig:
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILENAME} at {path}: export the model first")
    config = mc.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def _engine_input(plain: mc.ModelConfig, crop: int) -> tuple[str, str]:
    """The plain entry's input name and wire type, checked to be what the front produces."""
    if plain.max_batch_size <= 0:
        raise ValueError(f"model '{plain.name}' has no batch dimension (max_batch_size 0); a front needs one")
    if len(plain.input) != 1:
        raise ValueError(f"model '{plain.name}' has {len(plain.input)} inputs; a front needs exactly one image input")
    tensor = plain.input[0]
    if tensor.data_type not in _ENGINE_TYPES:
        raise ValueError(f"input '{tensor.name}' of model '{plain.name}' is {mc.DataType.Name(tensor.data_type)}; "
                         "a front feeds TYPE_FP32 or TYPE_FP16")
    if list(tensor.dims) != [3, crop, crop]:
        raise ValueError(
            f"input '{tensor.name}' of model '{plain.name}' has dims {list(tensor.dims)}; "
            f"a front with crop {crop} produces [3, {crop}, {crop}]"
        )
    return tensor.name, _ENGINE_TYPES[tensor.data_type]


def _triple(what: str, values: Sequence[float]) -> str:
    numbers = [float(v) for v in values]
    if len(numbers) != 3:
        raise ValueError(f"{what} needs 3 values (one per RGB channel), got {len(numbers)}")
    return ",".join(format(v, ".10g") for v in numbers)


def _clear_previous_front(target: Path) -> None:
    if not target.exists():
        return
    config = target / CONFIG_FILENAME
    if config.is_file() and PARAMETER_PREFIX in _read_config(config).parameters:
        shutil.rmtree(target)
        return
    raise FileExistsError(f"{target} exists and is not a preprocessing front; not overwriting it")


def _link_or_copy(source: str, destination: str) -> str:
    """Hard link (no extra disk for large engines), or a copy across filesystems or where links are refused."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination
