"""Engine heartbeats are stored in batches: one transaction for many, none lost on a failure."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.orchestration.heartbeats import Heartbeats
from control_plane.store.db import Database

from .conftest import Plane
from .test_liveness import last_heartbeat


class CountingDatabase:
    """The plane's database, counting write transactions; it can be made to fail them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writes = 0
        self.failing = False

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        self.writes += 1
        if self.failing:
            raise sa_exc.OperationalError("UPDATE", {}, Exception("database is locked"))
        async with self.db.write() as conn:
            yield conn


async def test_many_heartbeats_are_one_write_and_survive_a_failed_one(ready: Plane) -> None:
    # A run whose engine never streams: only this test's heartbeats touch it.
    run_id = (await ready.run()).id
    assert last_heartbeat(ready, run_id) is None
    db = CountingDatabase(ready.app.db)
    heartbeats = Heartbeats(db)  # type: ignore[arg-type]
    for _ in range(50):
        heartbeats.mark(run_id, 1)
    heartbeats.mark("f" * 32, 1)  # an attempt that no longer exists changes nothing
    db.failing = True
    with pytest.raises(sa_exc.OperationalError):
        await heartbeats.flush()
    assert last_heartbeat(ready, run_id) is None
    db.failing = False
    await heartbeats.flush()
    assert db.writes == 2
    assert last_heartbeat(ready, run_id) is not None
    # Nothing left to store: no transaction at all.
    await heartbeats.flush()
    assert db.writes == 2
