"""Server settings: one dataclass whose field help texts are also the CLI's help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _opt(default, help: str, **extra):  # noqa: A002 - "help" mirrors argparse
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    """Everything ``ipsbench-serve`` can be told; the CLI builds its options from these fields."""

    model_repository: Path = _opt(
        None,
        "Model repository in Triton's layout: <repo>/<model>/config.pbtxt and <repo>/<model>/<version>/.",
        required=True,
    )
    host: str = _opt("127.0.0.1", "Address the gRPC and metrics servers bind to; 0.0.0.0 accepts remote clients.")
    grpc_port: int = _opt(8001, "gRPC (KServe v2) port; 0 picks a free port.")
    metrics_port: int = _opt(8002, "Prometheus metrics port; 0 picks a free port.")
    allow_metrics: bool = _opt(True, "Serve Prometheus metrics on --metrics-port.")
    grpc_max_message_mb: int = _opt(64, "Largest gRPC message received or sent, in MiB.")
    grpc_max_concurrent_rpcs: int = _opt(4096, "Concurrent RPCs accepted before gRPC answers RESOURCE_EXHAUSTED.")
    grace_period_s: float = _opt(30.0, "On SIGTERM/SIGINT, how long in-flight requests may take to finish.")
    exit_on_error: bool = _opt(
        True, "Exit non-zero when a model fails to load (Triton's default); when off, serve the other models."
    )
    log_verbose: bool = _opt(False, "Log at DEBUG level, including one line per rejected request.")

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.grpc_max_message_mb * 1024 * 1024

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    def __post_init__(self) -> None:
        if self.model_repository is None:
            raise ValueError("model_repository is required")
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        for name in ("grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {port}")
        if self.grpc_max_message_mb <= 0:
            raise ValueError("grpc_max_message_mb must be > 0")
        if self.grpc_max_concurrent_rpcs <= 0:
            raise ValueError("grpc_max_concurrent_rpcs must be > 0")
        if self.grace_period_s < 0:
            raise ValueError("grace_period_s must be >= 0")


def settings_fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Settings)
