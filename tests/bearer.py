"""Channels for tests that send a token on every call, as the real clients do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from control_plane.cli.client import open_channel
from control_plane.config import admin_token_path

__all__ = ["admin_token", "aio_bearer", "aio_channel", "sync_channel"]


def admin_token(data_dir: Path) -> str:
    """The admin token a server created in ``data_dir`` on its first start."""
    return admin_token_path(data_dir).read_text().strip()


#: The deadline of a unary call that sets none: a test's call that hangs fails, naming itself.
UNARY_DEADLINE_SECONDS = 30.0


class _AioBearer:
    """Adds ``authorization: Bearer <token>`` to calls that carry no authorization of their own."""

    timeout: float | None = None

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if "authorization" not in metadata:
            metadata.add(*self._header)
        timeout = self.timeout if details.timeout is None else details.timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first kind it implements only: one class per kind.
class _UnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    timeout = UNARY_DEADLINE_SECONDS

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def aio_bearer(token: str) -> list[Any]:
    """Client interceptors (one per call kind) that send ``token`` on every call."""
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def aio_channel(address: str, token: str, **kwargs: Any) -> grpc.aio.Channel:
    """A plaintext ``grpc.aio`` channel that sends ``token`` unless a call sends its own."""
    return grpc.aio.insecure_channel(address, interceptors=aio_bearer(token), **kwargs)


def sync_channel(address: str, token: str, tls_ca: Path | None = None) -> grpc.Channel:
    """A blocking channel that sends ``token`` on every call (as the CLI does)."""
    return open_channel(address, token, tls_ca)
