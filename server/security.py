"""The admin credential and TLS: who may call the admin RPCs, and the server's transport credentials.

The admin credential is a shared secret (``--admin-token-file`` or the ``IPSBENCH_ADMIN_TOKEN`` environment
variable) sent as the metadata header ``authorization: Bearer <token>`` and compared in constant time. Missing
→ UNAUTHENTICATED, wrong → PERMISSION_DENIED (deliberately unlike Triton's retryable UNAVAILABLE). The token is
never logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence

import grpc

from ipsbench.server.errors import ServerError
from ipsbench.server.settings import ADMIN_TOKEN_ENV, Settings

AUTHORIZATION_HEADER = "authorization"
BEARER = "bearer "
MAX_TOKEN_BYTES = 4096


class SecurityConfigError(Exception):
    """The security options cannot be used as given; the server must not start."""


def load_admin_token(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin token from the file (first) or the environment; None when neither is set."""
    environ = os.environ if environ is None else environ
    if settings.admin_token_file is not None:
        try:
            data = settings.admin_token_file.read_bytes()[: MAX_TOKEN_BYTES + 1]
        except OSError as exc:
            raise SecurityConfigError(f"cannot read --admin-token-file: {exc.strerror or exc}") from None
        token = data.decode("utf-8", errors="strict").strip() if len(data) <= MAX_TOKEN_BYTES else ""
        if not token:
            raise SecurityConfigError(
                f"--admin-token-file must hold a token of 1 to {MAX_TOKEN_BYTES} bytes (surrounding whitespace is "
                "ignored)"
            )
        return token
    token = environ.get(ADMIN_TOKEN_ENV, "").strip()
    return token or None


def check_startup_policy(settings: Settings, admin_token: str | None) -> None:
    """Refuse dynamic model loading reachable from the network without a credential."""
    if settings.explicit_model_control and admin_token is None and not settings.is_loopback:
        raise SecurityConfigError(
            f"refusing to start: --model-control-mode explicit on {settings.host} (beyond loopback) lets anyone who "
            f"can reach the port load models; set --admin-token-file or {ADMIN_TOKEN_ENV}, or listen on 127.0.0.1"
        )


class AdminAuth:
    """Checks the admin credential of an RPC; allows everything when no token is configured."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        if self._token is None:
            return
        values = [value for key, value in metadata or () if key.lower() == AUTHORIZATION_HEADER]
        if not values:
            raise ServerError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"this RPC needs the admin credential: metadata header '{AUTHORIZATION_HEADER}: Bearer <token>'",
            )
        value = values[0]
        raw = value if isinstance(value, bytes) else value.encode("utf-8", errors="replace")
        presented = raw[len(BEARER) :] if raw[: len(BEARER)].lower() == BEARER.encode() else b""
        # compare_digest on every path keeps the time independent of where the tokens differ.
        if not hmac.compare_digest(presented.strip(), self._token) or not presented:
            raise ServerError(grpc.StatusCode.PERMISSION_DENIED, "the admin credential is not valid")


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the settings' PEM files; None for plaintext."""
    if not settings.tls:
        return None
    try:
        cert = settings.grpc_tls_cert.read_bytes()
        key = settings.grpc_tls_key.read_bytes()
        roots = settings.grpc_tls_root_certs.read_bytes() if settings.grpc_tls_root_certs is not None else None
    except OSError as exc:
        raise SecurityConfigError(f"cannot read a TLS file: {exc.filename}: {exc.strerror or exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=roots, require_client_auth=settings.grpc_tls_client_auth
    )
