"""The real agent process's ``/healthz`` and ``/metrics`` (``--http-port``), over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port

from .test_agent_connect import assign

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from conftest import AgentProcess, Eventually, FakeAgentService, FakeServer

    StartAgent = Callable[..., Awaitable[AgentProcess]]
    MakeService = Callable[..., FakeAgentService]


def get(url: str) -> httpx.Response:
    # The agent is another process: a short blocking request does not hold it up.
    return httpx.get(url, timeout=5)


def started(base: str, runtime: str) -> float:
    """``flowyard_agent_runs_started_total`` of ``runtime`` as the agent serves it now."""
    text = get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "flowyard_agent_runs_started_total" and sample.labels == {
                "runtime": runtime
            }:
                return sample.value
    return 0.0


async def test_healthz_turns_ok_once_connected_and_metrics_count_runs_started(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWYARD_AGENT_HEALTH_FILE", str(tmp_path / "agent.health"))
    service = make_service(heartbeat_interval=0.2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The control plane's address is known, but nothing answers there yet.
    fake_server.port = free_port()
    agent = await start_agent(fake_server.address, "--http-port", str(port))

    # Listening before the control plane answers: not healthy yet.
    def status() -> int:
        return get(f"{base}/healthz").status_code

    await eventually(lambda: status() == 503, agent, message="/healthz answering 503")
    await fake_server.start(service)
    await eventually(lambda: status() == 200, agent, message="/healthz answering 200")
    await eventually(lambda: bool(service.sessions), agent, message="the first session")
    session = service.sessions[0]

    before = started(base, "process")
    session.send(assign=assign("exit0-a1"))
    await eventually(
        lambda: "credit" in session.kinds("exit0-a1"), agent, message="the run's end and credit"
    )
    assert started(base, "process") == before + 1
    response = get(f"{base}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "flowyard_agent_kubernetes_request_seconds" in response.text
    assert await agent.stop() == 0
