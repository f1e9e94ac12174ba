"""The agent's HTTP app over real HTTP: ``/healthz`` follows the health file, ``/metrics``
serves the agent's registry; a port that cannot be bound is a configuration error."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent import metrics
from agent.errors import ConfigurationError
from agent.http import make_app, serving
from agent.settings import HealthSettings, HttpSettings
from flowyard_common.http_server import HttpServer


@pytest.fixture
def health(tmp_path: Path) -> HealthSettings:
    return HealthSettings(file=tmp_path / "agent.health", max_age=30.0)


@pytest.fixture
async def client(health: HealthSettings) -> AsyncIterator[httpx.AsyncClient]:
    server = HttpServer(make_app(health), "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield client
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)


async def test_healthz_is_ok_only_while_the_health_file_is_fresh(
    client: httpx.AsyncClient, health: HealthSettings
) -> None:
    assert (await client.get("/healthz")).status_code == 503  # no file yet
    health.file.touch()
    assert (await client.get("/healthz")).status_code == 200
    old = time.time() - 2 * health.max_age
    os.utime(health.file, (old, old))
    stale = await client.get("/healthz")
    assert stale.status_code == 503
    assert "not connected" in stale.text


async def test_metrics_serve_the_agents_registry(client: httpx.AsyncClient) -> None:
    metrics.JOBS_SUBMITTED.labels("created").inc()
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == metrics.CONTENT_TYPE
    assert 'flowyard_agent_jobs_submitted_total{outcome="created"}' in response.text
    # Only the agent's own metrics: no process or interpreter collectors.
    assert "python_gc" not in response.text


async def test_no_port_no_listener(health: HealthSettings) -> None:
    async with serving(HttpSettings(port=0), health) as port:
        assert port is None


async def test_a_port_in_use_is_a_configuration_error(health: HealthSettings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            async with serving(HttpSettings("127.0.0.1", port), health):
                pass


async def test_serving_listens_while_the_block_runs(health: HealthSettings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    async with serving(HttpSettings("127.0.0.1", free), health) as port:
        assert port == free
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert answer.status_code == 200
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/metrics")
