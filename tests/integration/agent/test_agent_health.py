"""The liveness file: touched on Welcome and on every server heartbeat; ``--probe`` reads it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import AgentProcess, Eventually, FakeAgentService, FakeServer

    StartAgent = Callable[..., Awaitable[AgentProcess]]
    MakeService = Callable[..., FakeAgentService]


def probe(health: Path) -> int:
    return subprocess.run(
        [sys.executable, "-m", "agent.main", "--probe"],
        env={"FLOWYARD_AGENT_HEALTH_FILE": str(health), "PATH": ""},
        timeout=30,
    ).returncode


async def test_server_heartbeats_keep_the_health_file_fresh(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    health = tmp_path / "agent.health"
    monkeypatch.setenv("FLOWYARD_AGENT_HEALTH_FILE", str(health))
    assert probe(health) == 1  # no agent has run yet
    service = make_service(heartbeat_interval=0.2)
    await fake_server.start(service)
    agent = await start_agent(fake_server.address)
    await eventually(health.exists, agent, message="the health file after Welcome")
    first = health.stat().st_mtime_ns
    await eventually(
        lambda: health.stat().st_mtime_ns > first, agent, message="a touch on a heartbeat"
    )
    assert probe(health) == 0


async def test_a_silent_server_does_not_touch_the_health_file(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    health = tmp_path / "agent.health"
    monkeypatch.setenv("FLOWYARD_AGENT_HEALTH_FILE", str(health))
    service = make_service(heartbeat_interval=0.5, send_heartbeats=False)
    await fake_server.start(service)
    agent = await start_agent(fake_server.address)
    await eventually(health.exists, agent, message="the health file after Welcome")
    touched = health.stat().st_mtime_ns
    # The agent's own heartbeats flow, but nothing came from the server: no touch.
    await eventually(
        lambda: len(service.sessions[0].of_kind("heartbeat")) >= 2, agent, message="heartbeats"
    )
    assert health.stat().st_mtime_ns == touched
