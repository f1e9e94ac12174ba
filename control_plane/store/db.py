"""Database connections and units of work.

``Database.write()`` is the unit of work: one connection, one transaction, committed when the
block ends without an exception and rolled back otherwise. Repositories take that connection
and never commit. ``Database.read()`` gives a connection for reads only.

A unit of work that is cancelled half-way (a client hung up, the server is stopping) could leave
a transaction open or a connection checked out, so callers that can be cancelled run their
database work through ``Database.shielded``: it finishes (commits or rolls back) even when the
caller is cancelled, and ``close()`` waits for such work before closing the pool.

SQLite allows one writer at a time. Rather than let concurrent writers collide on the file lock
(and spin on ``busy_timeout``), writers inside this process queue on an asyncio lock; WAL mode
lets readers proceed while a write is in progress. PostgreSQL needs no such lock: its writers
are kept apart by row locks, unique keys and the version compare-and-set.

Units of work of one kind that arrive together can share a transaction: ``GroupCommit`` stores
every item that waited while the previous transaction ran in the next one, and gives each caller
its own outcome. Under load that turns a queue of small transactions behind SQLite's one writer
(or many round trips to PostgreSQL) into a few larger ones.

Opening a database that cannot be used (its driver is not installed, its server does not
answer, its schema is newer than this code) raises ``StoreError`` with a one-line message
that says what to do, which the CLI prints instead of a traceback. Once open, an error that
only says the database could not do the work *now* is told apart by ``transient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from control_plane import metrics
from control_plane.store import migrate, sqlite_inline
from control_plane.store.migrate import StoreError
from flowyard_common.urls import redact_url

T = TypeVar("T")
#: Set in the tasks ``Database.background`` starts: what they submit to a group commit is
#: part of work that ``Database.in_flight`` counts already, or of the server's own.
_COUNTED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flowyard_work_counted", default=False
)
Item = TypeVar("Item")
log = logging.getLogger(__name__)
#: How long ``close()`` waits for shielded work still in flight.
CLOSE_WAIT_SECONDS = 10.0
#: Read connections kept open between reads on SQLite, at most.
IDLE_READERS = 4


class Database:
    """The control plane's database: an async engine plus the write discipline above."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        #: The same pool, for ``read()``: its connections begin no transaction (on
        #: PostgreSQL, autocommit: no BEGIN and no ROLLBACK around the reads, each a round
        #: trip, for what READ COMMITTED gives each statement anyway).
        reader: dict[str, Any] = {READ_ONLY: True}
        if self.dialect == "postgresql":
            reader["isolation_level"] = "AUTOCOMMIT"
        self._reader = engine.execution_options(**reader)
        #: On SQLite, read connections kept open between reads (``read``): taking one from
        #: the pool and giving it back cost more than a read of a run by its key.
        self._idle_readers: list[AsyncConnection] | None = [] if self.dialect == "sqlite" else None
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._in_flight: set[asyncio.Future[Any]] = set()
        #: Tasks of ``_in_flight`` that ``in_flight`` does not count.
        self._uncounted = 0
        #: Items waiting in, or being stored by, a ``GroupCommit`` of this database, that
        #: no task of ``_in_flight`` submitted (those count as part of it).
        self.grouped = 0
        self._units: GroupCommit[tuple[str, Unit[Any]], Any] = GroupCommit(
            self, _run_units, offload=lambda _: False
        )
        #: The runs write transactions of this process committed last, newest last (see
        #: ``runs.as_written``).
        self._committed_runs: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect to ``url``, creating the SQLite file's directory, and migrate to head.

        Raises ``StoreError`` when the database cannot be used.
        """
        engine = create_engine(url)
        try:
            try:
                connection = await engine.connect()
            except sa_exc.ProgrammingError as error:
                # psycopg refused a value of the URL's options before reaching the server.
                raise StoreError(f"--db-url: {first_line(error.orig)}") from error
            try:
                await connection.execute(text("SELECT 1"))
            finally:
                await connection.close()
            await migrate.upgrade(engine)
        except sa_exc.OperationalError as error:
            await engine.dispose()
            raise StoreError(
                f"cannot use the database {shown_url(url)}: {first_line(error.orig)}"
            ) from error
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    @contextlib.asynccontextmanager
    async def write(self, large: bool = False) -> AsyncIterator[AsyncConnection]:
        """A unit of work: a transaction that commits on success and rolls back on error.

        ``large`` says the transaction stores a batch: on SQLite its statements then run on
        a worker thread rather than on the event loop (see ``sqlite_inline``). What the
        transaction counts (``metrics.counted``) is counted once it has committed.
        """
        started = time.perf_counter()
        pending = metrics.Pending()
        written: dict[str, Any] = {}
        try:
            async with self._transaction(large) as connection:
                connection.info[metrics.PENDING_KEY] = pending
                connection.info[WRITTEN_RUNS] = written
                connection.info[COMMITTED_RUNS] = self._committed_runs
                finishing: list[Finish] = []
                connection.info[BEFORE_COMMIT] = finishing
                try:
                    yield connection
                    for finish in finishing:
                        await finish(connection)
                finally:
                    # The connection goes back to the pool, its ``info`` with it.
                    del connection.info[metrics.PENDING_KEY]
                    del connection.info[WRITTEN_RUNS]
                    del connection.info[COMMITTED_RUNS]
                    del connection.info[BEFORE_COMMIT]
        finally:
            metrics.DB_WRITE.observe(time.perf_counter() - started)
        pending.apply()
        self._remember(written)

    def _remember(self, written: dict[str, Any]) -> None:
        """Keep the runs a transaction wrote, now committed, for the next units of work."""
        recent = self._committed_runs
        for run_id, run in written.items():
            recent.pop(run_id, None)
            recent[run_id] = run
        while len(recent) > MAX_COMMITTED_RUNS:
            del recent[next(iter(recent))]

    async def unit(self, run_id: str, work: Unit[T]) -> T:
        """Run ``work(conn)``, a unit of work on the run ``run_id``, group-committed: in one
        write transaction with the units of other callers that wait meanwhile, one after
        another, in the order of their runs' ids.

        Each unit is still all-or-nothing for its caller: if one raises, the shared
        transaction rolls back and every unit runs again in a transaction of its own (see
        ``GroupCommit``), so only the one that raised fails. A unit must do nothing but its
        writes and reads (no waiting on anything else: the others wait for it). For the
        small, frequent writes of agents' and engines' reports, where a transaction's own
        cost (the write lock, BEGIN, COMMIT) was most of the cost. On PostgreSQL the order
        is that of every transaction that locks several runs (``runs.lock_runs``): two of
        them never wait for each other's runs, each holding what the other waits for.
        """
        return cast(T, await self._units.submit((run_id, work)))

    @contextlib.asynccontextmanager
    async def _transaction(self, large: bool) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        async with self._write_lock, self.engine.begin() as connection:
            driver = sqlite_inline.driver_of(connection) if large else None
            if driver is None:
                yield connection
                return
            driver.offload = True
            try:
                yield connection
            finally:
                driver.offload = False

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only.

        Each statement reads what is committed when it starts, as under PostgreSQL's READ
        COMMITTED: on SQLite no transaction is begun around the block, so a read costs its
        statements alone and holds no snapshot between them. There a read's connection stays
        open for the next read (at most ``IDLE_READERS`` of them), unless the read failed.
        """
        started = time.perf_counter()
        try:
            if self._idle_readers is None:
                async with self._reader.connect() as connection:
                    yield connection
                return
            connection = (
                self._idle_readers.pop() if self._idle_readers else await self._reader.connect()
            )
            try:
                yield connection
            except BaseException:
                # Whatever state it is in, it goes back to the pool closed.
                self.background(connection.close(), counted=False)
                raise
            if connection.in_transaction():
                await connection.rollback()  # SQLAlchemy's own: SQLite began none
            if len(self._idle_readers) < IDLE_READERS:
                self._idle_readers.append(connection)
            else:
                await connection.close()
        finally:
            metrics.DB_READ.observe(time.perf_counter() - started)

    @property
    def in_flight(self) -> int:
        """Units of work done for callers and not yet finished, queued or running: each
        started through ``shielded`` or ``background`` counts once, with what it submits to
        a ``GroupCommit`` on the way, and an item submitted from anywhere else counts alone.
        The server's own passes (``counted=False``) do not count.

        It includes work whose caller has gone, which is why admission control weighs it
        rather than the calls it is answering.
        """
        return len(self._in_flight) - self._uncounted + self.grouped

    async def shielded(self, work: Awaitable[T], *, counted: bool = True) -> T:
        """Run ``work`` to its end even if the caller is cancelled meanwhile.

        The caller still sees its own cancellation at once; the work finishes in the
        background and ``close()`` waits for it.
        """
        return await asyncio.shield(self.background(work, counted=counted))

    def background(self, work: Awaitable[T], *, counted: bool = True) -> asyncio.Future[T]:
        """Start ``work`` as a task that ``close()`` waits for; ``counted``: whether it is
        work done for a caller, which ``in_flight`` counts (the server's own passes, and
        what carries work counted already, are not)."""
        if asyncio.iscoroutine(work):
            context = contextvars.copy_context()
            context.run(_COUNTED.set, True)
            task: asyncio.Future[T] = asyncio.get_running_loop().create_task(work, context=context)
        else:
            task = asyncio.ensure_future(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        if not counted:
            self._uncounted += 1
            task.add_done_callback(self._counted_again)
        return task

    def _counted_again(self, _: asyncio.Future[Any]) -> None:
        self._uncounted -= 1

    async def close(self) -> None:
        """Wait for shielded work still in flight, then close every pooled connection."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=CLOSE_WAIT_SECONDS)
        while self._idle_readers:
            await self._idle_readers.pop().close()
        await self.engine.dispose()


#: Turns of the event loop a group commit lets pass before it takes its batch.
GATHER_TURNS = 2


class GroupCommit(Generic[Item, T]):
    """Items stored by ``store`` in shared transactions, each caller answered on its own.

    ``store(conn, items)`` writes the items in the transaction ``conn`` and returns one
    outcome per item, in order: a value for its caller, or an exception to raise to it. A
    batch whose transaction fails is tried again one item per transaction, so an item that
    cannot be stored fails only its own caller. As with ``Database.shielded``, an item is
    stored even if its caller is cancelled meanwhile.
    """

    def __init__(
        self,
        db: Database,
        store: Callable[[AsyncConnection, Sequence[Item]], Awaitable[Sequence[T | Exception]]],
        max_items: int = 500,
        *,
        offload: Callable[[Sequence[Item]], bool] = lambda _: True,
        committed: Callable[[Sequence[Item], Sequence[T | Exception]], None] | None = None,
    ) -> None:
        """``offload(items)``: whether, on SQLite, a transaction of several items runs its
        statements on a worker thread: for large statements, where SQLite's time is worth a
        thread hop per statement.

        ``committed(items, outcomes)`` runs as soon as a transaction has committed, before
        any caller is answered and before any other task runs: what must follow a commit
        at once (memory that mirrors what is stored, say) happens there, where no reader can
        come between the commit and it, and even if the callers have gone."""
        self._db = db
        self._store = store
        self._max_items = max_items
        self._offload = offload
        self._committed = committed
        self._waiting: list[tuple[Item, asyncio.Future[T]]] = []
        self._draining = False

    async def submit(self, item: Item) -> T:
        """Store ``item`` with whatever else is waiting; its outcome."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if not _COUNTED.get():
            self._db.grouped += 1
            answer.add_done_callback(self._answered)
        self._waiting.append((item, answer))
        if not self._draining:
            self._draining = True
            self._db.background(self._drain(), counted=False)
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # Its caller has gone: nobody will read what the item's outcome was.
            answer.add_done_callback(_retrieve)
            raise

    def _answered(self, _: asyncio.Future[T]) -> None:
        self._db.grouped -= 1

    async def _drain(self) -> None:
        try:
            while self._waiting:
                # Requests that arrived with this one are still on their way here (parsed,
                # authenticated, checked): they join its transaction if it waits for them.
                for _ in range(GATHER_TURNS):
                    await asyncio.sleep(0)
                batch = self._waiting[: self._max_items]
                del self._waiting[: self._max_items]
                await self._commit(batch)
        except BaseException:
            # Cancelled (the loop is closing): nothing that still waits will be stored.
            for _, answer in self._waiting:
                answer.cancel()
            self._waiting.clear()
            raise
        finally:
            self._draining = False

    async def _commit(self, batch: list[tuple[Item, asyncio.Future[T]]]) -> None:
        outcomes: Sequence[T | Exception]
        try:
            outcomes = await self._transaction([item for item, _ in batch])
        except Exception as error:
            if len(batch) > 1:
                for one in batch:
                    await self._commit([one])
                return
            outcomes = [error]
        except BaseException:
            for _, answer in batch:
                answer.cancel()
            raise
        else:
            if self._committed is not None:
                try:
                    self._committed([item for item, _ in batch], outcomes)
                except Exception:
                    log.exception("after a group commit")
        for (_, answer), outcome in zip(batch, outcomes, strict=True):
            if answer.done():
                continue
            if isinstance(outcome, Exception):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)

    async def _transaction(self, items: list[Item]) -> Sequence[T | Exception]:
        async with self._db.write(large=len(items) > 1 and self._offload(items)) as conn:
            return await self._store(conn, items)


