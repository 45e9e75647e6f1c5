"""write_preprocess_front: the ``<name>_jpeg`` / ``<name>_uint8`` entries next to an exported classifier.

Serving the fronts (and comparing their answers with client-side preprocessing) is tested in
tests/server/test_server_preprocess.py; here the written repository entry itself is checked, and loaded the way the
server loads it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.preprocess.recipe import Recipe
from ipsbench.server.repository.scan import load_model_source

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def write_front(repository: Path, name: str, kind: str, **recipe) -> Path:
    """``write_preprocess_front`` with the recipe given as its fields (ImageNet's mean and std by default)."""
    return write_preprocess_front(repository, name, kind, Recipe(**{**IMAGENET, **recipe}))


@pytest.fixture
def repository(model_repository, tmp_path) -> Path:
    """A private repository holding the session's exported resnet18 (64x64), files hard-linked."""
    shutil.copytree(model_repository / "resnet18", tmp_path / "resnet18", copy_function=os.link)
    return tmp_path


def read_config(folder: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def test_jpeg_front_entry(repository):
    folder = write_front(repository, "resnet18", "jpeg", resize=73, crop=64)
    assert folder == repository / "resnet18_jpeg"
    plain, front = read_config(repository / "resnet18"), read_config(folder)
    assert front.name == "resnet18_jpeg"
    assert [(i.name, i.data_type, list(i.dims)) for i in front.input] == [("image", mc.TYPE_STRING, [1])]
    assert front.output == plain.output and front.max_batch_size == plain.max_batch_size
    assert front.dynamic_batching == plain.dynamic_batching and front.instance_group == plain.instance_group
    params = {key: value.string_value for key, value in front.parameters.items()}
    assert params == {
        **{key: value.string_value for key, value in plain.parameters.items()},
        "ipsbench.preprocess": "jpeg",
        "ipsbench.preprocess.engine_input": plain.input[0].name,
        "ipsbench.preprocess.engine_datatype": "FP32",
        "ipsbench.preprocess.device": "auto",
        "ipsbench.preprocess.resize": "73",
        "ipsbench.preprocess.crop": "64",
        "ipsbench.preprocess.mean": "0.485,0.456,0.406",
        "ipsbench.preprocess.std": "0.229,0.224,0.225",
    }
    label_file = plain.output[0].label_filename
    assert label_file and (folder / label_file).read_text() == (repository / "resnet18" / label_file).read_text()
    model, linked = repository / "resnet18" / "1" / "model.onnx", folder / "1" / "model.onnx"
    assert os.path.samefile(model, linked), "the model file is hard-linked, not copied"


def test_uint8_front_entry_loads_as_the_server_loads_it(repository):
    write_front(repository, "resnet18", "uint8", resize=73, crop=64)
    source = load_model_source(repository.resolve(), "resnet18_uint8")
    spec = source.spec
    assert spec.inputs["image"].datatype.protocol == "UINT8" and spec.inputs["image"].dims == (64, 64, 3)
    assert spec.preprocess.kind == "uint8" and spec.engine_spec().inputs["input"].dims == (3, 64, 64)
    assert sorted(source.version_files) == [1]


def test_fp16_engine_and_warmup_inputs(repository):
    config_path = repository / "resnet18" / "config.pbtxt"
    config = read_config(repository / "resnet18")
    config.input[0].data_type = mc.TYPE_FP16
    warmup = config.model_warmup.add(name="full", batch_size=8, count=2)
    warmup.inputs["input"].data_type = mc.TYPE_FP16
    warmup.inputs["input"].dims.extend([3, 64, 64])
    warmup.inputs["input"].zero_data = True
    config_path.unlink()  # hard-linked from the session's repository: replace, never write through
    config_path.write_text(text_format.MessageToString(config))
    front = read_config(write_front(repository, "resnet18", "jpeg", resize=73, crop=64))
    assert front.parameters["ipsbench.preprocess.engine_datatype"].string_value == "FP16"
    assert [(w.batch_size, w.count, dict(w.inputs)) for w in front.model_warmup] == [(8, 2, {})]


def test_writing_again_replaces_the_front(repository):
    write_front(repository, "resnet18", "jpeg", resize=73, crop=64)
    (repository / "resnet18_jpeg" / "stale.txt").write_text("old")
    write_front(repository, "resnet18", "jpeg", resize=80, crop=64)
    assert not (repository / "resnet18_jpeg" / "stale.txt").exists()
    assert read_config(repository / "resnet18_jpeg").parameters["ipsbench.preprocess.resize"].string_value == "80"


def test_a_folder_that_is_not_a_front_is_never_overwritten(repository):
    (repository / "resnet18_jpeg").mkdir()
    (repository / "resnet18_jpeg" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a preprocessing front"):
        write_front(repository, "resnet18", "jpeg", resize=73, crop=64)
    assert (repository / "resnet18_jpeg" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("name", "kind", "args", "error", "message"),
    [
        ("resnet18", "png", dict(resize=73, crop=64), ValueError, "unknown front kind 'png'"),
        ("resnet18", "jpeg", dict(resize=256, crop=224), ValueError, "has dims [3, 64, 64]; a front with crop 224"),
        ("resnet18", "jpeg", dict(resize=60, crop=64), ValueError, "needs 0 < crop <= resize"),
        ("resnet18", "jpeg", dict(resize=73, crop=64, std=(0.2, 0, 0.2)), ValueError, "std values must be > 0"),
        ("resnet18", "jpeg", dict(resize=73, crop=64, mean=(0.5, 0.5)), ValueError, "need three finite values"),
        ("nope", "jpeg", dict(resize=73, crop=64), FileNotFoundError, "export the model first"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(repository, name, kind, args, error, message):
    with pytest.raises(error) as caught:
        write_front(repository, name, kind, **args)
    assert message in str(caught.value)
    assert not (repository / f"{name}_{kind}").exists()


def test_the_fronts_recipe_replaces_the_plain_entrys_preprocessing(repository):
    """A plain entry that states bgr (a Caffe-trained model) with a front written for rgb: the front's
    preprocessing is its own recipe alone, no channel order left over from the plain entry."""
    config_file = repository / "resnet18" / "config.pbtxt"
    plain = read_config(repository / "resnet18")
    plain.parameters["ipsbench.preprocess.channel_order"].string_value = "bgr"
    config_file.unlink()  # hard-linked to the session's repository: write a file of this test's own
    config_file.write_text(text_format.MessageToString(plain))
    front = read_config(write_front(repository, "resnet18", "uint8", resize=73, crop=64))
    assert "ipsbench.preprocess.channel_order" not in front.parameters
    assert front.parameters["ipsbench.preprocess"].string_value == "uint8"
