"""Server settings: one dataclass whose fields are also the CLI's options (:mod:`ipsbench.server.flags`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ipsbench.server.admission import default_inflight_bytes
from ipsbench.server.flags import check_bounds, option

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MODEL_CONTROL_MODES = ("none", "explicit")
LOG_FORMATS = ("text", "json")
ADMIN_TOKEN_ENV = "IPSBENCH_ADMIN_TOKEN"
MAX_FRONTENDS = 64


def usable_cores() -> int:
    """The cores this process may run on, and no more than its cgroup's CPU quota (a container's ``--cpus``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_frontends() -> int:
    """Half the usable cores, at most 8: one front end per two cores leaves the other half to the engine's
    batcher, decoding and the client; a 2-core machine gets 1 (one process, no shared memory)."""
    return max(1, min(8, usable_cores() // 2))


@dataclass(frozen=True)
class Settings:
    """Everything ``ipsbench-serve`` can be told; the CLI builds its options from these fields."""

    model_repository: Path = option(
        None,
        "Model repository in Triton's layout: <repo>/<model>/config.pbtxt and <repo>/<model>/<version>/.",
        required=True, must_be="directory",
    )
    host: str = option("127.0.0.1", "Address the gRPC and metrics servers bind to; 0.0.0.0 accepts remote clients.")
    grpc_port: int = option(8001, "gRPC (KServe v2) port; 0 picks a free port.", bounds=(0, 65535))
    metrics_port: int = option(8002, "Prometheus metrics port; 0 picks a free port.", bounds=(0, 65535))
    allow_metrics: bool = option(True, "Serve Prometheus metrics on --metrics-port.")
    # gRPC takes message limits as a C int: 2047 MiB is the largest that fits.
    grpc_max_message_mb: int = option(64, "Largest gRPC message received or sent, in MiB.", bounds=(1, 2047))
    grpc_max_concurrent_rpcs: int = option(
        4096, "Concurrent RPCs accepted before gRPC answers RESOURCE_EXHAUSTED.", bounds=(1, 1_000_000)
    )
    max_inflight_mb: int | None = option(
        None,
        "Total MiB of inference requests the server holds at once; a request that would exceed it is answered "
        "RESOURCE_EXHAUSTED before it is validated or copied (default: a quarter of this machine's memory).",
        bounds=(1, None),
    )
    frontends: int = option(
        default_frontends(),
        "Front-end processes receiving gRPC requests on the one port (SO_REUSEPORT), all feeding one engine "
        "process that owns the models and batchers; 1: everything in one process (default: half the cores, at "
        "most 8).",
        bounds=(1, MAX_FRONTENDS),
    )
    frontend_ring_mb: int = option(
        256, "With --frontends above 1: MiB of shared memory per front end for tensors on their way to and from the "
        "engine, in slots of 8 MiB (only the slots busy at once are ever touched); a request that finds no free or "
        "large enough slot travels in its message instead.",
        bounds=(4, 4096),
    )
    shm_max_regions: int = option(
        64, "Shared-memory regions (system and CUDA) clients may have registered at once.", bounds=(0, 4096)
    )
    shm_max_mb: int = option(
        4096, "Total MiB of shared-memory regions the server maps at once; a registration past it is refused.",
        bounds=(0, 1_048_576),
    )
    grace_period_s: float = option(
        30.0, "On SIGTERM/SIGINT, how long in-flight requests may take to finish.", bounds=(0, 86_400)
    )
    exit_on_error: bool = option(
        True, "Exit non-zero when a model fails to load (Triton's default); when off, serve the other models."
    )
    model_control_mode: str = option(
        "none",
        "none: every model in the repository loads at start and the repository load/unload RPCs are refused "
        "(Triton's default); explicit: only --load-model models load at start, the RPCs load and unload models.",
        choices=MODEL_CONTROL_MODES,
    )
    load_model: tuple[str, ...] = option(
        (), "With --model-control-mode explicit: a model to load at start (repeat the option for several).", repeat=True
    )
    admin_token_file: Path | None = option(
        None,
        "File holding the admin credential. When set (or when the environment variable "
        f"{ADMIN_TOKEN_ENV} is), the repository load/unload and log/trace settings RPCs need the metadata header "
        "'authorization: Bearer <token>'; inference, health, metadata and statistics do not.",
        must_be="file",
    )
    grpc_tls_cert: Path | None = option(
        None, "PEM certificate chain of the server; with --grpc-tls-key, serve TLS only.", must_be="file"
    )
    grpc_tls_key: Path | None = option(None, "PEM private key of --grpc-tls-cert.", must_be="file")
    grpc_tls_root_certs: Path | None = option(
        None, "PEM CA certificates that client certificates are checked against (mutual TLS).", must_be="file"
    )
    grpc_tls_client_auth: bool = option(
        False, "Require a client certificate signed by --grpc-tls-root-certs (mutual TLS)."
    )
    log_format: str = option(
        "text", "text: one human-readable line per event; json: one JSON object per line.", choices=LOG_FORMATS
    )
    log_verbose: bool = option(False, "Log at DEBUG level, including one line per rejected request.")

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.grpc_max_message_mb * 1024 * 1024

    @property
    def max_inflight_bytes(self) -> int:
        if self.max_inflight_mb is None:
            return default_inflight_bytes(self.grpc_max_message_bytes)
        return self.max_inflight_mb * 1024 * 1024

    @property
    def shm_max_bytes(self) -> int:
        return self.shm_max_mb * 1024 * 1024

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def explicit_model_control(self) -> bool:
        return self.model_control_mode == "explicit"

    @property
    def tls(self) -> bool:
        return self.grpc_tls_cert is not None

    def __post_init__(self) -> None:
        if self.model_repository is None:
            raise ValueError("model_repository is required")
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        for name in ("admin_token_file", "grpc_tls_cert", "grpc_tls_key", "grpc_tls_root_certs"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "load_model", tuple(self.load_model or ()))
        check_bounds(self)
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {list(MODEL_CONTROL_MODES)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {list(LOG_FORMATS)}")
        if self.load_model and not self.explicit_model_control:
            raise ValueError("--load-model needs --model-control-mode explicit (in mode none every model loads)")
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("--grpc-tls-cert and --grpc-tls-key go together")
        if (self.grpc_tls_root_certs is not None or self.grpc_tls_client_auth) and not self.tls:
            raise ValueError("--grpc-tls-root-certs and --grpc-tls-client-auth need --grpc-tls-cert and --grpc-tls-key")
        if self.grpc_tls_client_auth and self.grpc_tls_root_certs is None:
            raise ValueError("--grpc-tls-client-auth needs --grpc-tls-root-certs to check client certificates")
