"""Every ipsbench-* command line the containers run (compose services, Kubernetes containers with their $(VAR)s
expanded from the ConfigMap, the Dockerfiles' CMD) is the project's real CLI: it runs with --help appended, and
the CLI's own argparse parser (and the load generator's settings checks) accept it as written."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import (
    KUSTOMIZATIONS,
    REPO_ROOT,
    compose_commands,
    console_script,
    dockerfile_commands,
    k8s_commands,
    subprocess_env,
)

PARSE_SCRIPT = Path(__file__).with_name("cli_parse.py")
HELP_TIMEOUT_S = 60


def all_commands():
    commands = compose_commands() + dockerfile_commands()
    for folder in KUSTOMIZATIONS:
        commands += k8s_commands(folder)
    return commands


COMMANDS = all_commands()
# --help runs once per distinct line; the parser check covers every occurrence.
DISTINCT = list({command.argv: command for command in COMMANDS}.values())


def test_the_deploy_files_run_every_role():
    programs = {(c.argv[0], c.argv[1] if c.argv[0] == "ipsbench-load" else "") for c in COMMANDS}
    assert {("ipsbench-export", ""), ("ipsbench-serve", ""), ("ipsbench-load", "ui"), ("ipsbench-load", "slo"),
            ("ipsbench-load", "worker")} <= programs
    assert all("$(" not in arg and "${" not in arg for c in COMMANDS for arg in c.argv), "unexpanded variable"


@pytest.mark.parametrize("command", DISTINCT, ids=[c.where for c in DISTINCT])
def test_command_runs_with_help_appended(command):
    argv = [console_script(command.program), *command.argv[1:], "--help"]
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=HELP_TIMEOUT_S,
                            env=subprocess_env())
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    assert result.stdout.startswith("usage: "), result.stdout[:200]


def test_every_command_is_accepted_by_the_clis_own_parser():
    result = subprocess.run([sys.executable, str(PARSE_SCRIPT)], input=json.dumps([list(c.argv) for c in COMMANDS]),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    refused = [f"{command}\n    {outcome['error']}"
               for command, outcome in zip(COMMANDS, json.loads(result.stdout)) if not outcome["ok"]]
    assert not refused, "\n".join(refused)


def test_the_parser_check_refuses_a_flag_the_cli_does_not_have():
    # The check above must be able to fail: an unknown option, a missing required one and an SLO search whose
    # lower end cannot hold the 10,000 samples p99 needs (10 requests/s for 30 s: 300) are refused.
    lines = [["ipsbench-serve", "--model-repository", "/models", "--no-such-flag"],
             ["ipsbench-load", "slo", "--model", "m"],
             ["ipsbench-load", "slo", "--target", "h:1", "--model", "m", "--latency-slo", "p99=100ms", "--low", "10",
              "--high", "2000", "--duration", "30s"]]
    outcomes = parse_outcomes(lines)
    assert [o["ok"] for o in outcomes] == [False, False, False]
    assert "--no-such-flag" in outcomes[0]["error"] and "--target" in outcomes[1]["error"]
    assert "sample plan: p99 cannot be earned" in outcomes[2]["error"]


def parse_outcomes(lines: list[list[str]]) -> list[dict]:
    result = subprocess.run([sys.executable, str(PARSE_SCRIPT)], input=json.dumps(lines), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def readme_slo_examples() -> list[list[str]]:
    """The ``ipsbench-load slo`` lines of README's code blocks, as a user would paste them."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    return [shlex.split(line.split("#", 1)[0]) for line in lines if line.startswith("ipsbench-load slo ")]


def test_readme_slo_examples_are_accepted_and_can_earn_their_percentile():
    examples = readme_slo_examples()
    assert examples, "README has no ipsbench-load slo example"
    refused = [f"{' '.join(argv)}\n    {outcome['error']}"
               for argv, outcome in zip(examples, parse_outcomes(examples)) if not outcome["ok"]]
    assert not refused, "\n".join(refused)
