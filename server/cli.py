"""``ipsbench-serve``: a thin shell that turns options into :class:`Settings` and runs :class:`App`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ipsbench.server.flags import add_options, path_problem, values
from ipsbench.server.logformat import configure_logging
from ipsbench.server.settings import Settings

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-serve",
        description="KServe v2 gRPC inference server with dynamic batching and Prometheus metrics "
        "(a Triton model repository in, Triton's protocol and metric names out).",
        epilog="`ipsbench-serve bench MODEL --model-repository DIR` measures the in-process engine throughput "
        "instead (see `ipsbench-serve bench --help`).",
    )
    add_options(parser, Settings)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := path_problem(args, Settings):
        parser.error(problem)
    try:
        return Settings(**values(args, Settings))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        from ipsbench.server.bench_cli import main as bench_main

        return bench_main(args[1:])
    settings = parse_settings(args)
    configure_logging(settings.log_verbose, settings.log_format)
    if settings.frontends > 1:
        from ipsbench.server.frontends.supervisor import Supervisor

        return Supervisor(settings).run()
    from ipsbench.server.app import App  # after logging is configured: importing backends may log

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