#: The key, in a write transaction's ``connection.info``, of the runs it changed so far: id to
#: the run as written (``runs.as_written``).
WRITTEN_RUNS = "flowyard.written_runs"
#: The key, in a write transaction's ``connection.info``, of the runs that transactions of
#: this process changed and committed last (at most ``MAX_COMMITTED_RUNS``): id to the run.
COMMITTED_RUNS = "flowyard.committed_runs"
MAX_COMMITTED_RUNS = 4_096

#: The key, in a write transaction's ``connection.info``, of what it runs once its work is
#: done, before it commits (writes gathered on the way, written together: a ``Finish`` each).
BEFORE_COMMIT = "flowyard.before_commit"
Finish = Callable[[AsyncConnection], Awaitable[None]]

#: A unit of work for ``Database.unit``.
Unit = Callable[[AsyncConnection], Awaitable[T]]


async def _run_units(conn: AsyncConnection, units: Sequence[tuple[str, Unit[Any]]]) -> list[Any]:
    outcomes: list[Any] = [None] * len(units)
    # Stable: the units of one run keep the order they came in.
    for index in sorted(range(len(units)), key=lambda index: units[index][0]):
        outcomes[index] = await units[index][1](conn)
    return outcomes


def _retrieve(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()


#: The async driver each database is used through when the URL names none (or a sync one).
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "psycopg"}


