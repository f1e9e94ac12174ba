"""Repository of flow runs and their state history. Functions take a connection and never commit.

Every state change goes through ``compare_and_set``: an UPDATE guarded by the run's version,
plus one history row, in the caller's transaction (``apply_locked`` for many runs at once).
Where the history rows are written, the states entered are counted (``metrics``), so every
change is counted whichever use case made it.
A caller that loses the race gets None and re-reads. A change that ends the run's attempt
also ends the task runs the attempt left unfinished (``task_runs.end_unfinished``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import metrics
from control_plane.models import Run, StateRecord, TaskRunState, replaced
from control_plane.states import (
    ACTIVE,
    ASSIGNED,
    Actor,
    IllegalTransition,
    State,
    StateType,
    rejection,
)
from control_plane.store import cluster, task_runs
from control_plane.store.db import BEFORE_COMMIT, COMMITTED_RUNS, WRITTEN_RUNS, Finish
from control_plane.store.dialects import (
    DriverStatement,
    insert_ignoring_duplicates,
    numbered,
    numbered_values,
    padded,
)
from control_plane.store.tables import (
    UTCDateTime,
    deployments,
    flow_runs,
    log_batches,
    pools,
    run_states,
    work_queues,
)
from control_plane.store.tables import task_runs as task_runs_table

_RUN_COLUMNS = (
    *flow_runs.c,
    deployments.c.name.label("deployment_name"),
    pools.c.name.label("pool_name"),
    work_queues.c.name.label("queue_name"),
)


def _select_runs() -> Any:
    return (
        select(*_RUN_COLUMNS)
        .join(deployments, deployments.c.id == flow_runs.c.deployment_id)
        .join(pools, pools.c.id == flow_runs.c.pool_id)
        .outerjoin(work_queues, work_queues.c.id == flow_runs.c.queue_id)
    )


def _run(row: Row[Any] | dict[str, Any]) -> Run:
    # The row's columns are exactly the Run's fields (see ``_RUN_COLUMNS``).
    values = row if isinstance(row, dict) else row._asdict()
    values["state_type"] = StateType(values["state_type"])
    values["queue_name"] = values["queue_name"] or "default"
    return Run(**values)


async def insert_runs(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], dialect: str
) -> set[str]:
    """Store new runs, each with its first history row; the ids of those stored (a run whose
    idempotency key is taken is skipped). Every row has the same columns."""
    if not rows:
        return set()
    ids = [row["id"] for row in rows]
    inserted = await _insert_runs_of(dialect, tuple(rows[0])).execute_many(conn, rows)
    if inserted == len(rows):
        stored = set(ids)
    else:
        # Some hit a taken idempotency key, or the driver does not count what it inserted
        # (psycopg may not): the rows now holding these ids are the ones just stored, as
        # every id is new.
        stored = set(await conn.scalars(select(flow_runs.c.id).where(flow_runs.c.id.in_(ids))))
    history = [
        _history_row(
            row["id"],
            row["attempt"],
            State(StateType(row["state_type"]), row["state_name"], row["state_message"]),
            row["created_at"],
        )
        for row in rows
        if row["id"] in stored
    ]
    if history:
        await _add_history(conn, history)
        pending = metrics.counted(conn.info)
        pending.created(len(history))
        pending.entered(row["type"] for row in history)
    return stored


@functools.cache
def _insert_runs_of(dialect: str, names: tuple[str, ...]) -> DriverStatement:
    """INSERT of runs with these columns, skipping a run whose idempotency key is taken: run
    by the driver for all rows at once, as it costs a fraction of SQLAlchemy's own execution
    of a many-row INSERT (its rows' parameter processing above all)."""
    return DriverStatement(
        insert_ignoring_duplicates(flow_runs, dialect).values(
            {name: bindparam(name, type_=flow_runs.c[name].type) for name in names}
        )
    )


async def catalog_as_read(
    conn: AsyncConnection,
    deployment_id: str,
    deployment_updated_at: datetime,
    pool_updated_at: datetime,
    queue_id: str,
) -> bool | None:
    """Whether a deployment, its pool and a queue are still as read (None: deployment gone).

    Run creation reads and checks them before its write transaction; this one-row read in
    that transaction says whether the checks still hold. On PostgreSQL the rows stay locked
    (FOR SHARE) until the transaction ends, so they cannot change before the run is in.
    """
    rows = await _CATALOG_AS_READ.records(
        conn, {"deployment_id": deployment_id, "queue_id": queue_id}
    )
    if not rows:
        exists = await conn.scalar(
            select(deployments.c.id).where(deployments.c.id == deployment_id)
        )
        return False if exists else None
    row = rows[0]
    return bool(
        _as_utc(row.updated_at) == deployment_updated_at
        and _as_utc(row.pool_updated_at) == pool_updated_at
    )


_CATALOG_AS_READ = DriverStatement(
    select(deployments.c.updated_at, pools.c.updated_at.label("pool_updated_at"))
    .join(pools, pools.c.id == deployments.c.pool_id)
    .join(
        work_queues,
        and_(work_queues.c.id == bindparam("queue_id"), work_queues.c.pool_id == pools.c.id),
    )
    .where(deployments.c.id == bindparam("deployment_id"))
    .with_for_update(read=True, of=[deployments, pools, work_queues])
)

#: Built once: the hottest statements are reused rather than built (and their SQLAlchemy
#: cache keys computed) on every call.
_GET_RUN = DriverStatement(_select_runs().where(flow_runs.c.id == bindparam("run_id")))


async def get_run(conn: AsyncConnection, run_id: str) -> Run | None:
    """The run with this id, if any."""
    found = await _read_runs(_GET_RUN, conn, {"run_id": run_id})
    return found[0] if found else None


async def _read_runs(
    statement: DriverStatement, conn: AsyncConnection, parameters: dict[str, Any]
) -> list[Run]:
    """The runs a ``DriverStatement`` of ``_select_runs`` reads."""
    names = statement.names
    rows = await statement.typed_rows(conn, parameters)
    return [_run(dict(zip(names, row, strict=True))) for row in rows]


async def get_run_by_key(conn: AsyncConnection, deployment_id: str, key: str) -> Run | None:
    """The run of a deployment created with this idempotency key, if any."""
    query = _select_runs().where(
        flow_runs.c.deployment_id == deployment_id, flow_runs.c.idempotency_key == key
    )
    row = (await conn.execute(query)).first()
    return _run(row) if row else None


async def list_runs(
    conn: AsyncConnection,
    *,
    deployment_id: str | None,
    state_types: Iterable[StateType],
    limit: int,
    before: tuple[datetime, str] | None,
    schedule_name: str = "",
    id_prefix: str = "",
    pool_id: str | None = None,
    created_since: datetime | None = None,
    created_until: datetime | None = None,
) -> list[Run]:
    """Runs newest first; ``before`` is the (created_at, id) of the last run of the previous page.

    ``id_prefix`` (lowercase hex) keeps the runs whose id starts with it; ``created_since``
    (inclusive) and ``created_until`` (exclusive) bound when they were created.
    """
    query = _select_runs()
    if id_prefix:
        # A range on the primary key, which SQLite answers from its index (its LIKE is
        # case-insensitive and may not). Ids are lowercase hex, and "g" sorts after every hex
        # digit byte by byte: SQLite compares so, PostgreSQL only under the "C" collation (a
        # locale's may not), which leaves its primary key index out unless the database's
        # collation is C -- a scan, acceptable for an interactive lookup.
        ids: ColumnElement[str] = flow_runs.c.id
        if conn.dialect.name == "postgresql":
            ids = ids.collate("C")
        query = query.where(ids >= id_prefix, ids < id_prefix + "g")
    if deployment_id is not None:
        query = query.where(flow_runs.c.deployment_id == deployment_id)
    if schedule_name:
        query = query.where(flow_runs.c.schedule_name == schedule_name)
    if pool_id is not None:
        query = query.where(flow_runs.c.pool_id == pool_id)
    if created_since is not None:
        query = query.where(flow_runs.c.created_at >= created_since)
    if created_until is not None:
        query = query.where(flow_runs.c.created_at < created_until)
    types = [t.value for t in state_types]
    if types:
        query = query.where(flow_runs.c.state_type.in_(types))
    if before is not None:
        created, run_id = before
        # A row value, which the index on created_at serves as a range; "created_at < c OR
        # (created_at = c AND id < i)" sorted every older run first (111 ms against 0.16
        # for the second page of 300,000 runs, on SQLite).
        query = query.where(
            tuple_(flow_runs.c.created_at, flow_runs.c.id) < tuple_(created, run_id)
        )
    query = query.order_by(flow_runs.c.created_at.desc(), flow_runs.c.id.desc()).limit(limit)
    return [_run(row) for row in await conn.execute(query)]


async def record_history(
    conn: AsyncConnection, run_id: str, attempt: int, state: State, now: datetime
) -> None:
    """Add a history row without changing the run (e.g. the FAILED end of a retried attempt)."""
    await _insert_history(conn, run_id, attempt, state, now)


async def attempt_states(
    conn: AsyncConnection, run_ids: Iterable[str]
) -> dict[str, tuple[int, StateType]]:
    """The current attempt and state type of each run that exists, read alone (for every
    stored log batch).

    On PostgreSQL the rows stay locked until the transaction ends, as ``lock_runs`` locks
    them: a change that ends an attempt waits for a batch that found the attempt live, and
    then ends the task runs that batch stored, so no line or task run lands after its
    attempt's end; and the stores of one run's lines run one after another, each after the
    last line the other stored (``logs.insert_lines``).
    """
    ids = list(run_ids)
    if not ids:
        return {}
    ids = padded(ids)  # a run asked twice is found once
    rows = await _attempt_states_of(len(ids)).rows(conn, numbered_values("r", ids))
    return {run_id: (attempt, StateType(state)) for run_id, attempt, state in rows}


async def lock_runs(conn: AsyncConnection, dialect: str, run_ids: Iterable[str]) -> None:
    """Lock the runs' rows until the transaction ends (PostgreSQL; SQLite's one writer
    serializes every write transaction already).

    FOR NO KEY UPDATE: as an update of the run does, without blocking the inserts of rows
    that refer to it. Locked in id order, so transactions that lock several runs never wait
    on each other in a cycle.
    """
    if dialect == "postgresql":
        await conn.execute(_LOCK_RUNS, {"run_ids": sorted(run_ids)})


def _locking_in_id_order(query: Select[Any]) -> Select[Any]:
    """``query``, locking the runs it reads as ``lock_runs`` does: FOR NO KEY UPDATE, in id
    order (PostgreSQL)."""
    return query.order_by(flow_runs.c.id).with_for_update(key_share=True)


@functools.cache
def _attempt_states_of(count: int) -> DriverStatement:
    """``attempt_states`` of ``count`` runs (parameters ``r<i>``), built once per count."""
    return DriverStatement(
        _locking_in_id_order(
            select(flow_runs.c.id, flow_runs.c.attempt, flow_runs.c.state_type).where(
                flow_runs.c.id.in_(numbered("r", count))
            )
        )
    )


# The hot paths' statements are built once: building one costs more than running it.
_LOCK_RUNS = _locking_in_id_order(
    select(flow_runs.c.id).where(flow_runs.c.id.in_(bindparam("run_ids", expanding=True)))
)


class AttemptWatch(NamedTuple):
    """What an engine's stream watches of its run: whether its attempt ended, and how."""

    attempt: int
    state_type: StateType
    state_message: str
    last_transition_id: str | None
    version: int

    @classmethod
    def of(cls, run: Run) -> AttemptWatch:
        """What is watched of ``run``."""
        return cls(
            run.attempt, run.state_type, run.state_message, run.last_transition_id, run.version
        )


async def attempt_watch(conn: AsyncConnection, run_id: str) -> AttemptWatch | None:
    """The columns of a run an engine's stream watches (read at every change of the run,
    so not the whole row); None if there is no such run."""
    rows = await _READ_ATTEMPT_WATCH.rows(conn, {"run_id": run_id})
    return _attempt_watch(rows[0]) if rows else None


def _attempt_watch(row: Sequence[Any]) -> AttemptWatch:
    """The ``AttemptWatch`` of a row that starts with its columns (as selected, or returned
    by an update), as the driver gives them."""
    attempt, state_type, state_message, last_transition_id, version = row[:5]
    return AttemptWatch(attempt, StateType(state_type), state_message, last_transition_id, version)


_ATTEMPT_WATCH = select(
    flow_runs.c.attempt,
    flow_runs.c.state_type,
    flow_runs.c.state_message,
    flow_runs.c.last_transition_id,
    flow_runs.c.version,
).where(flow_runs.c.id == bindparam("run_id"))
_READ_ATTEMPT_WATCH = DriverStatement(_ATTEMPT_WATCH)


async def assigned_at(conn: AsyncConnection, run_id: str, attempt: int) -> datetime | None:
    """When the dispatcher last assigned this attempt of the run to an agent, if it did."""
    await flush_history(conn)
    at: datetime | None = (
        await conn.execute(_ASSIGNED_AT, {"run_id": run_id, "attempt": attempt})
    ).scalar()
    return at


_ASSIGNED_AT = (
    select(run_states.c.created_at)
    .where(
        run_states.c.run_id == bindparam("run_id"),
        run_states.c.attempt == bindparam("attempt"),
        run_states.c.type == StateType.PENDING.value,
        run_states.c.name == ASSIGNED,
    )
    .order_by(run_states.c.id.desc())
    .limit(1)
)


async def count_failed(conn: AsyncConnection, run_id: str) -> int:
    """How many attempts of a run failed (FAILED history rows; retried ones included)."""
    await flush_history(conn)
    query = select(func.count()).where(
        run_states.c.run_id == run_id, run_states.c.type == StateType.FAILED.value
    )
    return int((await conn.execute(query)).scalar_one())


async def regrant_leases(conn: AsyncConnection, until: datetime) -> int:
    """Extend every running assignment lease to at least ``until``; returns how many.

    For a control plane that starts: the agents holding those assignments could not report
    while it was down, so each gets a whole lease to reconnect and say what it did.
    """
    leased = (
        flow_runs.c.state_type.in_([StateType.PENDING.value, StateType.CANCELLING.value]),
        flow_runs.c.lease_deadline.is_not(None),
        flow_runs.c.lease_deadline < until,
    )
    if conn.dialect.name == "postgresql":
        # Locked in id order first, as every transaction that changes several runs does
        # (``lock_runs``): in the order the update finds them, reports on those runs
        # committing meanwhile could wait on it while it waits on them.
        await conn.execute(_locking_in_id_order(select(flow_runs.c.id).where(*leased)))
    result = await conn.execute(
        update(flow_runs)
        .where(*leased)
        .values(lease_deadline=until, version=flow_runs.c.version + 1)
    )
    return int(result.rowcount or 0)


async def history(conn: AsyncConnection, run_id: str) -> list[StateRecord]:
    """Every state the run has been in, oldest first."""
    await flush_history(conn)
    rows = await conn.execute(
        select(run_states).where(run_states.c.run_id == run_id).order_by(run_states.c.id)
    )
    return [
        StateRecord(
            attempt=row.attempt,
            type=StateType(row.type),
            name=row.name,
            message=row.message,
            created_at=row.created_at,
        )
        for row in rows
    ]


@dataclasses.dataclass(frozen=True)
class Change:
    """A state change of one run, with further columns to set in the same UPDATE.

    Every state change is made by one of the actors of the run state machine and must be a
    transition it allows (``states.rejection``), the server's own included: one that is not
    is a bug, refused here before anything is written (``IllegalTransition``).
    """

    run: Run
    state: State
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)
    transition_id: str | None = None
    actor: Actor = dataclasses.field(kw_only=True)

    def __post_init__(self) -> None:
        refused = rejection(self.run.state_type, self.state.type, self.actor)
        if refused:
            raise IllegalTransition(f"run {self.run.id}: {refused}")

    @property
    def ends_attempt(self) -> bool:
        """Whether the run's current attempt is over after the change: the run ends, or it
        goes on as another attempt (a retry, a hand-back)."""
        next_attempt = self.columns.get("attempt", self.run.attempt)
        return self.state.type.is_terminal or next_attempt != self.run.attempt

    @property
    def task_runs_end(self) -> TaskRunState:
        """What the task runs an ending attempt leaves unfinished become."""
        if self.state.type is StateType.CANCELLED:
            return TaskRunState.CANCELLED
        return TaskRunState.CRASHED

    def values(self, now: datetime) -> dict[str, Any]:
        """Every column the change sets."""
        changes: dict[str, Any] = {
            "state_type": self.state.type,
            "state_name": self.state.display_name,
            "state_message": self.state.message,
            "state_time": now,
            "version": self.run.version + 1,
            "last_transition_id": self.transition_id,
            **self.columns,
        }
        if self.state.type.is_terminal:
            changes["ended_at"] = now
        if self.state.type is StateType.RUNNING:
            changes["started_at"] = now
        return changes


