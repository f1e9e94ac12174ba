"""SQLite through SQLAlchemy's asyncio API, with each statement run on the calling thread.

SQLAlchemy's ``aiosqlite`` dialect sends every DBAPI call (execute, fetch, close, commit) to a
thread per connection and waits for the answer on the event loop: three or four thread hops
and loop wake-ups per statement. A SQLite statement on a local file takes microseconds, so
those hops, not SQLite, were most of the control plane's cost per statement.

This module gives the dialect a connection with aiosqlite's interface whose coroutines run
the ``sqlite3`` call at once and never suspend, so a statement costs what SQLite costs. What
that trades away, and why it is the right trade here:

- A statement blocks the event loop while it runs. The control plane's statements are
  indexed and small; the longest (a page of runs, a batch of log lines) take a few
  milliseconds, less than the hops they replace under load.
- A large batch (many runs or log lines stored in one transaction) would hold the loop for
  its whole SQLite time, so a transaction can ask for its statements to run on a worker
  thread instead (``Connection.offload``): ``GroupCommit`` does, and SQLite then works on the
  batch while the loop serves everyone else.
- SQLite copies its write-ahead log into the database file (a checkpoint, with an fsync)
  inside the commit that finds the log past a size: a commit of the loop's every few
  megabytes written would stall it for milliseconds (9-10 ms each on this machine). A
  thread of its own does that copy instead (``Checkpointer``), beside the loop; the commit
  keeps the job only when the log outgrows what that thread keeps up with.
- SQLite empties a connection's page cache whenever another connection has committed since
  its last statement, so a read on a connection of its own would start cold after every
  write. A driver statement's read runs on the connection that committed last instead,
  while that one is idle (``Connection._reading``).
- Waiting for another process's lock (``busy_timeout``) also blocks the loop. Within the
  process, writers already queue on an asyncio lock (``Database.write``) and WAL lets readers
  run beside the writer, so only another process writing the same file (an operator's
  ``sqlite3`` shell, say) can make a statement wait, and only for as long as its transaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")
log = logging.getLogger(__name__)


def create_engine(url: URL, timeout: float) -> AsyncEngine:
    """An async engine for the SQLite ``url`` whose statements run on the calling thread.

    ``timeout`` is how long a statement waits for another process's lock, in seconds.
    """
    files, options = url.get_dialect()().create_connect_args(url)
    (database,) = files
    options = {**options, "timeout": timeout, "check_same_thread": False}

    # One thread for every offloaded transaction: they are writes, which run one at a time.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    open_file = functools.partial(sqlite3.connect, database, **options)
    checkpointer = Checkpointer(open_file)

    async def connect() -> Connection:
        conn = open_file()
        conn.execute(f"PRAGMA wal_autocheckpoint={Checkpointer.COMMIT_CHECKPOINTS_PAGES}")
        return Connection(conn, worker, checkpointer)

    # Errors name the statement, never its values (job variables, parameters: maybe secrets).
    return create_async_engine(url, async_creator=connect, hide_parameters=True)


class Checkpointer:
    """Copies the write-ahead log into the database file on a thread of its own, soon after
    commits, so that commits on the event loop do not.

    A commit says it wrote (``wrote``); the thread then runs a passive checkpoint (one that
    never waits for, nor blocks, a reader or the writer) and lets ``INTERVAL`` pass before
    the next, so a busy writer costs one checkpoint and one fsync per interval, whatever its
    number of commits. SQLite starts the log over at a write once a checkpoint has copied it
    all; under writes that never pause, a checkpoint beside them never quite has, so the
    commits keep SQLite's own checkpoint for a log past ``COMMIT_CHECKPOINTS_PAGES``: there
    it copies only what this thread has not, then the log starts over.

    The thread runs while connections are open (``opened``/``closed``), with a connection
    of its own, and ends with the last of them.
    """

    #: Seconds between checkpoints while commits come.
    INTERVAL = 0.1
    #: The log's size, in pages, past which a commit checkpoints itself (SQLite's default is
    #: 1,000: 4 MB, which a chatty flow's lines fill in a fifth of a second).
    COMMIT_CHECKPOINTS_PAGES = 8_192

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._connections = 0
        #: The running thread's wake-up (set by a commit) and its end (set with the last
        #: connection's close); None while no thread runs.
        self._events: tuple[threading.Event, threading.Event] | None = None
        self._thread: threading.Thread | None = None
        #: The connection that committed last, while it is open (see ``Connection._reading``).
        self.last_writer: Connection | None = None

    def opened(self) -> None:
        """A connection to the database opened: the thread runs while one is open."""
        with self._lock:
            self._connections += 1
            if self._thread is None:
                self._events = threading.Event(), threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=self._events, name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def closed(self) -> None:
        """A connection closed; with the last one, the thread ends."""
        with self._lock:
            self._connections -= 1
            if self._connections or self._thread is None or self._events is None:
                return
            thread, (wanted, ending) = self._thread, self._events
            self._thread = self._events = None
        ending.set()
        wanted.set()
        thread.join()

    def wrote(self) -> None:
        """A transaction committed: the log has something to copy."""
        events = self._events
        if events is not None and not events[0].is_set():
            events[0].set()

    def _run(self, wanted: threading.Event, ending: threading.Event) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as error:
            log.warning(
                "cannot open the SQLite database to checkpoint its write-ahead log (%s); "
                "commits checkpoint it instead",
                error,
            )
            return
        failing = False
        try:
            while not ending.is_set():
                wanted.wait()
                wanted.clear()
                if ending.is_set():
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:
                    # Said once until it works again; the commits' own checkpoints still
                    # bound the log meanwhile.
                    if not failing:
                        log.warning("checkpointing the SQLite write-ahead log failed: %s", error)
                    failing = True
                else:
                    failing = False
                ending.wait(self.INTERVAL)
        finally:
            conn.close()


class Connection:
    """aiosqlite's ``Connection``, as the SQLAlchemy dialect uses it, without its thread."""

    def __init__(
        self, conn: sqlite3.Connection, worker: ThreadPoolExecutor, checkpointer: Checkpointer
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._worker = worker
        self._checkpointer = checkpointer
        checkpointer.opened()
        #: Whether statements run on the worker thread instead of the calling one.
        self.offload = False
        #: Cursors SQLAlchemy has open on it: one may be part-way through its rows, reading
        #: the database as it was when it started.
        self.cursors = 0
        # The dialect sets ``isolation_level`` by queueing a call on aiosqlite's thread.
        self._tx = _RunAtOnce()

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # Read by the dialect to tell whether the connection is still open.
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._open.isolation_level

    @property
    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("no active connection")
        return self._conn

    def cursor(self) -> Cursor:
        self.cursors += 1
        return Cursor(self._open.cursor(), self)

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, on the worker thread if the connection is offloading."""
        if not self.offload:
            return call(*args)
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, functools.partial(call, *args)
        )

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """Execute ``sql`` and fetch every row it returns, in one call: the rows as ``sqlite3``
        gives them. Errors are SQLAlchemy's, as a statement through it raises them (``sqlite3``'s
        "database is locked" is an ``OperationalError``, which callers answer as busy)."""
        return await self._driver_call(self._fetch, sql, parameters)

    async def execute_many(self, sql: str, parameters: Sequence[Sequence[Any]]) -> int:
        """Execute ``sql`` once for each set of ``parameters``, as ``fetch`` does; the number
        of rows it changed."""
        return await self._driver_call(self._execute_many, sql, parameters)

    async def _driver_call(self, call: Callable[[str, Any], T], sql: str, parameters: Any) -> T:
        try:
            return await self.run(call, sql, parameters)
        except sqlite3.Error as error:
            raise sa_exc.DBAPIError.instance(sql, parameters, error, sqlite3.Error) from error

    def _fetch(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        return self._reading().execute(sql, parameters).fetchall()

    def _reading(self) -> sqlite3.Connection:
        """The connection to run a statement of this one's on: itself, unless it is in no
        transaction (a read of ``Database.read``) and the connection that committed last is
        idle: then that one, whose page cache holds the pages its writes touched.

        SQLite empties a connection's page cache whenever another connection has written
        since its last statement, so a read on a connection of its own starts cold after
        every commit: a run read by its key cost 100 us so, 40 us warm. On the connection
        that wrote last, outside a transaction, a statement reads what is committed, as on
        any other. Only the event loop's thread runs a statement outside a transaction (a
        worker thread runs those of an offloaded transaction only), so the two cannot meet.
        """
        own = self._open
        if own.in_transaction or self.offload:
            return own
        warm = self._checkpointer.last_writer
        if warm is None or warm is self or warm.offload or warm.cursors:
            return own
        conn = warm._conn
        if conn is None or conn.in_transaction:
            return own
        return conn

    def _execute_many(self, sql: str, parameters: Sequence[Sequence[Any]]) -> int:
        return self._open.executemany(sql, parameters).rowcount

    def begin(self) -> None:
        """Begin a transaction, on the calling thread (SQLite's deferred BEGIN takes no lock)."""
        self._open.execute("BEGIN")

    async def commit(self) -> None:
        await self.run(self._open.commit)
        self._checkpointer.wrote()
        self._checkpointer.last_writer = self

    async def rollback(self) -> None:
        await self.run(self._open.rollback)

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._open.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the connection (the dialect's forced close)."""
        if self._checkpointer.last_writer is self:
            self._checkpointer.last_writer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
            self._checkpointer.closed()


class Cursor:
    """aiosqlite's ``Cursor``, as the SQLAlchemy dialect uses it, without its thread."""

    def __init__(self, cursor: sqlite3.Cursor, connection: Connection) -> None:
        self._cursor = cursor
        self._connection = connection
        self._closed = False

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        await self._connection.run(self._cursor.execute, sql, parameters or ())
        return self

    async def executemany(self, sql: str, parameters: Sequence[Sequence[Any]]) -> Cursor:
        await self._connection.run(self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return await self._connection.run(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self._cursor.arraysize if size is None else size
        return await self._connection.run(self._cursor.fetchmany, count)

    async def fetchall(self) -> list[Any]:
        return await self._connection.run(self._cursor.fetchall)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.cursors -= 1
        self._cursor.close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        # A server-side cursor (``AsyncConnection.stream``) reads rows this way.
        while (row := await self.fetchone()) is not None:
            yield row


def driver_of(connection: AsyncConnection) -> Connection | None:
    """The driver connection behind ``connection`` if it is one of this module's (the
    connection has begun: it holds a driver connection)."""
    sync = connection.sync_connection
    driver = None if sync is None else sync.connection.driver_connection
    return driver if isinstance(driver, Connection) else None


class _RunAtOnce:
    """Stands in for aiosqlite's queue of calls to its thread: runs each call when queued."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, call = item
        try:
            result = call()
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(result)