def normalise_url(url: str) -> URL:
    """``url`` with the async driver we ship: ``postgresql://`` and ``postgres://`` become
    ``postgresql+psycopg://``, ``sqlite://`` becomes ``sqlite+aiosqlite://``.

    Raises ``StoreError`` for a URL that is not one, names a database we do not support, names
    no database (or SQLite in memory, whose state would be lost at exit), or has a query option
    that psycopg does not know.
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as error:
        # Not echoed: a URL that does not parse may still hold a password.
        raise StoreError(
            "--db-url is not a database URL; use postgresql://user:password@host/dbname "
            "or sqlite:///path/to/file.db"
        ) from error
    except ValueError as error:
        # SQLAlchemy takes what follows the host's last ':' for the port: "[::1:5432" too.
        raise StoreError(
            "--db-url: the port is not a number; use postgresql://user@host:5432/dbname "
            "(an IPv6 address in brackets: [::1]:5432)"
        ) from error
    backend = "postgresql" if parsed.get_backend_name() == "postgres" else parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise StoreError(
            f"--db-url: unsupported database {backend!r}; use postgresql://user@host/dbname "
            "or sqlite:///path/to/file.db"
        )
    if backend == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    ):
        raise StoreError(
            "--db-url names no SQLite file (a database in memory is lost at exit); "
            "use sqlite:///path/to/file.db"
        )
    # libpq would pick a database named after the OS user: the schema would go there.
    if backend == "postgresql" and not parsed.database and "dbname" not in parsed.query:
        raise StoreError("--db-url names no database; use postgresql://user@host/dbname")
    driver = parsed.drivername.partition("+")[2]
    # A bare URL (or psycopg2's name, which people copy from other tools) gets our driver.
    if driver in ("", "psycopg2", "pysqlite"):
        parsed = parsed.set(drivername=f"{backend}+{ASYNC_DRIVERS[backend]}")
    if parsed.drivername == "postgresql+psycopg":
        _check_libpq_options(parsed)
    return parsed


def _check_libpq_options(url: URL) -> None:
    """Raise ``StoreError`` when libpq would refuse the connection parameters that psycopg
    gets for ``url`` (its query options among them), before any connection is tried."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    try:
        _, params = url.get_dialect()().create_connect_args(url)
        make_conninfo("", **params)
    except sa_exc.ArgumentError as error:
        # Several hosts (?host=a:5432&host=b:5432), one of whose ports is not a number.
        raise StoreError(
            "--db-url: a port of its host parameters is not a number; use ?host=a:5432&host=b:5432"
        ) from error
    except psycopg.ProgrammingError as error:
        # An unknown option, named (never a value, which may be a password).
        raise StoreError(
            f"--db-url: {first_line(error)}; libpq's options are listed at "
            "https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS"
        ) from error


