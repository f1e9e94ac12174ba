"""TLS for the control plane's listeners.

Without TLS settings the server listens in plaintext (meant for loopback). With a certificate
and key, the main port speaks TLS. With a client CA too, the server opens a second port, the
agent port, where the TLS handshake requires a client certificate signed by that CA (gRPC's
Python server can require client certificates per port, not request them optionally, so
mutual TLS gets its own port and the main port keeps serving the CLI and engines). With
``require_agent_cert``, ``AgentService.Connect`` refuses calls that arrived without a verified
client certificate, so agents can only connect through the agent port.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """The TLS settings are incomplete or a file cannot be read."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of the server's TLS settings."""

    cert: Path | None = None
    key: Path | None = None
    #: CA that signs agents' client certificates (enables the mutual-TLS agent port).
    client_ca: Path | None = None

    def check(self) -> None:
        """TLSConfigError unless the combination makes sense."""
        if (self.cert is None) != (self.key is None):
            raise TLSConfigError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.cert is None:
            raise TLSConfigError("--tls-client-ca needs --tls-cert and --tls-key")

    @property
    def enabled(self) -> bool:
        """Whether the server speaks TLS."""
        return self.cert is not None

    def server_credentials(self, *, mutual: bool) -> grpc.ServerCredentials:
        """Credentials of the main port (``mutual=False``) or of the agent port."""
        assert self.cert is not None and self.key is not None
        pair = (_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))
        if not mutual:
            return grpc.ssl_server_credentials([pair])
        assert self.client_ca is not None
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=_read(self.client_ca, "--tls-client-ca"),
            require_client_auth=True,
        )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSConfigError(f"{flag} {path}: {error.strerror or error}") from error
