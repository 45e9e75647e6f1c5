"""The server image's HEALTHCHECK: ask ipsbench-serve's ``grpc.health.v1`` service whether it is SERVING.

Exit status follows Docker's HEALTHCHECK contract: 0 healthy (SERVING), 1 unhealthy (NOT_SERVING, unknown
service, unreachable, or no answer within the timeout). One line on stdout says why, for ``docker inspect``.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HEALTHY = 0
UNHEALTHY = 1


def check(target: str, service: str, timeout_s: float) -> tuple[int, str]:
    """(exit status, what was seen) for one Check RPC to ``target``."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return UNHEALTHY, f"{target}: {error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return (HEALTHY if response.status == health_pb2.HealthCheckResponse.SERVING else UNHEALTHY), f"{target}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:8001", help="server host:port (default: %(default)s)")
    parser.add_argument("--service", default="", help="health service name; '' is the whole server (default)")
    parser.add_argument("--timeout-s", type=float, default=3.0, help="deadline of the Check RPC (default: %(default)s)")
    args = parser.parse_args(argv)
    code, seen = check(args.target, args.service, args.timeout_s)
    print(seen)
    return code


if __name__ == "__main__":
    sys.exit(main())
