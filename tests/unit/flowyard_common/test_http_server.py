"""The HTTP listener embedded in the control plane and the agent."""

from __future__ import annotations

import asyncio
import socket

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from flowyard_common.http_server import HttpServer


async def test_it_serves_on_a_free_port_and_stops_when_asked() -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    server = HttpServer(Starlette(routes=[Route("/", hello)]), "127.0.0.1", 0, grace=1)
    assert server.port > 0
    # Declared TCP: asyncio sets TCP_NODELAY on the connections it accepts only then, and a
    # response written in parts would otherwise wait for the client's delayed ACK.
    assert server._socket.proto == socket.IPPROTO_TCP
    serving = asyncio.create_task(server.serve())
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{server.port}/")
    assert answer.text == "hello"
    server.stop()
    await asyncio.wait_for(serving, 10)
