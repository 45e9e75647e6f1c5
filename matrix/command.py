"""``ipsbench``: commands that drive the three roles together. ``ipsbench matrix``: networks × precisions →
exported, benched (inference and training), served and loaded → one P40-style report.

Every option, network name and output path is checked before anything is exported or started.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ipsbench.server.flags import add_options, path_problem, values


def build_parser() -> argparse.ArgumentParser:
    from ipsbench.matrix.settings import MatrixSettings

    parser = argparse.ArgumentParser(prog="ipsbench", description="Drive export, serving and load together.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    matrix = commands.add_parser(
        "matrix", help="the P40 report: networks × precisions × batch sizes, engine and end to end",
        description="For each network × precision: export (or reuse) the repository entry, bench the engine per "
        "batch size (with power where NVML is), time training beside it, start ipsbench-serve (or use --target), "
        "load it end to end with ipsbench-load, and write one report (matrix.json, .md, .html, .csv) whose first "
        "table is laid out as NVIDIA's P40 inference report. A failed cell is reported and the rest go on; "
        "Ctrl-C writes what was done.",
    )
    add_options(matrix, MatrixSettings)
    return parser


def _writable(folder: Path, option: str) -> str | None:
    """Why files cannot be created in ``folder`` (or its nearest existing parent); None when they can."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {folder}: {existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".ipsbench-write-check-"):
            pass
    except OSError as error:
        return f"{option} {folder}: cannot create files in {existing}: {error.strerror}"
    return None


def _unknown_networks(names: Sequence[str]) -> list[str]:
    from ipsbench.export import models

    known = set(models.available_models())
    return [name for name in names if name not in known]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _matrix(parser, args)


def _matrix(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ipsbench.matrix.plan import detect_capabilities
    from ipsbench.matrix.run import MatrixRun
    from ipsbench.matrix.settings import MatrixSettings

    if problem := path_problem(args, MatrixSettings):
        parser.error(problem)
    try:
        settings = MatrixSettings(**values(args, MatrixSettings))
    except ValueError as error:
        parser.error(str(error))
    for folder, option in ((settings.out, "--out"), (settings.repository, "--repository")):
        if problem := _writable(folder, option):
            parser.error(problem)
    if (settings.out / "matrix.json").exists():
        parser.error(f"--out {settings.out} already holds a matrix report; give a new folder")
    try:
        unknown = _unknown_networks(settings.network_names)
    except Exception as error:  # noqa: BLE001 - the exporter's libraries missing: say so before any work
        print(f"error: {error}", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unknown network(s) {', '.join(unknown)} (ipsbench-export --list shows them)")
    _, status = MatrixRun(settings, detect_capabilities()).run()
    return status


if __name__ == "__main__":
    sys.exit(main())
