"""Following a run: its log lines and its changes, as they are stored.

The gRPC ``TailLogs``/``WatchRun`` streams and the HTTP Server-Sent-Events streams of the web UI
are the same use case seen through two protocols, so both iterate these generators. Each one
reads what is stored, then waits for the run's signal (set by this replica, or by another
through the notification channel) before reading again; a missed signal costs at most
``RECHECK_SECONDS`` (``orchestration.signals``), never a line. Followers of one run that have
caught up take new lines from the run's one reader instead (``orchestration.feeds``), the
lines just stored here are read from memory (``orchestration.recent_lines``), and the run's
state is read again only when it changed (``_RunView``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Iterator

from control_plane.errors import InvalidArgument
from control_plane.models import LogRecord, Run, TaskRunState
from control_plane.orchestration import validation
from control_plane.orchestration.counting import counted
from control_plane.orchestration.feeds import Feed, Stopped, Subscription
from control_plane.orchestration.recent_lines import RecentLines
from control_plane.orchestration.runs import Runs
from control_plane.orchestration.signals import (
    RECHECK_SECONDS,
    Signals,
    Tap,
    lines_key,
    run_key,
    wait_or_recheck,
)
from control_plane.orchestration.task_runs import TaskRuns
from control_plane.store import logs as logs_repo
from control_plane.store.db import Database

log = logging.getLogger(__name__)

#: Lines read at once: one read per engine batch, however large, rather than several.
LINES_BATCH = 5_000
#: A followed run's state is read again at least this often without a notification: a change
#: whose notification was missed is seen as late as a missed line is, never later.
RUN_VIEW_SECONDS = RECHECK_SECONDS


class _RunView:
    """A followed run as last read, shared by every read of its lines on this replica.

    Each read of lines first needs the run's state (read before the lines: see ``_read``).
    Between two batches of a chatty run the state rarely changes, so it is read again only
    when the run was notified as changed since the last read began (a tap counts every
    notification: this replica's changes and other replicas' alike), or when the last read
    is ``RUN_VIEW_SECONDS`` old. A read that begins after a notification sees that change,
    so whoever waits for it gets a state no older than the notifications it knew of.
    """

    def __init__(self, tap: Tap, registration: contextlib.ExitStack) -> None:
        self.tap = tap
        self.registration = registration
        #: The latest read, pending or done, and when it began (the loop's clock).
        self.reading: asyncio.Future[Run] | None = None
        self.read_at = 0.0


class Following:
    """Streams of one run's lines and changes, shared by every protocol that offers them."""

    def __init__(
        self,
        db: Database,
        runs: Runs,
        task_runs: TaskRuns,
        signals: Signals,
        recent: RecentLines,
    ) -> None:
        self._db = db
        self._runs = runs
        self._task_runs = task_runs
        self._signals = signals
        self._recent = recent
        self._stopping = False
        #: Followers of each run, by run, source and idle time, and their feeds (_join).
        self._followers: Counter[tuple[str, str, float | None]] = Counter()
        self._feeds: dict[tuple[str, str, float | None], Feed] = {}
        #: Reads asked for and not yet begun, by run, source and position (_shared_read).
        self._pending: dict[
            tuple[str, str, int, int], asyncio.Future[tuple[Run, list[LogRecord]]]
        ] = {}
        #: The followed runs' states, by run (``_RunView``), and how many follow each.
        self._views: dict[str, _RunView] = {}
        self._viewers: Counter[str] = Counter()

    async def lines(
        self,
        run_id: str,
        after_attempt: int,
        after_seq: int,
        *,
        follow: bool,
        idle: float | None = None,
        stoppable: bool = False,
    ) -> AsyncGenerator[tuple[Run, list[LogRecord] | None]]:
        """The run's lines after (``after_attempt``, ``after_seq``), in order, in batches, each
        with the run as read just before it; then, once no line is left (and, if ``follow``,
        the run has ended), one last item with no lines and the run as it ended.

        With ``idle``, an item without lines (``None``) comes after every ``idle`` seconds
        of waiting, so that a stream can show it is alive. With ``stoppable``, it ends as
        soon as ``stop()`` is called, without its last item (the client resumes elsewhere);
        otherwise the protocol's server ends it as it stops.

        Raises:
            InvalidArgument: a malformed run id or a negative position.
            NotFound: no such run.
        """
        validation.run_id(run_id)
        if after_attempt < 0 or after_seq < 0:
            raise InvalidArgument("after_attempt/after_seq: must not be negative")
        attempt, seq = after_attempt, after_seq
        run = await self._db.shielded(self._runs.current(run_id))
        # A subflow's lines are stored with the attempt of the run whose engine runs it.
        source, _ = await self._db.shielded(self._runs.engine_run_of(run))
        with (
            counted(self._followers, (run.id, source, idle)),
            self._recent.following(source),
            self._viewing(run.id),
        ):
            while True:
                lines: list[LogRecord] | None
                subscription = None
                with self._signals.waiting(lines_key(source)) as changed:
                    run, lines = await self._shared_read(run.id, source, attempt, seq)
                    if not lines and follow and not run.is_terminal:
                        # Caught up: with others following, the run's feed reads for all.
                        subscription = self._join(run.id, source, (attempt, seq), idle)
                        if subscription is None:
                            woken = await wait_or_recheck(changed, within=idle or RECHECK_SECONDS)
                            if self._stopping and stoppable:
                                return
                            if woken or idle is None:
                                continue
                            lines = None  # a quiet spell, said as such
                if subscription is not None:
                    try:
                        while (item := await subscription.next()) is not None:
                            if isinstance(item, Stopped):
                                if stoppable:
                                    return
                                break
                            run, lines = item
                            if lines and (lines[0].attempt, lines[0].seq) <= (attempt, seq):
                                # Skip what this follower had before it joined.
                                lines = [
                                    line
                                    for line in lines
                                    if (line.attempt, line.seq) > (attempt, seq)
                                ]
                                if not lines:
                                    continue
                            if lines:
                                attempt, seq = lines[-1].attempt, lines[-1].seq
                            yield run, lines
                            if lines == []:
                                return
                    finally:
                        subscription.leave()
                    continue  # left the feed: read on its own again
                if lines is None:
                    yield run, None
                    continue
                if not lines:
                    yield run, []
                    return
                attempt, seq = lines[-1].attempt, lines[-1].seq
                yield run, lines

    def _join(
        self, run_id: str, source: str, position: tuple[int, int], idle: float | None
    ) -> Subscription | None:
        """A place in the feed of ``run_id`` for a follower at ``position`` that has every
        stored line; None when it waits on its own: it follows the run alone (a feed would
        only add a hop between its read and its client), the feed is ahead of it (what the
        feed read was stored after its read began, so its signal is set already), or the
        server stops."""
        key = (run_id, source, idle)
        if self._stopping or self._followers[key] < 2:
            return None
        feed = self._feeds.get(key)
        if feed is not None and not feed.ended:
            return None if feed.position > position else feed.subscribe()
        feed = self._feeds[key] = Feed(
            self._shared_read, self._signals, run_id, source, position, idle, self._stopped
        )
        subscription = feed.subscribe()
        feed.task = asyncio.ensure_future(self._run_feed(key, feed))
        return subscription

    async def _run_feed(self, key: tuple[str, str, float | None], feed: Feed) -> None:
        try:
            await feed.run()
        except Exception:
            # Its followers read on their own again, and meet the failure themselves.
            log.warning("the feed of run %s failed", key[0], exc_info=True)
        finally:
            if self._feeds.get(key) is feed:
                del self._feeds[key]

    def _stopped(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """The server stops: every stoppable follower waiting for more ends its stream now
        (its client reconnects and resumes, elsewhere or here once the server is back)."""
        self._stopping = True
        self._signals.notify_all()

    async def _shared_read(
        self, run_id: str, source: str, attempt: int, seq: int
    ) -> tuple[Run, list[LogRecord]]:
        """``_read``, shared by every follower that asks for the same lines before the read
        begins.

        Followers of one run are woken together by one notification and, once caught up,
        ask for the same lines: one read serves them all instead of one each. Joining only a
        read that has not begun keeps each follower's guarantee: its waiter was registered
        before the read it gets started, so a line stored after that read began wakes it.
        The read runs as a task of its own, shielded: a follower that leaves does not cancel
        it for the others.
        """
        key = (run_id, source, attempt, seq)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._db.shielded(self._read(key)))
        return await asyncio.shield(pending)

    async def _read(self, key: tuple[str, str, int, int]) -> tuple[Run, list[LogRecord]]:
        # Begun: later followers start a read of their own (see _shared_read).
        del self._pending[key]
        run_id, source, attempt, seq = key
        # Read the state before the lines: every line of a run is stored before its
        # terminal state, so a terminal state read first means no line can be missed.
        # ``source`` is the run whose lines these are (``engine_run_of``): the run itself,
        # or the one whose engine runs this subflow, of whose lines the subflow's are read.
        run = await self._current(run_id)
        subflow_run = run.id if run.subflow else None
        # The batch that woke the follower is usually the one just stored here.
        lines = None if subflow_run else self._recent.after(source, attempt, seq, LINES_BATCH)
        if lines is None and not subflow_run and self._recent.at_end(source, attempt, seq):
            # Caught up with what this replica stored (the look for more after a batch):
            # the database is only asked whether anyone stored more (another replica, the
            # control plane's own lines). One this replica stored meanwhile is in memory
            # by the time the answer comes (it is kept as it commits).
            async with self._db.read() as conn:
                more = await logs_repo.any_after(conn, source, attempt, seq)
            lines = self._recent.after(source, attempt, seq, LINES_BATCH) if more else []
        if lines is None:
            async with self._db.read() as conn:
                lines = await logs_repo.read_after(
                    conn, source, attempt, seq, LINES_BATCH, subflow_run=subflow_run
                )
        return run, lines

    @contextlib.contextmanager
    def _viewing(self, run_id: str) -> Iterator[None]:
        """Keep the view of ``run_id`` (and its tap) while the block runs."""
        if run_id not in self._views:
            registration = contextlib.ExitStack()
            tap = registration.enter_context(self._signals.tapping(run_key(run_id)))
            self._views[run_id] = _RunView(tap, registration)
        try:
            with counted(self._viewers, run_id):
                yield
        finally:
            if run_id not in self._viewers:
                self._views.pop(run_id).registration.close()

    async def _current(self, run_id: str) -> Run:
        """The run's state for a read of its lines: as last read, unless it changed since
        (see ``_RunView``).

        Raises:
            NotFound: no such run (any more).
        """
        view = self._views.get(run_id)
        if view is None:
            return await self._runs.current(run_id)
        notified, _ = view.tap.taken()
        now = asyncio.get_running_loop().time()
        last = view.reading
        if (
            notified
            or last is None
            or now - view.read_at >= RUN_VIEW_SECONDS
            or (last.done() and (last.cancelled() or last.exception() is not None))
        ):
            last = view.reading = self._db.background(self._runs.current(run_id))
            last.add_done_callback(_retrieved)
            view.read_at = now
        return await asyncio.shield(last)

    async def changes(
        self, run_id: str, *, idle: float | None = None, stoppable: bool = False
    ) -> AsyncGenerator[tuple[Run, dict[TaskRunState, int]] | None]:
        """The run and its task-run counts now, then at every change, until it has ended.

        With ``idle``, None comes after every ``idle`` seconds without a change; with
        ``stoppable``, it ends when ``stop()`` is called (as ``lines`` does).

        Raises:
            InvalidArgument: a malformed run id.
            NotFound: no such run.
        """
        validation.run_id(run_id)
        run = await self._db.shielded(self._runs.current(run_id))
        # Task runs change with the lines that carry their events (a subflow's travel with
        # its parent's); a subflow also ends with its parent's attempt, notified as the
        # parent's change.
        source, _ = await self._db.shielded(self._runs.engine_run_of(run))
        keys = {run_key(run_id), run_key(source), lines_key(source)}
        last: tuple[int, dict[TaskRunState, int]] | None = None
        while True:
            with contextlib.ExitStack() as stack:
                events = [stack.enter_context(self._signals.waiting(key)) for key in keys]
                run, counts = await self._db.shielded(self._watched(run_id))
                quiet = False
                if (run.version, counts) == last:
                    woken = await wait_or_recheck(*events, within=idle or RECHECK_SECONDS)
                    if self._stopping and stoppable:
                        return
                    if woken or idle is None:
                        continue
                    quiet = True
            if quiet:
                yield None
                continue
            last = (run.version, counts)
            yield run, counts
            if run.is_terminal:
                return

    async def _watched(self, run_id: str) -> tuple[Run, dict[TaskRunState, int]]:
        run = await self._runs.current(run_id)
        return run, await self._task_runs.counts(run_id)


def _retrieved(read: asyncio.Future[Run]) -> None:
    # A read whose every follower left meanwhile: its failure is nobody's to raise.
    if not read.cancelled():
        read.exception()
