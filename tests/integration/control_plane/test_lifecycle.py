"""The server's own tasks: how the control plane stops, and what happens when one of them ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.config import ServerConfig
from control_plane.server import App, build

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
