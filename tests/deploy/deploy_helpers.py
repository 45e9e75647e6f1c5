"""What the deploy tests read out of deploy/: rendered Kubernetes manifests, the compose file with its variables
interpolated, and every ``ipsbench-*`` command line the containers run.

Kustomize renders the manifests where ``kubectl`` or ``kustomize`` is installed; elsewhere :func:`render_python`
does it for the subset of kustomize the overlays use (resources, ``replicas`` entries, strategic-merge patches
named by path), and refuses anything else rather than render it wrong.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
KUSTOMIZATIONS = [K8S / "base", *sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())]
CLI_PREFIX = "ipsbench-"
RENDER_TIMEOUT_S = 60

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
SCALABLE_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController")
SUPPORTED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "replicas", "patches"}


# -- Kubernetes --------------------------------------------------------------------------------------------------


def kustomize_tool() -> list[str] | None:
    """The command that renders a kustomization folder here, or None."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render_with_tool(folder: Path, tool: list[str]) -> list[dict]:
    result = subprocess.run([*tool, str(folder)], capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(tool)} {folder} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(folder: Path) -> list[dict]:
    """The kustomization at ``folder``, rendered by kustomize where it is installed, else by :func:`render_python`."""
    tool = kustomize_tool()
    return render_with_tool(folder, tool) if tool else render_python(folder)


def render_python(folder: Path) -> list[dict]:
    """Render the kustomize subset deploy/k8s uses; raise NotImplementedError on anything beyond it."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZE_KEYS
    if unsupported:
        raise NotImplementedError(f"{folder}: kustomize fields {sorted(unsupported)} need kubectl or kustomize")
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        if path.is_dir():
            docs += render_python(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise NotImplementedError(f"{folder}: only patches given by path are rendered here, got {patch}")
        for patch_doc in yaml.safe_load_all((folder / patch["path"]).read_text()):
            target = find(docs, patch_doc["kind"], patch_doc["metadata"]["name"])
            strategic_merge(target, patch_doc)
    for entry in kustomization.get("replicas", []):
        matches = [doc for doc in docs if doc["kind"] in SCALABLE_KINDS and doc["metadata"]["name"] == entry["name"]]
        if not matches:
            raise KeyError(f"{folder}: replicas entry for {entry['name']!r} matches no workload")
        for doc in matches:
            doc["spec"]["replicas"] = entry["count"]
    return docs


def strategic_merge(target: dict, patch: dict) -> None:
    """Merge ``patch`` into ``target`` in place: maps key by key, lists of named items by name, other values
    replaced."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise NotImplementedError(f"patch directive {key} needs kubectl or kustomize")
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            strategic_merge(current, value)
        elif _named_items(value) and _named_items(current):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    strategic_merge(by_name[item["name"]], item)
                else:
                    current.append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _named_items(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def find(docs: list[dict], kind: str, name: str) -> dict:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"no {kind}/{name} among {[(d['kind'], d['metadata']['name']) for d in docs]}")


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(container: dict, config_maps: dict[str, dict]) -> dict[str, str]:
    """A container's environment as the kubelet builds it from plain values and ConfigMap keys."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry["valueFrom"]["configMapKeyRef"]
        data = config_maps[ref["name"]].get("data", {})
        if ref["key"] not in data:
            raise KeyError(f"ConfigMap {ref['name']} has no key {ref['key']!r} (env {entry['name']})")
        env[entry["name"]] = str(data[ref["key"]])
    return env


def expand_k8s(argument: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; an unknown $(VAR) stays as written (as in Kubernetes)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), argument)


# -- compose -----------------------------------------------------------------------------------------------------


def interpolate(value, variables: dict[str, str]):
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, $$) through a loaded document."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, default = match["name"], match["op"], match["default"] or ""
        if name in variables and (variables[name] or operator != ":-"):
            return variables[name]
        if operator:
            return default
        raise KeyError(f"compose variable {name} is not set and has no default")

    return re.sub(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}", substitute, value)


def load_compose(variables: dict[str, str] | None = None) -> dict:
    """compose.yaml with variables interpolated (none set: every default applies)."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), variables or {})


# -- the commands the containers run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCommand:
    """One ipsbench-* command line found in deploy/, and where."""

    where: str
    argv: tuple[str, ...]

    @property
    def program(self) -> str:
        return self.argv[0]

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.argv)}"


def compose_commands() -> list[CliCommand]:
    found = []
    for name, service in load_compose()["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command and str(command[0]).startswith(CLI_PREFIX):
            found.append(CliCommand(f"compose.yaml services.{name}", tuple(str(a) for a in command)))
    return found


def k8s_commands(folder: Path) -> list[CliCommand]:
    """The command line of every container of every workload in the rendered kustomization, $(VAR)s expanded."""
    docs = render(folder)
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    found = []
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for container in containers(doc):
            argv = [*container.get("command", []), *container.get("args", [])]
            env = container_env(container, config_maps)
            argv = [expand_k8s(str(a), env) for a in argv]
            where = f"{folder.relative_to(REPO_ROOT)} {doc['kind']}/{doc['metadata']['name']} {container['name']}"
            found.append(CliCommand(where, tuple(argv)))
    return found


def dockerfile_commands() -> list[CliCommand]:
    """The CMD of each Dockerfile's last stage (exec form)."""
    import json

    found = []
    for path in DOCKERFILES:
        cmds = [line for line in _joined_lines(path.read_text()) if line.startswith("CMD ")]
        if cmds:
            found.append(CliCommand(path.name, tuple(json.loads(cmds[-1][4:]))))
    return found


def _joined_lines(text: str) -> list[str]:
    """Dockerfile instructions with backslash continuations joined and comments dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not pending:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append((pending + stripped).strip())
        pending = ""
    return [line for line in lines if line]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs of a Dockerfile."""
    pairs = []
    for line in _joined_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def console_script(program: str) -> str:
    """The installed console script beside this interpreter (the project's environment)."""
    import sys

    path = Path(sys.executable).parent / program
    return str(path) if path.exists() else shutil.which(program) or program


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")
