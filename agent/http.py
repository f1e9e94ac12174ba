"""The agent's HTTP listener: ``/metrics`` for Prometheus and ``/healthz`` for probes.

``/healthz`` says what ``flowyard-agent --probe`` says, over HTTP, so a Kubernetes probe
needs no process started in the container: 200 while the health file is fresh (the control
plane answered lately, see ``agent.health``), 503 otherwise. It is therefore 503 until the
first Welcome, which keeps a new pod out of "ready" until it is connected.

Off unless a port is given (``--http-port``): an agent on a developer's machine opens no port
it was not asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agent import metrics
from agent.errors import ConfigurationError
from agent.health import is_fresh
from agent.settings import HealthSettings, HttpSettings
from flowyard_common.http_server import HttpServer

__all__ = ["make_app", "serving"]

logger = logging.getLogger(__name__)


def make_app(health: HealthSettings) -> Starlette:
    """The ASGI application: ``/metrics`` and ``/healthz``."""

    async def exposition(request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=metrics.CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        if is_fresh(health.file, health.max_age):
            return PlainTextResponse("ok\n")
        return PlainTextResponse(
            f"not connected: the control plane has not answered for {health.max_age:g} s\n",
            status_code=503,
        )

    return Starlette(
        routes=[
            Route("/metrics", exposition, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


@contextlib.asynccontextmanager
async def serving(http: HttpSettings, health: HealthSettings) -> AsyncIterator[int | None]:
    """Serve ``make_app`` on ``http`` while the block runs; the port, or None when off.

    Raises:
        ConfigurationError: the address cannot be bound (in use, not this machine's).
    """
    if not http.port:
        yield None
        return
    try:
        server = HttpServer(make_app(health), http.host, http.port)
    except OSError as error:
        raise ConfigurationError(
            f"--http-port: cannot listen on {http.host}:{http.port}: {error.strerror or error}"
        ) from error
    task = asyncio.create_task(server.serve(), name="http")
    logger.info("serving /metrics and /healthz on %s:%d", server.host, server.port)
    try:
        yield server.port
    finally:
        server.stop()
        await task