async def compare_and_set(
    conn: AsyncConnection,
    run: Run,
    state: State,
    *,
    actor: Actor,
    now: datetime,
    transition_id: str | None = None,
    **columns: Any,
) -> Run | None:
    """Move ``run`` to ``state`` if nobody changed it since it was read; None if somebody did.

    ``columns`` are further columns to set in the same UPDATE (agent, lease, attempt, ...).

    Raises:
        IllegalTransition: ``actor`` may not make this transition (a bug; nothing written).
    """
    change = Change(run, state, columns, transition_id, actor=actor)
    updated = await _guarded_update(conn, run, change.values(now))
    if updated is None:
        return None
    await _insert_history(conn, run.id, updated.attempt, state, now)
    if change.ends_attempt:
        if updated.has_task_runs:
            await task_runs.end_unfinished(conn, [run.id], change.task_runs_end, now)
        if run.has_subflows:
            await end_subflows(conn, [run.id], change.task_runs_end, now)
    return updated


async def apply_locked(conn: AsyncConnection, changes: list[Change], now: datetime) -> list[Run]:
    """Apply changes to runs this transaction holds (read with ``lock=True`` on PostgreSQL,
    under the writer lock on SQLite): one UPDATE and one history insert for all of them,
    however many. Returns the changed runs, in order."""
    if not changes:
        return []
    rows = [c.values(now) for c in changes]
    keys = list(rows[0])
    if any(list(row) != keys for row in rows):
        raise ValueError("apply_locked: every change must set the same columns")
    params = [
        {
            "w_id": change.run.id,
            "w_version": change.run.version,
            **{f"b_{key}": _plain(value) for key, value in row.items()},
        }
        for change, row in zip(changes, rows, strict=True)
    ]
    count = await _locked_update_of(tuple(keys)).execute_many(conn, params)
    # Locked rows cannot have moved on; a driver that counts rows confirms it.
    if count not in (-1, len(changes)):
        raise RuntimeError(f"apply_locked: {count} of {len(changes)} runs changed")
    updated = [replaced(change.run, row) for change, row in zip(changes, rows, strict=True)]
    await _add_history(
        conn,
        [
            {
                "run_id": run.id,
                "attempt": run.attempt,
                "type": change.state.type.value,
                "name": change.state.display_name,
                "message": change.state.message,
                "created_at": now,
            }
            for change, run in zip(changes, updated, strict=True)
        ],
    )
    metrics.counted(conn.info).entered(change.state.type.value for change in changes)
    for end in TaskRunState:
        ending = [c.run for c in changes if c.ends_attempt and c.task_runs_end is end]
        # Read locked: the flag is as stored.
        if with_task_runs := [run.id for run in ending if run.has_task_runs]:
            await task_runs.end_unfinished(conn, with_task_runs, end, now)
        if with_subflows := [run.id for run in ending if run.has_subflows]:
            await end_subflows(conn, with_subflows, end, now)
    return updated


