"""Triton's equivalent of ipsbench's preprocessing fronts: a model repository Triton loads as it is.

ipsbench-serve's ``<name>_jpeg`` / ``<name>_uint8`` fronts preprocess inside the server from their
``ipsbench.preprocess*`` config parameters, which Triton ignores. :func:`write_triton_fronts` writes, for the same
request stream (input ``image``, the same model names), what Triton needs instead:

* ``<name>``: the plain classifier, copied unchanged (model files hard-linked where the filesystem allows);
* ``<name>_<kind>_preprocess``: a Python-backend model (``1/model.py``, from :mod:`triton_preprocess_model`) that
  turns ``image`` into the classifier's input with ipsbench's recipe, dynamically batched, on the CPU;
* ``<name>_<kind>``: an ensemble ``image`` → preprocess → classifier → the classifier's outputs (label files
  copied), so ``ipsbench-load --model <name>_jpeg --payload jpeg`` measures Triton as it measures ipsbench-serve.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export.preprocess_front import _engine_input, _link_or_copy, _read_plain_config
from ipsbench.server.preprocess.recipe import FRONT_INPUT, FRONT_KINDS, Front, Recipe, front_name
from ipsbench.server.preprocess.stage import decode_threads
from ipsbench.server.repository.layout import MODEL_FILENAMES, write_config

MODEL_TEMPLATE = Path(__file__).with_name("triton_preprocess_model.py")
PREPROCESSED = "preprocessed"
"""The ensemble's tensor between the preprocessing step and the classifier."""


def preprocess_name(name: str, kind: str) -> str:
    """``resnet50`` + ``jpeg`` → ``resnet50_jpeg_preprocess``."""
    return f"{front_name(name, kind)}_preprocess"


def write_triton_fronts(repository: Path, triton_dir: Path, name: str, kinds, recipe: Recipe) -> list[Path]:
    """Write ``triton_dir/<name>`` and, per kind in ``kinds``, ``<name>_<kind>_preprocess`` and ``<name>_<kind>``
    from the plain entry ``repository/<name>``; return the folders written (the classifier's first).

    Folders of those names already in ``triton_dir`` are replaced; ``triton_dir`` must not be ``repository``
    (the ipsbench fronts of the same names live there).
    """
    repository, triton_dir = Path(repository), Path(triton_dir)
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in FRONT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"front kinds must be some of {', '.join(FRONT_KINDS)}, got {list(kinds)}")
    triton_dir.mkdir(parents=True, exist_ok=True)
    if triton_dir.resolve() == repository.resolve():
        raise ValueError(f"the Triton repository {triton_dir} must be another folder than the ipsbench one: their "
                         f"<name>_<kind> entries differ")
    source = repository / name
    plain = _read_plain_config(source)
    engine_input, engine_datatype = _engine_input(plain, recipe.crop)

    written = [_copy_classifier(source, triton_dir / name, plain)]
    for kind in kinds:
        preprocess = _preprocess_config(plain, name, kind, recipe, engine_input, engine_datatype)
        folder = _fresh_folder(triton_dir / preprocess.name)
        (folder / "1").mkdir()
        shutil.copy2(MODEL_TEMPLATE, folder / "1" / "model.py")
        write_config(folder, preprocess)
        written.append(folder)

        ensemble = _ensemble_config(plain, name, kind, recipe, preprocess.name)
        folder = _fresh_folder(triton_dir / ensemble.name)
        # Triton needs a version folder for an ensemble too, empty.
        (folder / "1").mkdir()
        for output in plain.output:
            if output.label_filename:
                shutil.copy2(source / output.label_filename, folder / output.label_filename)
        write_config(folder, ensemble)
        written.append(folder)
    return written


def _preprocess_config(
    plain: mc.ModelConfig, name: str, kind: str, recipe: Recipe, engine_input: str, engine_datatype: str
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=preprocess_name(name, kind), backend="python", max_batch_size=plain.max_batch_size)
    config.input.append(_image_input(kind, recipe.crop))
    engine = plain.input[0]
    config.output.add(name=engine.name, data_type=engine.data_type, dims=list(engine.dims))
    config.dynamic_batching.SetInParent()
    # One Python stub process per instance: as many as ipsbench-serve's decode threads would be on this machine.
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=decode_threads())
    front = Front(kind, recipe, engine_input, engine_datatype)
    for key, value in front.parameters().items():
        config.parameters[key].string_value = value
    config.parameters["ipsbench.preprocess.max_pixels"].string_value = str(front.max_pixels)
    config.parameters["ipsbench.preprocess.max_image_bytes"].string_value = str(front.max_image_bytes)
    # Where to preprocess is ipsbench-serve's choice; here it is always this model's CPU instances.
    del config.parameters["ipsbench.preprocess.device"]
    return config


def _ensemble_config(plain: mc.ModelConfig, name: str, kind: str, recipe: Recipe, preprocess: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name=front_name(name, kind), platform="ensemble", max_batch_size=plain.max_batch_size)
    config.input.append(_image_input(kind, recipe.crop))
    config.output.extend(plain.output)
    steps = config.ensemble_scheduling.step
    first = steps.add(model_name=preprocess, model_version=-1)
    first.input_map[FRONT_INPUT] = FRONT_INPUT
    first.output_map[plain.input[0].name] = PREPROCESSED
    second = steps.add(model_name=name, model_version=-1)
    second.input_map[plain.input[0].name] = PREPROCESSED
    for output in plain.output:
        second.output_map[output.name] = output.name
    return config


def _image_input(kind: str, crop: int) -> mc.ModelInput:
    if kind == "jpeg":
        return mc.ModelInput(name=FRONT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    return mc.ModelInput(name=FRONT_INPUT, data_type=mc.TYPE_UINT8, dims=[crop, crop, 3])


def _copy_classifier(source: Path, target: Path, plain: mc.ModelConfig) -> Path:
    """``source`` as it is, the model files hard-linked (others, such as ONNX external data, copied)."""
    linked = set(MODEL_FILENAMES.values()) | ({plain.default_model_filename} - {""})

    def copy(source_file: str, destination: str) -> str:
        if Path(source_file).name in linked:
            return _link_or_copy(source_file, destination)
        return shutil.copy2(source_file, destination)

    _fresh_folder(target).rmdir()
    shutil.copytree(source, target, copy_function=copy, ignore=shutil.ignore_patterns(".*"))
    return target


def _fresh_folder(folder: Path) -> Path:
    """``folder``, empty: a previous export's is removed (a stray file of that name too)."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    elif folder.exists() or folder.is_symlink():
        os.unlink(folder)
    folder.mkdir()
    return folder