def shown_url(url: str) -> str:
    """``url`` as messages and logs show it: without its password, in the userinfo or in a
    query parameter."""
    return redact_url(url, keep_user=True)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (see ``normalise_url`` for the forms it takes).

    On PostgreSQL the engine's URL carries ``POSTGRES_SESSION_OPTIONS`` as its ``options``
    unless ``url`` sets its own (the operator's: they win), so that ``connect_params`` gives
    connections of one's own the very parameters of the pool's.

    Raises ``StoreError`` when the URL's driver is not installed.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        if "options" not in parsed.query:
            parsed = parsed.update_query_dict({"options": POSTGRES_SESSION_OPTIONS})
        # Errors name the statement, never its values (job variables, parameters: maybe
        # secrets), in the log and in what a database error passes on.
        try:
            return create_async_engine(parsed, pool_pre_ping=True, hide_parameters=True)
        except (ImportError, sa_exc.NoSuchModuleError) as error:
            raise StoreError(
                f"--db-url: the driver {parsed.drivername!r} is not installed ({error}); "
                "use postgresql+psycopg://, whose driver Flowyard ships"
            ) from error
    assert parsed.database is not None  # normalise_url refuses SQLite in memory
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlite_inline.create_engine(parsed, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def connect_params(engine: AsyncEngine) -> dict[str, Any]:
    """The keyword arguments with which ``engine``'s pool (PostgreSQL, psycopg) connects: the
    URL's parts and every query option, as the pool's connections give them to PostgreSQL, for
    connections outside the pool (``LISTEN/NOTIFY``) that must reach it the same way."""
    _, params = engine.dialect.create_connect_args(engine.url)
    return dict(params)


#: Every PostgreSQL session of the control plane gives up waiting for a lock after 30 s, and
#: the server ends one left idle inside a transaction for 60 s (its locks with it). Nothing
#: the control plane does holds a lock that long, so either is a fault: the unit of work fails
#: (and is retried or answered UNAVAILABLE) instead of waiting for ever, and a transaction a
#: stalled process left open does not block every other replica.
POSTGRES_SESSION_OPTIONS = "-c lock_timeout=30s -c idle_in_transaction_session_timeout=60s"

#: How long a SQLite statement waits for another process's lock before failing as busy.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide when transactions begin (see _sqlite_on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


#: The execution option that marks ``Database.read()``'s connections.
READ_ONLY = "flowyard_read_only"


def _sqlite_on_begin(connection: Any) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        return  # each statement is a transaction of its own (see Database.read)
    driver = connection.connection.driver_connection
    if isinstance(driver, sqlite_inline.Connection):
        # Straight to sqlite3: a statement through SQLAlchemy costs more than SQLite's BEGIN.
        driver.begin()
    else:
        connection.exec_driver_sql("BEGIN")


def transient(error: BaseException) -> bool:
    """Whether ``error`` says the database could not do the work now, so that the same work
    may succeed later: it was unavailable (``unavailable``), or another writer took a unique
    key first.

    Anything else (a bug, stored data that cannot be read) would fail the same way again.
    """
    return unavailable(error) or unique_violation(error)


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not serve at all just now: it was
    unreachable, locked or out of connections, or a connection broke."""
    if isinstance(
        error,
        (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.TimeoutError,
            sa_exc.DisconnectionError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return True
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


#: How many times ``after_lost_races`` tries a unit of work (the second try finds what the
#: winner stored: a third happens only if that was deleted meanwhile).
RACE_ATTEMPTS = 3


async def after_lost_races(work: Callable[[], Awaitable[T]]) -> T:
    """``work()``, started again when it lost a race on a unique key: another call stored
    the same name first (on PostgreSQL writers are not queued, so a check before an insert
    can race). The next try reads what the winner stored and answers as if it had come
    just after it: an upsert updates it or leaves it as it is, a create is ALREADY_EXISTS."""
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            return await work()
        except Exception as error:
            if attempt == RACE_ATTEMPTS or not unique_violation(error):
                raise
    raise AssertionError("unreachable")


def unique_violation(error: BaseException) -> bool:
    """Whether ``error`` is a unique key refusing what another writer stored first."""
    if not isinstance(error, sa_exc.IntegrityError):
        return False
    # PostgreSQL's SQLSTATE for unique_violation; SQLite only says it in words.
    return getattr(error.orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(
        error.orig
    )


def first_line(error: BaseException | None) -> str:
    """The first line of ``error``'s message: drivers' messages run over several lines (a
    hint, the SQL, a link), and the first says what failed."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