_SUBFLOW_ENDS = {
    TaskRunState.CANCELLED: State(StateType.CANCELLED, message="Cancelled with its parent run"),
    TaskRunState.CRASHED: State(
        StateType.CRASHED,
        message="The parent run's attempt ended before the subflow did (the engine running "
        "both stopped)",
    ),
}


async def end_subflows(
    conn: AsyncConnection, parent_ids: Sequence[str], end: TaskRunState, now: datetime
) -> None:
    """The subflow runs still RUNNING under these runs' ending attempts end with them
    (CANCELLED or CRASHED, as ``end`` says), with their task runs and their own subflows.

    A subflow runs inside its parent's engine: once the parent's attempt is over nothing
    can finish it, so it is never left RUNNING.
    """
    query = select(flow_runs.c.id).where(
        flow_runs.c.parent_run_id.in_(list(parent_ids)),
        flow_runs.c.subflow.is_(True),
        flow_runs.c.state_type == StateType.RUNNING.value,
    )
    ids = list((await conn.execute(query)).scalars())
    if not ids:
        return
    state = _SUBFLOW_ENDS[end]
    await conn.execute(
        update(flow_runs)
        .where(flow_runs.c.id.in_(ids), flow_runs.c.state_type == StateType.RUNNING.value)
        .values(
            state_type=state.type.value,
            state_name=state.display_name,
            state_message=state.message,
            state_time=now,
            ended_at=now,
            version=flow_runs.c.version + 1,
        )
    )
    await _add_history(conn, [_history_row(i, 1, state, now) for i in ids])
    metrics.counted(conn.info).inc(metrics.STATE_TRANSITIONS.labels(state.type.value), len(ids))
    await task_runs.end_unfinished(conn, ids, end, now)
    await end_subflows(conn, ids, end, now)


