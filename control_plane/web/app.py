"""The control plane's HTTP application: web UI, JSON + SSE API, health, metrics.

Starlette, served by uvicorn on the control plane's own event loop
(``flowyard_common.http_server``): the routes call the same use cases, tokens and database
as the gRPC servicers, with no second process and no copy of the state.

=================================  ===========================================================
``/healthz``                       the process is up (no token)
``/readyz``                        database reachable, migrations at head, dispatcher running
``/metrics``                       Prometheus exposition (no token, like a usual exporter)
``/api/v1/...``                    JSON and Server-Sent-Events API (``api``, ``events``)
``/api/v1/openapi.json``           its OpenAPI description
``/``, ``/runs``, ``/runs/{id}``,  the web UI (``pages``)
``/deployments``, ``/pools``
``/login``, ``/logout``            the browser's session (``auth``)
``/static/...``                    the UI's own assets, shipped in the package
=================================  ===========================================================
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.web import api, events, openapi, pages
from control_plane.web.errors import error_response
from control_plane.web.services import Services, services

STATIC = Path(__file__).parent / "static"


async def healthz(request: Request) -> Response:
    """The process serves HTTP."""
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    """Ready to serve: 200, or 503 with the reason."""
    reason = await services(request).unready()
    if reason is not None:
        return PlainTextResponse(f"not ready: {reason}\n", status_code=503)
    return PlainTextResponse("ready\n")


async def metrics(request: Request) -> Response:
    """The Prometheus exposition of this replica."""
    scrape = services(request).metrics
    if scrape is None:
        return PlainTextResponse("metrics are not collected by this server\n", status_code=404)
    body, content_type = await scrape()
    return Response(body, media_type=content_type)


async def openapi_document(request: Request) -> Response:
    """The OpenAPI description of ``/api/v1``."""
    return JSONResponse(openapi.DOCUMENT)


#: Sent with every answer: pages load only this site's own scripts and styles, cannot be
#: framed by another site, and are not sniffed into another content type.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self._app(scope, receive, with_headers)


class RefuseWhileStopping:
    """Answers 503 with Retry-After to every request once the server is stopping (but the
    liveness probe): the database is about to close under whatever would run, and a browser's
    event stream retries, reaching another replica or this one restarted."""

    def __init__(self, app: ASGIApp, stopping: asyncio.Event) -> None:
        self._app = app
        self._stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._stopping.is_set() and scope["path"] != "/healthz":
            response = error_response(
                grpc.StatusCode.UNAVAILABLE,
                "the control plane is stopping; retry in a moment",
                {"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def build_app(found: Services) -> Starlette:
    """The HTTP application over ``found``."""
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/api/v1/openapi.json", openapi_document),
            *events.ROUTES,
            *api.ROUTES,
            *pages.ROUTES,
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={404: pages.not_found},
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(RefuseWhileStopping, stopping=found.stopping),
        ],
    )
    app.state.services = found
    return app
