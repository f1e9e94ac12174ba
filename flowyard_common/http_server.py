"""An ASGI application served on the caller's event loop, beside whatever else it runs.

Both the control plane (web UI, JSON API, ``/metrics``) and the agent (``/metrics``,
``/healthz``) serve HTTP from the process that already runs their gRPC work: one event loop,
no thread, no second process. uvicorn does the HTTP; this module only embeds it:

- the socket is bound and listening here, before serving, so port 0 yields the real port at
  once and a connection made before ``serve()`` runs waits in the backlog;
- uvicorn's own SIGINT/SIGTERM handlers are not installed: the process owns its signals and
  stops this server the same way it stops the rest (``stop()``);
- streams that never end by themselves (Server-Sent Events) are given ``grace`` seconds on
  ``stop()``, then cut.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its signal handlers (the embedding process owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """One listening socket and the uvicorn server behind it."""

    def __init__(self, app: Any, host: str, port: int, *, grace: float = 5.0) -> None:
        """Bind ``host:port`` now (port 0 picks a free port); serve nothing until ``serve()``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
        # listening socket says it is TCP. Without it a response written in two parts (its
        # head, then its body) waits for the client's delayed ACK, 40 ms a request.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(1024)
            self._socket.setblocking(False)
        except OSError:
            self._socket.close()
            raise
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            # uvicorn takes whole seconds; a fraction of one is rounded up.
            timeout_graceful_shutdown=math.ceil(grace),
            # The process's own logging says when it is listening; uvicorn's lines are noise.
            log_level="warning",
        )
        self._server = _EmbeddedServer(config)

    async def serve(self) -> None:
        """Serve until ``stop()``; meant to run as a root task."""
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Ask the server to finish: it stops accepting, then ``serve()`` returns once open
        requests ended or their grace ran out."""
        self._server.should_exit = True
