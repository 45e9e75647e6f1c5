"""The Kubernetes manifests: every rendered kustomization (base and each overlay) validates against the Kubernetes
schemas offline, and holds the promises the deploy README makes (GPU, probes, drain, hardening, wiring)."""

from __future__ import annotations

import shutil

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import (
    K8S,
    KUSTOMIZATIONS,
    containers,
    find,
    k8s_commands,
    kustomize_tool,
    pod_spec,
    render,
    render_python,
    render_with_tool,
)

# The oldest release with every field used here on by default (preStop sleep, native gRPC probes), and the newest.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
IDS = [str(p.relative_to(K8S)) for p in KUSTOMIZATIONS]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=IDS)
def rendered(request) -> list[dict]:
    return render(request.param)


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def argv_of(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def server_container(docs: list[dict]) -> dict:
    deployment = find(docs, "Deployment", "ipsbench-server")
    return next(c for c in pod_spec(deployment)["containers"] if c["name"] == "server")


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def test_every_kustomization_is_found():
    assert {p.name for p in KUSTOMIZATIONS} >= {"base", "single-gpu", "fleet"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_validates_against_the_kubernetes_schema(rendered, version):
    assert len(rendered) >= 8
    for doc in rendered:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {error}")


def test_server_requests_one_gpu_and_probes_the_grpc_health_service(rendered):
    server = server_container(rendered)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    grpc_port = int(option(argv_of(server), "--grpc-port"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == grpc_port, probe
    # The startup probe, not liveness, covers model loading: at least five minutes before the first restart.
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_termination_grace_outlasts_the_prestop_pause_and_the_servers_drain(rendered):
    deployment = find(rendered, "Deployment", "ipsbench-server")
    server = server_container(rendered)
    drain_s = float(option(argv_of(server), "--grace-period-s"))
    pause_s = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > pause_s + drain_s


def test_models_are_mounted_read_only_where_the_server_reads_them(rendered):
    server = server_container(rendered)
    repository = option(argv_of(server), "--model-repository")
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == repository)
    assert mount.get("readOnly") is True
    exporter = next(c for c in containers(find(rendered, "Deployment", "ipsbench-server")) if c["name"] == "export")
    assert option(argv_of(exporter), "--out") == repository


def test_server_pods_and_service_carry_prometheus_scrape_annotations(rendered):
    metrics_port = option(argv_of(server_container(rendered)), "--metrics-port")
    template = find(rendered, "Deployment", "ipsbench-server")["spec"]["template"]
    service = find(rendered, "Service", "ipsbench-server")
    for annotations in (template["metadata"]["annotations"], service["metadata"]["annotations"]):
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == metrics_port
        assert annotations["prometheus.io/path"] == "/metrics"
    assert int(metrics_port) in [p["port"] for p in service["spec"]["ports"]]


def test_every_pod_runs_non_root_read_only_without_privilege_escalation(rendered):
    for doc in workloads(rendered):
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec.get("automountServiceAccountToken") is False
        for container in containers(doc):
            where = f"{doc['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert not context.get("privileged", False), where
            # A read-only root needs a writable /tmp (HOME, caches, matplotlib's config).
            assert "/tmp" in [m["mountPath"] for m in container.get("volumeMounts", [])], where


def test_every_service_selects_pods_that_expose_its_target_ports(rendered):
    for service in (d for d in rendered if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matching = [d for d in workloads(rendered)
                    if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        for doc in matching:
            ports = [p for c in containers(doc) for p in c.get("ports", [])]
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                    f"Service {service['metadata']['name']} port {port['name']} → {target}: not in "
                    f"{doc['kind']}/{doc['metadata']['name']}"
                )


def _service_port(docs: list[dict], host_port: str) -> tuple[dict, int]:
    host, _, port = host_port.rpartition(":")
    service = find(docs, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]], host_port
    return service, int(port)


def test_load_generators_reach_the_server_and_workers_reach_a_master_through_services(rendered):
    for doc in workloads(rendered):
        for container in containers(doc):
            argv = argv_of(container)
            if argv[:1] != ["ipsbench-load"]:
                continue
            if "--target" in argv:
                _service_port(rendered, option(argv, "--target"))
            if argv[1] == "worker":
                service, port = _service_port(rendered, option(argv, "--master"))
                selector = service["spec"]["selector"].items()
                masters = [d for d in workloads(rendered)
                           if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
                assert len(masters) == 1, f"{service['metadata']['name']} must select exactly one master"
                master_argv = argv_of(pod_spec(masters[0])["containers"][0])
                assert option(master_argv, "--master-bind") == f"0.0.0.0:{port}"


def _expanded_commands(folder) -> dict[str, list[str]]:
    return {c.where.split(" ", 1)[1]: list(c.argv) for c in k8s_commands(folder)}


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=IDS)
def test_the_slo_master_waits_for_as_many_workers_as_the_worker_job_starts(folder):
    docs = render(folder)
    commands = _expanded_commands(folder)
    master = commands["Job/ipsbench-slo master"]
    assert int(option(master, "--remote-workers")) == find(docs, "Job", "ipsbench-slo-workers")["spec"]["parallelism"]
    ui_master = commands["Deployment/ipsbench-load-master master"]
    workers = find(docs, "Deployment", "ipsbench-load-worker")["spec"]["replicas"]
    assert 1 <= int(option(ui_master, "--remote-workers")) <= workers


def test_the_slo_report_is_written_to_a_persistent_volume_claim(rendered):
    job = find(rendered, "Job", "ipsbench-slo")
    master = pod_spec(job)["containers"][0]
    out = option(argv_of(master), "--out")
    mount = next(m for m in master["volumeMounts"] if out.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"])
    find(rendered, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # An SLO FAIL (1) or INVALID (2) is a verdict: the Job must not run the search again.
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailJob" and set(r["onExitCodes"]["values"]) == {1, 2} for r in rules)


def test_a_replicas_entry_scales_the_workers_without_editing_a_manifest(tmp_path):
    # An overlay of one file beside a copy of the base (kustomize wants resources inside or below the overlay's
    # tree or relative to it; the copy keeps the test away from the repository's own overlays).
    shutil.copytree(K8S / "base", tmp_path / "base")
    overlay = tmp_path / "more-workers"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../base"],
        "replicas": [{"name": "ipsbench-load-worker", "count": 5}],
    }))
    assert find(render(overlay), "Deployment", "ipsbench-load-worker")["spec"]["replicas"] == 5
    assert find(render(K8S / "base"), "Deployment", "ipsbench-load-worker")["spec"]["replicas"] == 2


@pytest.mark.skipif(kustomize_tool() is None, reason="neither kubectl nor kustomize is installed")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=IDS)
def test_the_python_rendering_used_without_kustomize_matches_kustomize(folder):
    def keyed(docs):
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(render_python(folder)) == keyed(render_with_tool(folder, kustomize_tool()))