async def engine_run_of(conn: AsyncConnection, run: Run) -> tuple[str, int]:
    """The run (and attempt) whose engine runs ``run``: itself, or for a subflow the first
    ancestor that is not a subflow. A subflow's lines are stored with that attempt."""
    run_id, attempt = run.id, run.attempt
    current: Run | None = run
    while current is not None and current.subflow and current.parent_run_id:
        run_id, attempt = current.parent_run_id, current.parent_attempt or 1
        current = await get_run(conn, run_id)
    return run_id, attempt


async def children(conn: AsyncConnection, run_id: str) -> list[Run]:
    """The runs started by a run's flow (subflows and deployment runs), oldest first."""
    query = (
        _select_runs()
        .where(flow_runs.c.parent_run_id == run_id)
        .order_by(flow_runs.c.created_at, flow_runs.c.id)
    )
    return [_run(row) for row in await conn.execute(query)]


async def mark_has_subflows(conn: AsyncConnection, run_id: str) -> None:
    """Note that a run's flow started a subflow. The version moves on, so a change that read
    the run before (and would not end its subflows) loses its compare-and-set and reads it
    again."""
    await conn.execute(
        update(flow_runs)
        .where(flow_runs.c.id == run_id)
        .values(has_subflows=True, version=flow_runs.c.version + 1)
    )


