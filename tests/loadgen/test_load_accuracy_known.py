"""Accuracy under load that can catch a wrong answer: ``ipsbench-load --images DIR --accuracy-every 1`` against a real
ipsbench-serve whose classifier's right answer is known (``onnx_test_models.write_colour_classifier``: class k is
the k-th of six colours), over an ImageNet-layout folder of noisy JPEGs of each colour.

The labels come from the folder, not from the model, so a front that preprocesses wrongly shows as lost top-1:
feeding BGR to the RGB model turns every colour into the other of its pair (none right), and leaving the pixels
unnormalized keeps two of the six colours (a third of the images).
"""
import io

import numpy as np
import pytest
from load_helpers import assert_accounted
from onnx_test_models import KNOWN_COLOURS, write_colour_classifier
from PIL import Image

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.preprocess.recipe import Recipe

SIZE, RESIZE = 32, 36
PER_CLASS = 2
IMAGES = PER_CLASS * len(KNOWN_COLOURS)
RIGHT = Recipe(SIZE, RESIZE)
FRONTS = {
    # plain entry → (front kind, the recipe its front applies)
    "colours": [("jpeg", RIGHT), ("uint8", RIGHT)],
    "colours_bgr": [("jpeg", Recipe(SIZE, RESIZE, channel_order="bgr"))],
    "colours_unnormalized": [("jpeg", Recipe(SIZE, RESIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))],
}
UNNORMALIZED_TOP1 = 0.5
"""Unnormalized, only orange and azure are still nearest their own prototype: 1/3 of each pass over the folder,
at most 1/2 of the images however far the run got into its last pass (it checks every image at least once)."""
RUN = ("--accuracy-every", "1", "--distinct-requests", str(IMAGES), "--concurrency", "1",
       "--warmup", "300ms", "--duration", "2s", "--drain", "5s")


def colour_jpeg(colour: tuple[int, int, int], width: int, height: int, rng: np.random.Generator) -> bytes:
    """A JPEG of ``colour`` with per-pixel noise of ±25 levels (the mean over the crop stays the colour's)."""
    noise = rng.integers(-25, 26, (height, width, 3))
    pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """ImageNet's validation layout: ``n0000000k/`` holds images of colour k (labels are the sorted folders' index,
    so class k of the classifier), landscape and portrait, both resized and cropped by the recipe."""
    root = tmp_path_factory.mktemp("colours") / "val"
    rng = np.random.default_rng(11)
    for label, (_, colour) in enumerate(KNOWN_COLOURS):
        synset = root / f"n{label:08d}"
        synset.mkdir(parents=True)
        for number, (width, height) in enumerate([(48, 40), (40, 56)][:PER_CLASS]):
            (synset / f"ILSVRC2012_val_{label}{number}.JPEG").write_bytes(colour_jpeg(colour, width, height, rng))
    return root


@pytest.fixture(scope="module")
def colour_server(tmp_path_factory, start_module_server):
    """ipsbench-serve with the colour classifier, plain and behind the fronts of :data:`FRONTS`."""
    repository = tmp_path_factory.mktemp("colour-models") / "models"
    for name, fronts in FRONTS.items():
        write_colour_classifier(repository, name, size=SIZE, resize=RESIZE)
        for kind, recipe in fronts:
            write_preprocess_front(repository, name, kind, recipe)
    return start_module_server(repository)


def accuracy_under_load(start_load, server, folder, model: str, payload: str) -> dict:
    """The report's accuracy block of a short run checking every request; every image checked at least once."""
    run = start_load(server.grpc_url, "--images", str(folder), "--payload", payload, *RUN, model=model)
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    accuracy = report["accuracy"]
    assert accuracy["every_nth_request"] == 1 and accuracy["checked_images"] >= IMAGES, accuracy
    return accuracy


@pytest.mark.parametrize(("model", "payload"), [
    ("colours_jpeg", "jpeg"),  # the server decodes, resizes, crops and normalizes
    ("colours_uint8", "uint8"),  # ipsbench-load resizes and crops, the server normalizes
    ("colours", "fp32"),  # ipsbench-load preprocesses with the recipe the plain model's config states
])
def test_the_right_preprocessing_answers_every_known_label(colour_server, colour_folder, start_load, model, payload):
    accuracy = accuracy_under_load(start_load, colour_server, colour_folder, model, payload)
    assert accuracy["top1"] == 1.0 and accuracy["top5"] == 1.0, accuracy


def test_a_front_feeding_bgr_to_an_rgb_model_gets_every_colour_wrong(colour_server, colour_folder, start_load):
    accuracy = accuracy_under_load(start_load, colour_server, colour_folder, "colours_bgr_jpeg", "jpeg")
    assert accuracy["top1"] == 0.0, accuracy


def test_a_front_with_the_wrong_mean_and_std_loses_most_colours(colour_server, colour_folder, start_load):
    accuracy = accuracy_under_load(start_load, colour_server, colour_folder, "colours_unnormalized_jpeg", "jpeg")
    assert 0.0 < accuracy["top1"] <= UNNORMALIZED_TOP1, accuracy
