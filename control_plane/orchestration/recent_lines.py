"""The lines this replica stored last, for the runs someone follows.

A follower that has caught up is woken by every batch an engine sends, and reads the batch
that woke it. Reading it back from the database costs more than storing it did (a query,
then a record built per row), so the batch is kept here, as stored, and the read is served
from memory. Only runs with a follower in this replica are kept, and only their latest lines.

What is kept is always one attempt's lines with consecutive seqs, each of them stored. A
follower is served from here only when its position lies inside that range and lines follow
it here; at the end of the range, or anywhere else, it reads the database. So a line another
replica (or the control plane itself) stored is never missed: such a line can only come
after the range, where the database is read, or break the range, which starts it anew.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from control_plane.models import LogRecord
from control_plane.orchestration.counting import counted

__all__ = ["RecentLines"]


class RecentLines:
    """Per followed run, the latest stored lines (one attempt, consecutive seqs)."""

    def __init__(self, keep: int, most: int) -> None:
        #: Lines kept per run (at least one batch of the largest size, so a follower that
        #: reads a batch at a time is never outrun by one)...
        self._keep = keep
        #: ...and in all: past it, the runs that stored least recently are forgotten (their
        #: followers read the database), so many followed chatty runs cannot fill the memory.
        self._most = most
        self._followers: Counter[str] = Counter()
        self._lines: dict[str, list[LogRecord]] = {}

    @contextmanager
    def following(self, run_id: str) -> Iterator[None]:
        """Keep the lines of ``run_id`` stored from now on, while the block runs."""
        try:
            with counted(self._followers, run_id):
                yield
        finally:
            if run_id not in self._followers:
                self._lines.pop(run_id, None)

    def stored(self, run_id: str, lines: Sequence[LogRecord]) -> None:
        """``lines`` (one attempt, consecutive seqs) were committed."""
        if not lines or run_id not in self._followers:
            return
        kept = self._lines.get(run_id)
        first = lines[0]
        if (
            kept
            and kept[-1].attempt == first.attempt
            and first.seq <= kept[-1].seq + 1 <= (lines[-1].seq)
        ):
            kept.extend(lines[kept[-1].seq + 1 - first.seq :])
            if len(kept) > 2 * self._keep:
                del kept[: len(kept) - self._keep]
        elif not kept or kept[-1].attempt != first.attempt or first.seq > kept[-1].seq + 1:
            # Another attempt, or a gap (lines stored elsewhere): start anew from here.
            self._lines[run_id] = list(lines[-self._keep :])
        # The run that stored last goes last, and the first ones go first when over the limit.
        self._lines[run_id] = self._lines.pop(run_id)
        total = sum(len(kept) for kept in self._lines.values())
        for other in list(self._lines):
            if total <= self._most or other == run_id:
                break
            total -= len(self._lines.pop(other))

    def after(self, run_id: str, attempt: int, seq: int, limit: int) -> list[LogRecord] | None:
        """Up to ``limit`` lines after (``attempt``, ``seq``), if they are kept here and
        follow it here; None when the database must be read."""
        kept = self._lines.get(run_id)
        if not kept or kept[0].attempt != attempt:
            return None
        start = seq + 1 - kept[0].seq
        if not 0 <= start < len(kept):
            return None
        return kept[start : start + limit]

    def at_end(self, run_id: str, attempt: int, seq: int) -> bool:
        """Whether (``attempt``, ``seq``) is the last line kept for ``run_id``: a follower
        there has every line this replica stored for the run."""
        kept = self._lines.get(run_id)
        if not kept:
            return False
        return kept[-1].attempt == attempt and kept[-1].seq == seq