async def insert_subflow(conn: AsyncConnection, values: dict[str, Any], dialect: str) -> Run:
    """Store a subflow run (RUNNING from the start, with its first history row), or return
    the one already stored under its idempotency key."""
    await insert_runs(conn, [values], dialect)
    run = await get_run_by_key(conn, values["deployment_id"], values["idempotency_key"])
    assert run is not None
    return run


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StateType) else value


async def set_columns(conn: AsyncConnection, run: Run, **columns: Any) -> Run | None:
    """Set columns other than the state, guarded by the version like a transition."""
    return await _guarded_update(conn, run, {"version": run.version + 1, **columns})


async def _guarded_update(conn: AsyncConnection, run: Run, changes: dict[str, Any]) -> Run | None:
    values = {f"b_{key}": _plain(value) for key, value in changes.items()}
    values.update(w_id=run.id, w_version=run.version)
    rows = await _guarded_update_of(tuple(changes)).rows(conn, values)
    if not rows:
        return None
    # The flag as the update found it: set by a log batch since ``run`` was read, it does not
    # change the version, and must not be missed by the end of the attempt.
    updated = replaced(run, {**changes, "has_task_runs": bool(rows[0][0])})
    written = conn.info.get(WRITTEN_RUNS)
    if written is not None:
        written[run.id] = updated
    return updated


def as_written(conn: AsyncConnection, run: Run) -> Run:
    """``run``, or a later version of it written since: by this transaction, or by one of
    this process that committed it. Units of work that share a transaction
    (``Database.unit``) see each other's compare-and-sets, and units of the next see those
    of the last, before their callers are answered: a unit that remembered the run from
    before them need not lose its own. Only a hint: the compare-and-set on its version
    proves it current."""
    newer: Run | None = (conn.info.get(WRITTEN_RUNS) or {}).get(run.id)
    if newer is None:
        newer = (conn.info.get(COMMITTED_RUNS) or {}).get(run.id)
    return newer if newer is not None and newer.version > run.version else run


#: RETURNING says whether the UPDATE won the compare-and-set on every driver, where rowcount
#: is not reliable on all of them.
@functools.cache
def _guarded_update_of(columns: tuple[str, ...]) -> DriverStatement:
    """The compare-and-set that sets ``columns`` (parameters ``b_<column>``): built once for
    each set of columns a change sets, a few dozen at most."""
    return DriverStatement(_update_of(columns).returning(flow_runs.c.has_task_runs))


@functools.cache
def _locked_update_of(columns: tuple[str, ...]) -> DriverStatement:
    """``_guarded_update_of`` for runs the transaction holds, executed for many at once."""
    return DriverStatement(_update_of(columns))


def _update_of(columns: tuple[str, ...]) -> Any:
    return (
        update(flow_runs)
        .where(flow_runs.c.id == bindparam("w_id"), flow_runs.c.version == bindparam("w_version"))
        .values({name: bindparam(f"b_{name}", type_=flow_runs.c[name].type) for name in columns})
    )


_INSERT_HISTORY = DriverStatement(
    insert(run_states)
    .inline()
    .values(
        {
            name: bindparam(name, type_=run_states.c[name].type)
            for name in ("run_id", "attempt", "type", "name", "message", "created_at")
        }
    )
)


async def _insert_history(
    conn: AsyncConnection, run_id: str, attempt: int, state: State, now: datetime
) -> None:
    """Add a history row: in a write transaction of ``Database.write``, with the others of the
    transaction in one insert before it commits (the units of a group commit each add their
    own); anywhere else at once."""
    await _add_history(conn, [_history_row(run_id, attempt, state, now)])
    metrics.counted(conn.info).entered((state.type.value,))


