"""L18: unreadable images in an ``--images`` folder (truncated, not an image, over the decode limits) are skipped and
counted, or refused up front with ``--strict-images``, for every payload mode; real runs against a real
ipsbench-serve and its ``_uint8`` / ``_jpeg`` fronts."""
import shutil

import numpy as np
import pytest
from load_helpers import assert_accounted
from PIL import Image

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.loadgen.image_sources import folder_source
from ipsbench.server.preprocess.recipe import Recipe

QUICK = ("--warmup", "300ms", "--duration", "1s", "--drain", "5s")
MODELS = {"fp32": "resnet18", "uint8": "resnet18_uint8", "jpeg": "resnet18_jpeg"}


def good_jpeg(path, colour):
    Image.new("RGB", (96, 80), colour).save(path, "JPEG", quality=90)


def folder_with_bad_images(root, bad=("truncated",)):
    """Five good JPEGs and the bad files asked for: ``truncated`` (a JPEG cut in half), ``text`` (not an image),
    ``bomb`` (a PNG whose header claims more pixels than the decode limit)."""
    root.mkdir()
    for number in range(5):
        good_jpeg(root / f"good{number}.jpg", (40 * number, 90, 200))
    if "truncated" in bad:  # a noisy JPEG whose header is intact and whose last third is missing
        noise = np.random.default_rng(0).integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "cut.jpg", "JPEG", quality=90)
        data = (root / "cut.jpg").read_bytes()
        (root / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    if "text" in bad:
        (root / "notes.jpg").write_text("not an image at all\n")
    if "bomb" in bad:
        Image.new("1", (8000, 8000)).save(root / "huge.png", "PNG")  # 64 M pixels, a few KB encoded
    return root


@pytest.fixture(scope="module")
def front_server(model_repository, tmp_path_factory, start_module_server):
    """resnet18 with its ``_uint8`` and ``_jpeg`` fronts."""
    repository = tmp_path_factory.mktemp("fronts") / "models"
    shutil.copytree(model_repository, repository)
    for mode in ("uint8", "jpeg"):
        write_preprocess_front(repository, "resnet18", mode, Recipe(crop=64, resize=73))
    return start_module_server(repository)


def test_L18_unreadable_files_are_skipped_with_their_reasons(tmp_path):
    folder = folder_with_bad_images(tmp_path / "images", bad=("truncated", "text", "bomb"))
    read = folder_source(folder, count=16)
    assert sorted(image.name for image in read.images) == [f"good{n}.jpg" for n in range(5)]
    reasons = dict(read.skipped)
    assert sorted(reasons) == ["cut.jpg", "huge.png", "notes.jpg"]
    assert "does not decode" in reasons["cut.jpg"]
    assert "not a JPEG or PNG" in reasons["notes.jpg"]
    assert "over the limit" in reasons["huge.png"]


@pytest.mark.parametrize("mode", ["fp32", "uint8", "jpeg"])
def test_L18_a_truncated_image_is_skipped_counted_and_reported(front_server, start_load, tmp_path, mode):
    folder = folder_with_bad_images(tmp_path / "images")
    run = start_load(front_server.grpc_url, "--payload", mode, "--images", str(folder), "--concurrency", "1",
                     *QUICK, model=MODELS[mode])
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    payload = report["payload"]
    assert payload["skipped_images"] == 1 and payload["source_images"] == 5
    assert payload["skipped_image_examples"][0].startswith("cut.jpg: ")
    assert report["totals"]["failed"] == 0 and report["totals"]["ok"] > 0  # the server got no bad image
    assert "skipped 1 of 6 images" in run.stderr() and "cut.jpg" in run.stderr()
    assert "1 of 6 images skipped" in (run.out / "report.md").read_text()
    assert "1 of 6 images skipped" in (run.out / "report.html").read_text()


def test_L18_the_warning_names_only_the_first_three_bad_files(server, start_load, tmp_path):
    folder = folder_with_bad_images(tmp_path / "images")
    for number in range(4):
        (folder / f"zz{number}.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    run = start_load(server.grpc_url, "--images", str(folder), "--concurrency", "1", *QUICK)
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    (line,) = [line for line in run.stderr().splitlines() if "skipped 5 of 10 images" in line]
    assert "cut.jpg" in line and "zz0.jpg" in line and "zz1.jpg" in line and "(and 2 more)" in line
    assert "zz2.jpg" not in line and "zz3.jpg" not in line
    assert len(run.report()["payload"]["skipped_image_examples"]) == 3


@pytest.mark.parametrize("mode", ["fp32", "jpeg"])
def test_L18_strict_images_refuses_the_run_naming_the_first_bad_file(front_server, start_load, tmp_path, mode):
    folder = folder_with_bad_images(tmp_path / "images", bad=("truncated", "text"))
    run = start_load(front_server.grpc_url, "--payload", mode, "--images", str(folder), "--strict-images",
                     *QUICK, model=MODELS[mode])
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    assert "--strict-images" in run.stderr() and "cut.jpg" in run.stderr()
    assert not (run.out / "report.json").exists()


def test_L18_a_folder_of_only_bad_images_exits_2_saying_so(server, start_load, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_text("text")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    run = start_load(server.grpc_url, "--images", str(folder), *QUICK)
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    assert "none of the 2 images" in run.stderr() and "a.jpg" in run.stderr()
    assert not (run.out / "report.json").exists()
