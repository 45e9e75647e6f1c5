"""``ipsbench-serve``: a thin shell that turns options into :class:`Settings` and runs :class:`App`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from server.settings import Settings, settings_fields

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-serve",
        description="KServe v2 gRPC inference server with dynamic batching and Prometheus metrics "
        "(a Triton model repository in, Triton's protocol and metric names out).",
        epilog="`ipsbench-serve bench MODEL --model-repository DIR` measures the in-process engine throughput "
        "instead (see `ipsbench-serve bench --help`).",
    )
    for field in settings_fields():
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str, "Path": Path}[str(field.type)]
        required = field.metadata.get("required", False)
        parser.add_argument(
            flag,
            type=kind,
            required=required,
            default=None if required else field.default,
            help=help_text + ("" if required else " (default: %(default)s)"),
        )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)}
    try:
        return Settings(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    if not verbose:
        logging.getLogger("asyncio").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        from server.bench_cli import main as bench_main

        return bench_main(args[1:])
    settings = parse_settings(args)
    configure_logging(settings.log_verbose)
    from server.app import App  # after logging is configured: importing backends may log

    app = App(settings)
    code = app.run()
    if app.forced_exit:
        # Engine threads may still be running a batch; do not wait for them at interpreter exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
