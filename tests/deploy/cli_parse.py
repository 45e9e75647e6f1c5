"""Parse ipsbench-* command lines with the CLIs' own argparse parsers, in a process of its own.

A scenario's line must also be able to earn its objectives: every step the sample plan can foresee holds the
samples its percentile needs. Reads a JSON list of argv lists on stdin and writes a JSON list of ``{"ok": bool, "error": str}`` to stdout. Run
as a script so the test process never imports the load generator (locust patches a process for gevent when it is
imported).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Subcommands that are not scenarios: they have no run settings to build.
LOAD_COMMANDS_WITHOUT_SETTINGS = ("worker", "ui")


def parser_for(program: str):
    if program == "ipsbench-serve":
        from ipsbench.server.cli import build_parser
    elif program == "ipsbench-load":
        from ipsbench.loadgen.cli import build_parser
    elif program == "ipsbench-export":
        from ipsbench.export.cli import build_parser
    else:
        raise ValueError(f"unknown program {program}")
    return build_parser()


def check(argv: list[str]) -> dict:
    program, args = argv[0], argv[1:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            namespace = parser_for(program).parse_args(args)
    except SystemExit as exit_:
        # --help and --list exit 0 after printing; anything else is argparse refusing the line.
        ok = exit_.code in (0, None)
        return {"ok": ok, "error": "" if ok else f"argparse exit {exit_.code}: {stderr.getvalue().strip()}"}
    if program == "ipsbench-load" and args[0] not in LOAD_COMMANDS_WITHOUT_SETTINGS:
        # The CLI's own range checks, which run after parsing.
        from ipsbench.loadgen.cli import settings_from_args

        from ipsbench.loadgen.sample_plan import sample_plan
        from ipsbench.loadgen.slo import parse_objective

        try:
            settings = settings_from_args(namespace)
        except ValueError as error:
            return {"ok": False, "error": f"settings: {error}"}
        # A shipped SLO run whose steps cannot hold the samples their percentile needs ends FAIL whatever the server.
        objectives = [parse_objective(text) for text in settings.validity.latency_slo]
        for entry in sample_plan(objectives, settings.steps, settings.validity.sample_rule):
            if entry["too_short_at"]:
                return {"ok": False, "error": f"sample plan: {entry['objective']} cannot be earned: {entry}"}
    return {"ok": True, "error": ""}


def main() -> int:
    commands = json.load(sys.stdin)
    json.dump([check(argv) for argv in commands], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
