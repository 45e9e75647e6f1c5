"""An installed ipsbench is the ``ipsbench`` package and nothing else: the wheel, installed into a fresh environment,
imports as ``ipsbench.server``, ``ipsbench.loadgen`` and ``ipsbench.export``, its commands run, and it puts no
top-level ``server``, ``loadgen`` or ``export`` module where another project's could be shadowed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("server", "loadgen", "export", "matrix")
BUILD_TIMEOUT_S = 300


def declared_packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def package_folders() -> list[str]:
    """``ipsbench.<role>.<sub>`` for every folder of the roles that holds an ``__init__.py``."""
    found = []
    for role in ROLES:
        for init in sorted((ROOT / role).rglob("__init__.py")):
            found.append(".".join(("ipsbench", *init.parent.relative_to(ROOT).parts)))
    return found


def test_every_package_folder_is_declared_in_pyproject():
    assert sorted(declared_packages()) == sorted(package_folders())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the built wheel installed (no dependencies: those are made visible from
    the test environment's site-packages by a path entry, whose own ``.pth`` files, the editable install's finder
    among them, are not run)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: an in-tree build would leave build/ and egg-info folders in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for role in ROLES:
        shutil.copytree(ROOT / role, source / role, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
         str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("ipsbench-*.whl")
    top_level = {Path(name).parts[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert top_level == {"ipsbench", wheel.name.split("-py3")[0] + ".dist-info"}, top_level
    env = work / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return env


def run_in(env: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_installed_wheel_imports_through_ipsbench_only(installed, tmp_path):
    script = (
        "import importlib, pkgutil, ipsbench\n"
        "names = sorted(m.name for m in pkgutil.walk_packages(ipsbench.__path__, 'ipsbench.')\n"
        "               if not m.name.endswith('.__main__'))\n"
        "skipped = []\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        if error.name.split('.')[0] in ('tensorrt', 'cupy'):\n"  # GPU-only libraries this box lacks
        "            skipped.append(name)\n"
        "            continue\n"
        "        raise\n"
        "    assert importlib.import_module(name).__file__.startswith(ipsbench.__path__[0]), name\n"
        "print(len(names), 'modules', 'skipped', skipped)\n"
        "for top in ('server', 'loadgen', 'export', 'matrix'):\n"
        "    try:\n"
        "        importlib.import_module(top)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'a top-level {top!r} module is importable')\n"
    )
    result = run_in(installed, str(installed / "bin" / "python"), "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(result.stdout.split()[0])
    assert count > 60, result.stdout  # every module of the three roles was imported from the wheel


@pytest.mark.parametrize("command", ["ipsbench-serve", "ipsbench-load", "ipsbench-export", "ipsbench"])
def test_the_installed_commands_run(installed, tmp_path, command):
    result = run_in(installed, str(installed / "bin" / command), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage:" in result.stdout
