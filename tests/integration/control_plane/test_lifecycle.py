"""The server's own tasks: how the control plane stops, and what happens when one of them ends."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from control_plane.config import ServerConfig
from control_plane.models import Run
from control_plane.orchestration.liveness import Reaper
from control_plane.server import App, RootTaskFailed, build, serve

DEADLINE = 15.0


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    """A control plane on SQLite, built but not started; stopped after the test."""
    built = await build(ServerConfig(port=0, data_dir=tmp_path))
    try:
        yield built
    finally:
        async with asyncio.timeout(DEADLINE):
            await built.stop(0.1)


async def test_a_stop_that_is_itself_cancelled_ends_at_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dispatcher slow to finish once cancelled: the stop waits for it, until the stop is
    # cancelled in turn (a timeout around it). That cancel must end the stop, not be taken
    # for the dispatcher's own.
    cancelled, release = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
            await release.wait()

    monkeypatch.setattr(app.dispatcher, "run", slow_to_stop)
    await app.start()
    stopping = asyncio.create_task(app.stop(0.1), name="stopping")
    try:
        async with asyncio.timeout(DEADLINE):
            await cancelled.wait()
        stopping.cancel()
        done, _ = await asyncio.wait({stopping}, timeout=DEADLINE)
        assert stopping in done and stopping.cancelled()
    finally:
        release.set()
        await asyncio.wait({stopping}, timeout=DEADLINE)


async def test_a_loop_that_fails_for_good_is_reported_and_the_app_says_so(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_pass() -> datetime | None:
        raise RuntimeError("a bug in the pass\nwith a second line")

    monkeypatch.setattr(app.dispatcher, "dispatch_once", broken_pass)
    await app.start()
    with pytest.raises(RootTaskFailed) as failed:
        async with asyncio.timeout(DEADLINE):
            await app.wait()
    assert failed.value.task_name == "dispatcher"
    assert str(failed.value) == "the dispatcher failed: RuntimeError: a bug in the pass"
    assert isinstance(failed.value.__cause__, RuntimeError)
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.getMessage() == f"{failed.value}; the control plane stops"
    assert record.exc_info is not None and record.exc_info[1] is failed.value.__cause__
    # The others run on until the control plane is stopped, the graceful way.
    assert [t.get_name() for t in app.tasks if not t.done()] == [
        "gRPC server",
        "reaper",
        "scheduler",
        "replica heartbeat",
        "engine heartbeat writer",
    ]


async def test_a_grpc_server_stopped_from_outside_stops_the_app(app: App) -> None:
    await app.start()
    await app.server.stop(None)
    with pytest.raises(RootTaskFailed, match="the gRPC server ended"):
        async with asyncio.timeout(DEADLINE):
            await app.wait()


async def test_waiting_ends_without_error_when_stop_is_asked(app: App) -> None:
    await app.start()
    stop = asyncio.Event()
    waiting = asyncio.create_task(app.wait(stop), name="waiting")
    stop.set()
    async with asyncio.timeout(DEADLINE):
        await waiting
    assert app.failure is None


async def test_serve_stops_when_a_loop_fails_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_sweep(self: Reaper) -> list[Run]:
        raise ValueError("stored data no sweep can read")

    monkeypatch.setattr(Reaper, "sweep_once", broken_sweep)
    config = ServerConfig(port=0, data_dir=tmp_path, ready_file=tmp_path / "ready")
    with pytest.raises(RootTaskFailed, match="the reaper failed: ValueError: stored data"):
        async with asyncio.timeout(DEADLINE):
            await serve(config)
    # It stopped the graceful way: the port it served on is closed.
    port = int((tmp_path / "ready").read_text().rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
