"""The CLI's connection to the control plane: address, token, TLS, and how errors are shown.

The token comes from ``--token``, else ``FLOWYARD_TOKEN``, else the admin token file the
server created in its data directory (``FLOWYARD_DATA_DIR`` or ``~/.flowyard``), so that the
CLI on the server's machine needs no setup. It travels as ``authorization: Bearer <token>``
on every call. With ``--tls-ca`` (or ``FLOWYARD_TLS_CA``) the channel speaks TLS and trusts
that CA; without it, plaintext.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc

from control_plane.config import DEFAULT_PORT, admin_token_path, default_data_dir
from flowyard.v1 import control_plane_pb2_grpc
from flowyard_common import addresses

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


def default_server() -> str:
    """The control plane address: $FLOWYARD_SERVER or the local default."""
    return os.environ.get("FLOWYARD_SERVER", DEFAULT_SERVER)


def resolve_token(explicit: str | None) -> str:
    """``--token``, else $FLOWYARD_TOKEN, else the local admin token file, else empty."""
    if explicit:
        return explicit.strip()
    if os.environ.get("FLOWYARD_TOKEN", "").strip():
        return os.environ["FLOWYARD_TOKEN"].strip()
    try:
        return admin_token_path(default_data_dir()).read_text().strip()
    except OSError:
        return ""


def channel_credentials(tls_ca: Path | None) -> grpc.ChannelCredentials:
    """TLS credentials that trust ``tls_ca`` (PEM)."""
    try:
        root = tls_ca.read_bytes() if tls_ca is not None else None
    except OSError as error:
        raise ValueError(f"--tls-ca {tls_ca}: {error.strerror or error}") from error
    return grpc.ssl_channel_credentials(root_certificates=root)


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """Call details with the token added to the metadata."""


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call that does not carry its own."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(self._header)
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _intercept(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Continue the call (a request, or an iterator of them) with the token added."""
        return continuation(self._details(client_call_details), request)

    # gRPC wants one method per kind of call; adding a header is the same for all four. The
    # stream kinds name their third argument ``request_iterator``; gRPC passes it positionally.
    intercept_unary_unary = _intercept
    intercept_unary_stream = _intercept
    intercept_stream_unary = _intercept  # type: ignore[assignment]
    intercept_stream_stream = _intercept  # type: ignore[assignment]


def open_channel(address: str, token: str = "", tls_ca: Path | None = None) -> grpc.Channel:
    """A channel to ``address`` that sends ``token`` on every call; TLS with ``tls_ca``."""
    # Several addresses (replicas): one channel over all of them (flowyard_common.addresses).
    target, options = addresses.grpc_target(address)
    if tls_ca is not None:
        channel = grpc.secure_channel(target, channel_credentials(tls_ca), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel


@dataclass
class Client:
    """A channel to the control plane and its ``ControlPlaneService`` stub."""

    address: str
    channel: grpc.Channel
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub

    @classmethod
    def connect(cls, address: str, token: str = "", tls_ca: Path | None = None) -> Client:
        """A client for ``address`` (host:port, or several separated by commas); the
        connection is made on first use."""
        try:
            channel = open_channel(address, token, tls_ca)
        except addresses.AddressError as error:
            raise click.UsageError(
                f"--server: {error}; give HOST:PORT, or several separated by commas"
            ) from None
        return cls(address, channel, control_plane_pb2_grpc.ControlPlaneServiceStub(channel))

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


#: Words of the details gRPC gives a call that no server answered: the connection could not be
#: made (refused, no route, a name that does not resolve, a TLS handshake that failed) or broke
#: under the call (the server went away, a proxy reset it).
CONNECTION_FAILURES = (
    "failed to connect",
    "connections to all backends failing",
    "errors resolving",
    "dns resolution failed",
    "empty address list",
    "connection refused",
    "connection reset",
    "socket closed",
    "broken pipe",
    "goaway",
    "keepalive",
    "cancelling all calls",
    "handshake",
)
TLS_FAILURES = ("ssl", "handshake", "certificate", "tls")


def unreached(error: grpc.RpcError) -> bool:
    """Whether ``error`` says that no server answered the call, as opposed to a server that
    answered UNAVAILABLE itself (say, its database was unavailable).

    gRPC reports both as UNAVAILABLE. A server's answer carries metadata (Flowyard's a retry
    hint, ``grpc-retry-pushback-ms``); gRPC's own says what broke in words of its own.
    """
    if not isinstance(error, grpc.Call) or error.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    if error.trailing_metadata() or error.initial_metadata():
        return False
    details = (error.details() or "").lower()
    return any(words in details for words in CONNECTION_FAILURES)


def describe(error: grpc.RpcError, address: str) -> str:
    """One line for a person: what the server said, or why it could not be reached."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if unreached(error):
        text = (details or "").lower()
        if any(word in text for word in TLS_FAILURES):
            return (
                f"cannot reach the control plane at {address} over TLS ({details}): pass "
                "--tls-ca or FLOWYARD_TLS_CA with the CA that signed the server's certificate"
            )
        return (
            f"cannot reach the control plane at {address}: is 'flowyard server start' running "
            "there? (set --server or FLOWYARD_SERVER; a server with TLS needs --tls-ca or "
            f"FLOWYARD_TLS_CA) ({details})"
        )
    name = code.name if code is not None else "ERROR"
    return f"{details} ({name})"