async def _add_history(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    history = _pending_history(conn, create=True)
    if history is None:
        await _INSERT_HISTORY.execute_many(conn, rows)
    else:
        history.rows += rows


class _PendingHistory:
    """The history rows a write transaction has yet to insert; inserts them when called."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def __call__(self, conn: AsyncConnection) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            await _INSERT_HISTORY.execute_many(conn, rows)


def _pending_history(conn: AsyncConnection, *, create: bool = False) -> _PendingHistory | None:
    finishing: list[Finish] | None = conn.info.get(BEFORE_COMMIT)
    if finishing is None:
        return None
    for finish in finishing:
        if isinstance(finish, _PendingHistory):
            return finish
    if not create:
        return None
    history = _PendingHistory()
    finishing.append(history)
    return history


async def flush_history(conn: AsyncConnection) -> None:
    """Insert the history rows this transaction added so far (see ``_insert_history``):
    before anything of it reads or deletes history (it also happens before it commits)."""
    history = _pending_history(conn)
    if history is not None:
        await history(conn)


def _history_row(run_id: str, attempt: int, state: State, now: datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "attempt": attempt,
        "type": state.type.value,
        "name": state.display_name,
        "message": state.message,
        "created_at": now,
    }


async def open_attempt(
    conn: AsyncConnection, run_id: str, attempt: int, now: datetime
) -> tuple[AttemptWatch | None, int | None]:
    """Record that the engine of the run's current attempt is alive (no version change), and
    read what its stream watches of the run (``attempt_watch``), in one statement while the
    attempt is current; the watch (None if there is no such run), and on SQLite the highest
    seq stored of the attempt's lines (0: none) read by the same statement.

    The seq is None where the caller must read it after the mark (``logs.max_seq``): when the
    attempt is not current (nothing was marked), and on PostgreSQL. There a statement that
    waited for the run's lock reads other tables as they were when it started, and could
    miss lines a transaction holding the run stored meanwhile; SQLite runs one write
    transaction at a time, so nothing commits while a statement runs.
    """
    sqlite = conn.dialect.name == "sqlite"
    params = {"w_id": run_id, "w_attempt": attempt, "b_at": now}
    rows = await (_OPEN_ATTEMPT if sqlite else _MARK_ATTEMPT).rows(conn, params)
    if not rows:
        return await attempt_watch(conn, run_id), None
    return _attempt_watch(rows[0]), int(rows[0][5] or 0) if sqlite else None


async def touch_heartbeats(conn: AsyncConnection, beats: dict[tuple[str, int], datetime]) -> None:
    """Record that the engines of these attempts are alive, if the attempts are current: one
    UPDATE, executed for each."""
    if not beats:
        return
    await conn.execute(
        _TOUCH_HEARTBEAT,
        [
            {"w_id": run_id, "w_attempt": attempt, "b_at": at}
            for (run_id, attempt), at in sorted(beats.items())
        ],
    )


_TOUCH_HEARTBEAT = (
    update(flow_runs)
    .where(flow_runs.c.id == bindparam("w_id"), flow_runs.c.attempt == bindparam("w_attempt"))
    .values(last_heartbeat_at=bindparam("b_at", type_=flow_runs.c.last_heartbeat_at.type))
)
_MARK_ATTEMPT = DriverStatement(_TOUCH_HEARTBEAT.returning(*_ATTEMPT_WATCH.selected_columns))
_OPEN_ATTEMPT = DriverStatement(
    _TOUCH_HEARTBEAT.returning(
        *_ATTEMPT_WATCH.selected_columns,
        select(func.max(log_batches.c.last_seq))
        .where(log_batches.c.run_id == flow_runs.c.id, log_batches.c.attempt == flow_runs.c.attempt)
        .scalar_subquery(),
    )
)


async def silent_engines(
    conn: AsyncConnection, before: datetime, limit: int, *, lock: bool = False
) -> list[Run]:
    """RUNNING runs whose engine has not said it is alive since ``before``."""
    last_sign = func.coalesce(flow_runs.c.last_heartbeat_at, flow_runs.c.started_at)
    query = (
        _select_runs()
        .where(
            flow_runs.c.state_type == StateType.RUNNING.value,
            last_sign < before,
            flow_runs.c.subflow.is_(False),
        )
        .order_by(last_sign)
        .limit(limit)
    )
    return [_run(row) for row in await conn.execute(_locked(query, lock))]


async def orphaned_pending(
    conn: AsyncConnection, before: datetime, limit: int, *, lock: bool = False
) -> list[Run]:
    """Submitted PENDING runs quiet since ``before`` whose agent session has been gone since
    before ``before`` (on whichever replica it was connected).

    Quiet: no state change and no engine heartbeat since ``before``. Runs still under an
    assignment lease are the dispatcher's (the lease sends them back to the queue).
    """
    last_sign = func.coalesce(flow_runs.c.last_heartbeat_at, flow_runs.c.state_time)
    query = (
        _select_runs()
        .where(
            flow_runs.c.state_type == StateType.PENDING.value,
            flow_runs.c.lease_deadline.is_(None),
            flow_runs.c.state_time < before,
            last_sign < before,
            or_(
                flow_runs.c.agent_session_id.is_(None),
                ~cluster.session_present(flow_runs.c.agent_session_id, before),
            ),
        )
        .order_by(flow_runs.c.state_time)
        .limit(limit)
    )
    return [_run(row) for row in await conn.execute(_locked(query, lock))]


def _locked(query: Any, lock: bool) -> Any:
    """``query``, locking the runs it finds for the transaction if ``lock`` (on PostgreSQL;
    on SQLite the one writer holds them already); runs another transaction holds are left
    for a later pass."""
    return query.with_for_update(skip_locked=True, of=flow_runs) if lock else query


async def overdue_scheduled(
    conn: AsyncConnection, before: datetime, limit: int, *, lock: bool = False
) -> list[Run]:
    """SCHEDULED runs still named "Scheduled" that were due before ``before``."""
    query = (
        _select_runs()
        .where(
            flow_runs.c.state_type == StateType.SCHEDULED.value,
            flow_runs.c.state_name == "Scheduled",
            flow_runs.c.scheduled_at < before,
        )
        .order_by(flow_runs.c.scheduled_at)
        .limit(limit)
    )
    return [_run(row) for row in await conn.execute(_locked(query, lock))]


async def stuck_cancelling(
    conn: AsyncConnection, before: datetime, limit: int, *, lock: bool = False
) -> list[Run]:
    """CANCELLING runs that entered CANCELLING before ``before``."""
    query = (
        _select_runs()
        .where(
            flow_runs.c.state_type == StateType.CANCELLING.value,
            flow_runs.c.state_time < before,
        )
        .order_by(flow_runs.c.state_time)
        .limit(limit)
    )
    return [_run(row) for row in await conn.execute(_locked(query, lock))]


async def due_runs(
    conn: AsyncConnection,
    pool_id: str,
    now: datetime,
    limit: int,
    *,
    queues_by_priority: Sequence[Sequence[str]],
    blocked_deployments: Iterable[str] = (),
) -> list[Run]:
    """SCHEDULED runs of a pool whose time has come: those of the first queues of
    ``queues_by_priority`` (queue ids, highest priority first) first, then oldest due first.
    Only runs of those queues and none of ``blocked_deployments``, so runs that cannot go
    never fill the page.

    Each priority is read in the order of the index on (pool, state, due time), so a page
    costs what it holds, not the pool's backlog (ordered by the queue's priority, a join,
    every due run of the pool was read and sorted for every page).

    On PostgreSQL the rows are locked for the transaction, skipping rows another transaction
    holds (FOR UPDATE SKIP LOCKED): what this returns, nobody else changes until the claims
    commit (``apply_locked``), and two passes at once claim different runs."""
    blocked = list(blocked_deployments)
    blocked = padded(blocked) if blocked else []
    found: list[Run] = []
    for queue_ids in queues_by_priority:
        if len(found) >= limit:
            break
        queue_ids = padded(queue_ids)
        statement = _due_runs_of(len(queue_ids), len(blocked))
        parameters = {
            "pool_id": pool_id,
            "now": now,
            "limit": limit - len(found),
            **numbered_values("q", queue_ids),
            **numbered_values("b", blocked),
        }
        found += await _read_runs(statement, conn, parameters)
    return found


@functools.cache
def _due_runs_of(queues: int, blocked: int) -> DriverStatement:
    """``due_runs`` of one priority: ``queues`` queues (parameters ``q<i>``), none of
    ``blocked`` deployments (``b<i>``); built once per count of each (lists padded)."""
    query = (
        _select_runs()
        .where(
            flow_runs.c.pool_id == bindparam("pool_id"),
            flow_runs.c.state_type == StateType.SCHEDULED.value,
            flow_runs.c.scheduled_at <= bindparam("now", type_=flow_runs.c.scheduled_at.type),
            flow_runs.c.queue_id.in_(numbered("q", queues)),
        )
        .order_by(flow_runs.c.scheduled_at, flow_runs.c.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if blocked:
        query = query.where(flow_runs.c.deployment_id.not_in(numbered("b", blocked)))
    return DriverStatement(_locked(query, lock=True))


async def due_runs_of_deployment(
    conn: AsyncConnection, deployment_id: str, now: datetime, limit: int, *, except_name: str = ""
) -> list[Run]:
    """SCHEDULED runs of one deployment whose time has come, oldest due first (leaving out
    those whose sub-state is ``except_name``)."""
    query = (
        _select_runs()
        .where(
            flow_runs.c.deployment_id == deployment_id,
            flow_runs.c.state_type == StateType.SCHEDULED.value,
            flow_runs.c.scheduled_at <= now,
        )
        .order_by(flow_runs.c.scheduled_at, flow_runs.c.id)
        .limit(limit)
    )
    if except_name:
        query = query.where(flow_runs.c.state_name != except_name)
    return [_run(row) for row in await conn.execute(query)]


async def active_counts(conn: AsyncConnection, pool_id: str) -> list[tuple[str, str | None, int]]:
    """(deployment id, queue id, how many) of the runs of a pool holding a claim or
    infrastructure (PENDING, RUNNING, CANCELLING): what counts against concurrency limits.

    Counted by the database: a pass reads one row per deployment and queue, however many
    runs are active."""
    query = (
        select(flow_runs.c.deployment_id, flow_runs.c.queue_id, func.count())
        .where(
            flow_runs.c.pool_id == pool_id,
            flow_runs.c.state_type.in_([t.value for t in ACTIVE]),
            flow_runs.c.subflow.is_(False),
        )
        .group_by(flow_runs.c.deployment_id, flow_runs.c.queue_id)
    )
    return [(row[0], row[1], int(row[2])) for row in await conn.execute(query)]


async def active_of_deployment(conn: AsyncConnection, deployment_id: str, limit: int) -> list[str]:
    """Ids of the oldest ``limit`` active runs of a deployment (those holding its slots)."""
    query = (
        select(flow_runs.c.id)
        .where(
            flow_runs.c.deployment_id == deployment_id,
            flow_runs.c.state_type.in_([t.value for t in ACTIVE]),
            flow_runs.c.subflow.is_(False),
        )
        .order_by(flow_runs.c.created_at, flow_runs.c.id)
        .limit(limit)
    )
    return [row.id for row in await conn.execute(query)]


async def delete_future_scheduled(
    conn: AsyncConnection, deployment_id: str, now: datetime, schedule_name: str | None = None
) -> int:
    """Remove runs that schedules created and that have not started and are not yet due
    (of one schedule, or of all); returns how many."""
    condition = and_(
        flow_runs.c.deployment_id == deployment_id,
        flow_runs.c.schedule_name != "",
        flow_runs.c.state_type == StateType.SCHEDULED.value,
        flow_runs.c.attempt == 1,
        flow_runs.c.scheduled_at > now,
    )
    if schedule_name is not None:
        condition = and_(condition, flow_runs.c.schedule_name == schedule_name)
    ids = [row.id for row in await conn.execute(select(flow_runs.c.id).where(condition))]
    if not ids:
        return 0
    await conn.execute(delete(log_batches).where(log_batches.c.run_id.in_(ids)))
    await conn.execute(delete(task_runs_table).where(task_runs_table.c.run_id.in_(ids)))
    await flush_history(conn)
    await conn.execute(delete(run_states).where(run_states.c.run_id.in_(ids)))
    await conn.execute(delete(flow_runs).where(flow_runs.c.id.in_(ids)))
    return len(ids)


async def scheduled_runs(
    conn: AsyncConnection, deployment_id: str, schedule_name: str, limit: int
) -> list[Run]:
    """Runs a schedule created that have not started yet, soonest first."""
    query = (
        _select_runs()
        .where(
            flow_runs.c.deployment_id == deployment_id,
            flow_runs.c.schedule_name == schedule_name,
            flow_runs.c.state_type == StateType.SCHEDULED.value,
        )
        .order_by(flow_runs.c.scheduled_at, flow_runs.c.id)
        .limit(limit)
    )
    return [_run(row) for row in await conn.execute(query)]


async def mark_waiting(
    conn: AsyncConnection, runs: list[Run], state: State, now: datetime
) -> list[Run]:
    """Give SCHEDULED runs a new sub-state and message (AwaitingConcurrencySlot), one
    guarded UPDATE each plus a history row; returns the runs that changed."""
    changed: list[Run] = []
    for run in runs:
        updated = await compare_and_set(conn, run, state, actor=Actor.SERVER, now=now)
        if updated is not None:
            changed.append(updated)
    return changed


async def next_scheduled_time(
    conn: AsyncConnection, pool_ids: Iterable[str], after: datetime
) -> datetime | None:
    """When the next SCHEDULED run of these pools comes due after ``after``.

    Runs already due that a pass left waiting (limits, no credit) are not counted: what
    frees them (a run ending, credit, a changed limit) wakes the dispatcher.
    """
    ids = list(pool_ids)
    if not ids:
        return None
    ids = padded(ids)
    parameters = {**numbered_values("p", ids), "after": after}
    [(value,)] = await _next_scheduled_of(len(ids)).typed_rows(conn, parameters)
    return _as_utc(value)


async def earliest_scheduled(conn: AsyncConnection, pool_id: str) -> datetime | None:
    """When the pool's first SCHEDULED run comes due (or came: runs a pass left waiting are
    counted); None if it has none. One lookup in the index on (pool, state, due time)."""
    [(value,)] = await _EARLIEST_SCHEDULED.typed_rows(conn, {"pool_id": pool_id})
    return _as_utc(value)


# Built once: read at every dispatch wake-up.
_EARLIEST_SCHEDULED = DriverStatement(
    select(func.min(flow_runs.c.scheduled_at)).where(
        flow_runs.c.pool_id == bindparam("pool_id"),
        flow_runs.c.state_type == StateType.SCHEDULED.value,
    )
)


@functools.cache
def _next_scheduled_of(count: int) -> DriverStatement:
    """``next_scheduled_time`` of ``count`` pools (parameters ``p<i>``): read after every
    dispatch pass, built once per count."""
    return DriverStatement(
        select(func.min(flow_runs.c.scheduled_at)).where(
            flow_runs.c.pool_id.in_(numbered("p", count)),
            flow_runs.c.state_type == StateType.SCHEDULED.value,
            flow_runs.c.scheduled_at > bindparam("after", type_=flow_runs.c.scheduled_at.type),
        )
    )


async def expired_leases(conn: AsyncConnection, now: datetime, limit: int) -> list[Run]:
    """PENDING or CANCELLING runs whose assignment lease ran out before the agent submitted."""
    query = (
        _select_runs()
        .where(
            flow_runs.c.state_type.in_([StateType.PENDING.value, StateType.CANCELLING.value]),
            flow_runs.c.lease_deadline <= now,
        )
        .order_by(flow_runs.c.lease_deadline)
        .limit(limit)
    )
    return [_run(row) for row in await conn.execute(query)]


async def next_lease_deadline(conn: AsyncConnection) -> datetime | None:
    """The earliest lease deadline of any run."""
    query = select(func.min(flow_runs.c.lease_deadline)).where(
        flow_runs.c.state_type.in_([StateType.PENDING.value, StateType.CANCELLING.value]),
        flow_runs.c.lease_deadline.is_not(None),
    )
    return _as_utc((await conn.execute(query)).scalar_one_or_none())


async def runs_of_session(conn: AsyncConnection, session_id: str) -> list[Run]:
    """Non-terminal runs held by an agent session."""
    query = _select_runs().where(
        flow_runs.c.agent_session_id == session_id,
        flow_runs.c.state_type.in_([t.value for t in ACTIVE]),
    )
    return [_run(row) for row in await conn.execute(query)]


async def count_unfinished(conn: AsyncConnection, deployment_id: str) -> int:
    """How many runs of a deployment are not terminal."""
    query = select(func.count()).where(
        flow_runs.c.deployment_id == deployment_id,
        flow_runs.c.state_type.not_in([t.value for t in StateType if t.is_terminal]),
        flow_runs.c.subflow.is_(False),
    )
    return int((await conn.execute(query)).scalar_one())


async def delete_runs_of_deployment(conn: AsyncConnection, deployment_id: str) -> None:
    """Remove every run of a deployment with its history, logs and task runs."""
    ids = select(flow_runs.c.id).where(flow_runs.c.deployment_id == deployment_id)
    await conn.execute(delete(log_batches).where(log_batches.c.run_id.in_(ids)))
    await conn.execute(delete(task_runs_table).where(task_runs_table.c.run_id.in_(ids)))
    await flush_history(conn)
    await conn.execute(delete(run_states).where(run_states.c.run_id.in_(ids)))
    await conn.execute(delete(flow_runs).where(flow_runs.c.deployment_id == deployment_id))


def _as_utc(value: Any) -> datetime | None:
    # Aggregates bypass the column type, so SQLite hands back a naive datetime or a string.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result = UTCDateTime().process_result_value(value, None)  # type: ignore[arg-type]
    return result
