"""Hints between the parts of the control plane, and between its replicas.

A committed change is published as a hint: run ``r:<id>`` changed state, ``l:<id>`` got
log lines, ``d`` there may be runs to dispatch, ``s`` schedules changed, ``c:<session>:<run>`` an agent
must be told to cancel, ``x:<session>`` an agent's stale session must close, ``t:<token>`` a
token was revoked. The bus acts on a hint in this process at once and, on PostgreSQL, sends
it to the other replicas with ``LISTEN/NOTIFY`` (``store.notifications``), which act on it
the same way. A hint is never the data: whoever acts on one re-reads the database, so a lost
hint costs latency, not correctness; when the listening connection was broken, everyone who
waits is woken to re-read. (A run changed here also leaves the committed run with the taps of
its key, which use it instead of a read only when its version proves it: ``signals.tell``.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from control_plane.store.notifications import PostgresChannel

log = logging.getLogger(__name__)

RUN = "r"
LINES = "l"
DISPATCH = "d"
SCHEDULES = "s"
CANCEL = "c"
CLOSE_SESSION = "x"
TOKEN_REVOKED = "t"


class Bus:
    """Publishes hints to this process's handlers and to the other replicas."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._gap_handlers: list[Callable[[], None]] = []
        self.channel: PostgresChannel | None = None

    def on(self, kind: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(argument)`` for every hint of ``kind``, from any replica."""
        self._handlers.setdefault(kind, []).append(handler)

    def on_gap(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` when hints from other replicas may have been lost."""
        self._gap_handlers.append(handler)

    def publish(self, kind: str, argument: str = "") -> None:
        """Act on a hint here, and send it to the other replicas."""
        hint = f"{kind}:{argument}"
        self.receive([hint])
        if self.channel is not None:
            self.channel.publish([hint])

    def receive(self, hints: list[str]) -> None:
        """Act on hints (this replica's, or received from another)."""
        for hint in hints:
            kind, _, argument = hint.partition(":")
            # A newer replica's hint may have no handler here: acting on none is safe.
            for handler in self._handlers.get(kind, ()):
                try:
                    handler(argument)
                except Exception:
                    log.exception("acting on the hint %r failed", hint)

    def gap(self) -> None:
        """Hints may have been lost: everyone re-reads."""
        for handler in self._gap_handlers:
            handler()
