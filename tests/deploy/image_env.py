"""A stand-in for an image's Python environment, since the tests cannot build images (no Docker engine).

:func:`build_image_environment` links, into one folder, only what an image installs: the distributions in the
closure of pyproject's base requirements plus the extras its Dockerfile installs (followed through this
environment's metadata, for the images' platform), and the project packages its Dockerfile copies. A command run
by :func:`image_command` (``python -S``, that folder as its only site) cannot import anything else, so a package
missing from an image fails the test instead of the container.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
# What each Dockerfile installs and copies (deploy/docker/*.Dockerfile). The server image's GPU runtimes
# (onnxruntime-gpu, TensorRT) have no place on a CPU box: the server extra's CPU onnxruntime stands in.
IMAGES = {
    "server": {"extras": ("server",), "packages": ("server", "loadgen", "export")},
    "load": {"extras": ("loadgen",), "packages": ("server", "loadgen", "export")},
    "export": {"extras": ("export",), "packages": ("server", "loadgen", "export")},
}
MODULE_OF_PROGRAM = {
    "ipsbench-serve": "ipsbench.server", "ipsbench-load": "ipsbench.loadgen", "ipsbench-export": "ipsbench.export",
}
PLATFORM = {"python_version": "3.12", "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}


def closure(requirements: list[str]) -> set[str]:
    """Distribution names these requirements install, through the installed metadata, for the images' platform."""
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            dependency = Requirement(text)
            # It counts when its marker holds on the images' platform for the extras asked of its parent.
            if dependency.marker is None or any(
                dependency.marker.evaluate({**PLATFORM, "extra": extra}) for extra in ("", *requirement.extras)
            ):
                pending.append(dependency)
    return seen


def image_distributions(image: str) -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in IMAGES[image]["extras"]:
        requirements += project["optional-dependencies"][extra]
    return closure(requirements)


def build_image_environment(image: str, folder: Path) -> Path:
    """Link the image's distributions (top-level entries of their installed files) and packages into ``folder``."""
    folder.mkdir(parents=True)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    for name in image_distributions(image):
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in distribution.files or []:
            top = file.parts[0]
            source = site_packages / top
            if top not in ("..", "__pycache__") and source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    (folder / "ipsbench").mkdir()  # installed as ipsbench.<role> (a namespace package)
    for package in IMAGES[image]["packages"]:
        (folder / "ipsbench" / package).symlink_to(REPO_ROOT / package)
    return folder


def image_command(environment: Path, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``argv`` (an ipsbench-* command) with only ``environment``."""
    command = [sys.executable, "-S", "-m", MODULE_OF_PROGRAM[argv[0]], *argv[1:]]
    return command, dict(os.environ, PYTHONPATH=str(environment), PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
