"""The HTTP API shares the gRPC API's admission control: past the limit a request is refused
at once, with 429, the same message and a Retry-After, and nothing runs."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.admission import Admission
from control_plane.web.pages import page
from control_plane.web.services import Services, api


async def test_a_request_past_the_limit_is_refused_with_a_retry_hint_and_nothing_runs() -> None:
    ran: list[str] = []

    @api
    async def listing(request: Request, services: Services) -> dict[str, str]:
        ran.append("ran")
        return {}

    backlog = [5]
    app = Starlette(routes=[Route("/api/v1/x", listing)])
    app.state.services = SimpleNamespace(
        admission=Admission(3, lambda: backlog[0], [], spread=lambda: 1.0)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control-plane") as client:
        refused = await client.get("/api/v1/x")
    assert refused.status_code == 429
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "at most 3" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert ran == []


async def test_a_page_past_the_limit_is_refused_too() -> None:
    @page
    async def listing(request: Request, services: Services) -> Response:
        raise AssertionError("a refused page must not run")

    app = Starlette(routes=[Route("/runs", listing)])
    app.state.services = SimpleNamespace(admission=Admission(1, lambda: 1, []))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control-plane") as client:
        refused = await client.get("/runs")
    assert refused.status_code == 429 and "at most 1" in refused.text
    assert int(refused.headers["retry-after"]) >= 1
