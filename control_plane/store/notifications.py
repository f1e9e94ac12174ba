"""PostgreSQL ``LISTEN/NOTIFY``: hints from one control-plane replica to the others.

A hint is a short string naming what changed ("a run's state or logs", "runs to dispatch");
it is never the data itself, so a lost hint costs latency, not correctness: the receiver
re-reads the database. Hints are sent in batches, several to a notification, each
notification saying which replica sent it so that a replica skips its own (it has acted on
them already, in process).

Two connections of their own, outside the pool: one that only listens, one that only sends,
opened with the pool's own connection parameters (``db.connect_params``), so that the URL's
query options (``options``, ``sslmode``...) reach PostgreSQL as the pool's connections give them.
When the listening connection breaks (the database restarted, the network blipped), it is
opened again with a growing pause, and ``on_gap`` is called once it listens again: what was
notified meanwhile was lost, so everyone waiting must re-read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "flowyard"
#: PostgreSQL refuses a payload of 8,000 bytes or more.
MAX_PAYLOAD_BYTES = 7_900
RECONNECT_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)


def payloads(sender: str, hints: Iterable[str]) -> list[str]:
    """The notifications that carry ``hints``: ``sender`` on the first line, one hint a line."""
    result: list[str] = []
    lines = [sender]
    size = len(sender.encode())
    for hint in hints:
        cost = len(hint.encode()) + 1
        if len(lines) > 1 and size + cost > MAX_PAYLOAD_BYTES:
            result.append("\n".join(lines))
            lines, size = [sender], len(sender.encode())
        lines.append(hint)
        size += cost
    if len(lines) > 1:
        result.append("\n".join(lines))
    return result


class PostgresChannel:
    """Sends this replica's hints and receives the other replicas'."""

    def __init__(
        self,
        params: Mapping[str, Any],
        replica_id: str,
        on_hints: Callable[[list[str]], None],
        on_gap: Callable[[], None],
    ) -> None:
        """``params``: psycopg's keyword arguments to connect with (``db.connect_params``)."""
        self._params = dict(params)
        self._replica_id = replica_id
        self._on_hints = on_hints
        self._on_gap = on_gap
        self._pending: dict[str, None] = {}
        self._has_pending = asyncio.Event()

    def publish(self, hints: Iterable[str]) -> None:
        """Send ``hints`` to the other replicas soon (in order, duplicates merged)."""
        for hint in hints:
            self._pending[hint] = None
        if self._pending:
            self._has_pending.set()

    async def run(self) -> None:
        """Listen and send until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen(), name="notification listener")
            group.create_task(self._send(), name="notification sender")

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    **self._params, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    # Whatever was notified while we were not listening is lost.
                    self._on_gap()
                    async for notification in conn.notifies():
                        sender, _, text = notification.payload.partition("\n")
                        if sender != self._replica_id and text:
                            self._on_hints(text.split("\n"))
            except psycopg.Error as error:
                pause = RECONNECT_PAUSES[min(failures, len(RECONNECT_PAUSES) - 1)]
                failures += 1
                log.warning(
                    "listening for other replicas' changes failed (%s); again in %.1f s",
                    str(error).strip().splitlines()[0] if str(error).strip() else error,
                    pause,
                )
                await asyncio.sleep(pause)

    async def _send(self) -> None:
        failures = 0
        conn: psycopg.AsyncConnection[object] | None = None
        try:
            while True:
                await self._has_pending.wait()
                # Taken as a whole: a hint published while these are sent goes in the next
                # batch, after the change it stands for was committed.
                hints, self._pending = self._pending, {}
                self._has_pending.clear()
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            **self._params, autocommit=True
                        )
                    for payload in payloads(self._replica_id, hints):
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    failures = 0
                except psycopg.Error as error:
                    # Hints are not data, yet they save the others a wait: send them again.
                    self.publish(hints)
                    pause = RECONNECT_PAUSES[min(failures, len(RECONNECT_PAUSES) - 1)]
                    failures += 1
                    log.warning("telling other replicas of changes failed (%s)", error)
                    if conn is not None:
                        await conn.close()
                        conn = None
                    await asyncio.sleep(pause)
        finally:
            if conn is not None:
                await conn.close()
