"""deploy/compose.yaml: parses, references only images built here or pinned public ones and files that exist,
and wires the server, the export job, the locust masters, the workers and Prometheus the way its README says."""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_helpers import DEPLOY, DOCKERFILES, KUSTOMIZATIONS, REPO_ROOT, containers, load_compose, render


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def duration_s(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert match, text
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


def built_images(compose: dict) -> dict[str, str]:
    """image name → Dockerfile, for the services that build their image here."""
    return {s["image"]: s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s}


def test_every_service_uses_an_image_built_here_or_a_pinned_public_one(compose):
    dockerfiles = {str(p.relative_to(REPO_ROOT)) for p in DOCKERFILES}
    for name, service in compose["services"].items():
        image = service["image"]
        if "build" in service:
            assert (DEPLOY / service["build"]["context"]).resolve() == REPO_ROOT, name
            assert service["build"]["dockerfile"] in dockerfiles, name
            assert image.startswith("ipsbench/"), name
        else:
            assert image not in built_images(compose)
            _, _, tag = image.rpartition(":")
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: public image {image} is not pinned to a release"
    # One image name per Dockerfile, so `docker compose build` never builds the same name two ways.
    assert len(set(built_images(compose).values())) == len(built_images(compose))


def test_kubernetes_uses_the_images_compose_builds(compose):
    used = {c["image"] for folder in KUSTOMIZATIONS for doc in render(folder)
            if doc["kind"] in ("Deployment", "Job") for c in containers(doc)}
    assert used == set(built_images(compose)), used


def test_every_mounted_file_exists_and_named_volumes_are_declared(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = DEPLOY / source
                # Docker creates a missing bind-mounted folder (./reports) but never a missing file.
                if path.suffix:
                    assert path.is_file(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_server_reserves_a_gpu_mounts_models_read_only_and_outlasts_its_drain(compose):
    server = compose["services"]["server"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    command = server["command"]
    assert f"models:{option(command, '--model-repository')}:ro" in server["volumes"]
    assert option(command, "--host") == "0.0.0.0"
    assert duration_s(server["stop_grace_period"]) > float(option(command, "--grace-period-s"))
    assert server["depends_on"]["export"]["condition"] == "service_completed_successfully"
    export = compose["services"]["export"]
    assert f"models:{option(export['command'], '--out')}" in export["volumes"]
    ports = {int(p.split(":")[1]) for p in server["ports"]}
    assert ports == {int(option(command, "--grpc-port")), int(option(command, "--metrics-port"))}


def test_profiles_separate_the_web_ui_the_headless_run_and_prometheus(compose):
    services = compose["services"]
    assert "profiles" not in services["server"] and "profiles" not in services["export"]
    assert services["load-ui"]["profiles"] == ["ui"]
    assert services["load-run"]["profiles"] == ["run"]
    assert sorted(services["worker"]["profiles"]) == ["run", "ui"]
    assert services["prometheus"]["profiles"] == ["metrics"]
    assert option(services["load-ui"]["command"], "--web-host") == "0.0.0.0"
    assert "8089:8089" in services["load-ui"]["ports"]


def test_workers_join_whichever_master_runs(compose):
    services = compose["services"]
    master_host, _, master_port = option(services["worker"]["command"], "--master").rpartition(":")
    for name in ("load-ui", "load-run"):
        master = services[name]
        assert master_host in master["networks"]["default"]["aliases"], name
        assert option(master["command"], "--master-bind") == f"0.0.0.0:{master_port}", name
        assert option(master["command"], "--target") == f"server:{option(services['server']['command'], '--grpc-port')}"
        assert master["depends_on"]["server"]["condition"] == "service_healthy"


def test_one_variable_sets_the_worker_count_and_what_the_masters_wait_for():
    services = load_compose({"WORKERS": "5"})["services"]
    assert int(services["worker"]["deploy"]["replicas"]) == 5
    for name in ("load-ui", "load-run"):
        assert option(services[name]["command"], "--remote-workers") == "5"


def test_the_headless_run_leaves_its_report_in_the_mounted_reports_folder(compose):
    run = compose["services"]["load-run"]
    out = option(run["command"], "--out")
    bind = next(v for v in run["volumes"] if v.startswith("./reports:"))
    assert out.startswith(bind.split(":")[1].rstrip("/") + "/")
    assert "--latency-slo" in run["command"] and "--metrics-url" in run["command"]


def test_prometheus_scrapes_the_servers_metrics_port(compose):
    prometheus = compose["services"]["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v.startswith("./prometheus.yml:"))
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert mount.split(":")[1] in " ".join(prometheus["command"])
    targets = [t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    metrics_port = option(compose["services"]["server"]["command"], "--metrics-port")
    assert targets == [f"server:{metrics_port}"]


def test_containers_that_need_no_writes_run_read_only_without_privileges(compose):
    for name, service in compose["services"].items():
        if name == "prometheus":
            continue
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "/tmp" in service["tmpfs"], name
