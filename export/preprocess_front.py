"""Preprocessing fronts: a second repository entry for an exported classifier that takes images instead of tensors.

``<name>_jpeg`` takes encoded JPEG/PNG images (input ``image``, BYTES, dims [1]); ``<name>_uint8`` takes decoded,
resized and cropped HWC RGB pixels (input ``image``, UINT8, dims [crop, crop, 3]). ipsbench-serve turns either into
the engine's normalized NCHW input as the ``ipsbench.preprocess*`` parameters of the entry's config.pbtxt say (on
the CPU or a GPU, as ``ipsbench.preprocess.device`` says: ``--preprocess-device``). The
model files are the plain entry's, hard-linked where the filesystem allows (else copied); other files in the
version folders are copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.server.preprocess.recipe import (
    FRONT_INPUT,
    FRONT_KINDS,
    PARAMETER_PREFIX,
    PREPROCESS_DEVICES,
    Front,
    Recipe,
    front_name,
)
from ipsbench.server.repository.layout import CONFIG_FILENAME, MODEL_FILENAMES, read_config, write_config

_ENGINE_TYPES = {mc.TYPE_FP32: "FP32", mc.TYPE_FP16: "FP16"}


def write_preprocess_front(repository: Path, name: str, kind: str, recipe: Recipe, device: str = "auto") -> Path:
    """Write ``<repository>/<name>_<kind>`` from the plain entry ``<repository>/<name>``; return the new folder.

    ``device``: where the server is to preprocess (``ipsbench.preprocess.device``: ``auto``, ``cpu`` or ``gpu``).

    The plain entry must have one NCHW input ``[3, crop, crop]`` in FP32 or FP16 and ``max_batch_size > 0``. An
    existing front of the same name is replaced; any other folder of that name is left alone (FileExistsError).
    """
    repository = Path(repository)
    if kind not in FRONT_KINDS:
        raise ValueError(f"unknown front kind {kind!r}; choose one of {', '.join(FRONT_KINDS)}")
    if device not in PREPROCESS_DEVICES:
        raise ValueError(f"unknown preprocessing device {device!r}; choose one of {', '.join(PREPROCESS_DEVICES)}")
    source = repository / name
    plain = _read_plain_config(source)
    engine_input, engine_type = _engine_input(plain, recipe.crop)
    crop = recipe.crop

    config = mc.ModelConfig()
    config.CopyFrom(plain)
    config.name = front_name(name, kind)
    del config.input[:]
    if kind == "jpeg":
        config.input.add(name=FRONT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    else:
        config.input.add(name=FRONT_INPUT, data_type=mc.TYPE_UINT8, dims=[crop, crop, 3])
    for warmup in config.model_warmup:
        # Warm-up data for the engine's tensor does not fit the image input; the server generates an image.
        warmup.inputs.clear()
    # The front's recipe replaces whatever preprocessing the plain entry stated (a key it omits, such as
    # channel_order for rgb, must not survive from the plain entry).
    for key in [key for key in config.parameters if key.startswith(PARAMETER_PREFIX)]:
        del config.parameters[key]
    for key, value in Front(kind, recipe, engine_input, engine_type, device=device).parameters().items():
        config.parameters[key].string_value = value

    target = repository / config.name
    _clear_previous_front(target)
    target.mkdir(parents=True)
    linked = set(MODEL_FILENAMES.values()) | ({plain.default_model_filename} - {""})

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
    write_config(target, config)
    return target


def _read_plain_config(folder: Path) -> mc.ModelConfig:
    if not (folder / CONFIG_FILENAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_FILENAME} at {folder}: export the model first")
    return read_config(folder)


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


def _clear_previous_front(target: Path) -> None:
    if not target.exists():
        return
    if (target / CONFIG_FILENAME).is_file() and PARAMETER_PREFIX in read_config(target).parameters:
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
