"""Use cases for flow runs driven by users: create, read, list, cancel."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from control_plane.models import Deployment, Pool, Run, Schedule, StateRecord, WorkQueue
from control_plane.orchestration import clock, numbers, queues, templates, validation
from control_plane.orchestration.agents import AgentRegistry, CancelMessage
from control_plane.orchestration.changes import Notifier, claimed, retrying
from control_plane.states import (
    Actor,
    State,
    StateType,
    cancel_target,
    rejection,
)
from control_plane.store import catalog as catalog_repo
from control_plane.store import runs as repo
from control_plane.store.db import Database, GroupCommit

MAX_PAGE_SIZE = 500
#: Deployments (with a queue asked for) whose catalog rows run creation remembers.
MAX_REMEMBERED = 1000
#: How many times a creation is planned again when its deployment changes under it.
CREATE_ATTEMPTS = 3
DEFAULT_PAGE_SIZE = 50
MAX_KEY_CHARS = 200
MAX_REASON_CHARS = 1000
#: Longer than any token ListRuns hands out (an ISO time and a run id, in base64).
MAX_PAGE_TOKEN_CHARS = 200


@dataclass(frozen=True)
class _Planned:
    """A new run's row, checked against the deployment, pool and queue as they were read."""

    values: dict[str, Any]
    deployment: Deployment
    pool: Pool
    queue_name: str
    #: Whether the deployment, pool and queue were remembered rather than read for this run.
    remembered: bool = False

    @property
    def read(self) -> tuple[str, datetime, datetime, str]:
        """The deployment, pool and queue as the plan read them (``repo.catalog_as_read``)."""
        return (
            self.deployment.id,
            self.deployment.updated_at,
            self.pool.updated_at,
            self.values["queue_id"],
        )

    def run(self) -> Run:
        """The run as the row inserts it."""
        values = {**self.values, "state_type": StateType(self.values["state_type"])}
        return Run(
            **values,
            deployment_name=self.deployment.name,
            pool_name=self.pool.name,
            queue_name=self.queue_name,
            accepted_at=None,
            started_at=None,
            ended_at=None,
            lease_deadline=None,
            engine_token_hash=None,
        )


@dataclass(frozen=True)
class RunRequest:
    """What CreateRun asks for."""

    deployment_name: str
    parameters_json: str = ""
    job_variables_json: str = ""
    idempotency_key: str = ""
    scheduled_at: datetime | None = None
    #: The pool queue; empty means the deployment's.
    queue: str = ""
    #: The schedule that creates the run (the scheduler), empty for runs created by hand.
    schedule_name: str = ""
    #: The schedule as the scheduler read it: the run is created only if it is still so.
    schedule: Schedule | None = None
    #: The run (and attempt) whose flow starts this one (``run_deployment``), if any.
    parent_run_id: str | None = None
    parent_attempt: int | None = None
    #: Whether cancelling the parent cancels this run (the parent waits on it).
    cancel_with_parent: bool = False


class Runs:
    """Flow runs as users see them."""

    def __init__(self, db: Database, notifier: Notifier, agents: AgentRegistry) -> None:
        self._db = db
        self._notifier = notifier
        self._agents = agents
        self._inserts = GroupCommit(db, self._insert)
        # (deployment name, queue asked for) -> what a creation read for them
        self._catalog: dict[tuple[str, str], tuple[Deployment, Pool, WorkQueue]] = {}
        self._reading: dict[
            tuple[str, str], asyncio.Future[tuple[Deployment, Pool, WorkQueue]]
        ] = {}

    async def create(self, request: RunRequest) -> tuple[Run, bool]:
        """Create a run (or return the one with the same idempotency key).

        Everything that can refuse the request -- the deployment, its schedule, the
        parameters, the queue, the job variables -- is read and checked before the write
        transaction, so that writers never wait behind validation. The transaction then
        checks in one read that the deployment, pool and queue are still as checked, and
        inserts; if one changed meanwhile, the whole creation starts again. Creations that
        arrive together share that transaction (``GroupCommit``).

        The deployment, pool and queue a creation read are remembered for the next one of the
        same deployment: the transaction's check covers them as it covers a fresh read, and a
        request they would refuse is checked again against the stored rows before it is.
        """
        validation.deployment_name(request.deployment_name, "deployment_name")
        parameters = validation.json_object(request.parameters_json, "parameters_json")
        job_variables = validation.json_object(request.job_variables_json, "job_variables_json")
        key = validation.text(request.idempotency_key, "idempotency_key", MAX_KEY_CHARS) or None
        if request.queue:
            validation.pool_name(request.queue, "queue")
        for attempt in range(CREATE_ATTEMPTS):
            # What was read for an earlier creation is checked in the write transaction like
            # anything read now; once it is found out of date, it is read afresh.
            plan = await self._plan(request, parameters, job_variables, key, attempt == 0)
            if isinstance(plan, Run):
                return plan, False
            try:
                outcome = await self._inserts.submit(plan)
            except NotFound:
                if plan.remembered:
                    continue  # the deployment went, but one of that name may be there now
                raise
            if outcome is not None:
                run, created = outcome
                if created:
                    self._notifier.wake_dispatcher()
                return run, created
        raise Aborted(
            f"deployment {request.deployment_name!r} kept changing while the run was created; "
            "retry to create it as the deployment is now"
        )

    async def _catalog_of(
        self, request: RunRequest, key: str | None, remembered: bool
    ) -> tuple[Deployment, Pool, WorkQueue, bool] | Run:
        """The deployment, pool and queue of a new run (and whether they were remembered
        from an earlier creation), or the existing run with the idempotency key."""
        name = (request.deployment_name, request.queue)
        entry = self._catalog.get(name) if remembered else None
        if entry is None:
            reading = self._reading.get(name) if remembered else None
            # A burst of creations of one deployment waits for one read, not one each; one
            # that joins a read begun before it treats what it reads as remembered.
            remembered = reading is not None
            if reading is None:
                reading = asyncio.ensure_future(self._read_catalog(request))
                self._reading[name] = reading
                reading.add_done_callback(functools.partial(self._read, name))
            try:
                entry = await asyncio.shield(reading)
            except NotFound:
                if not remembered:
                    raise
                return await self._catalog_of(request, key, remembered=False)
        if key is not None:
            async with self._db.read() as conn:
                existing = await repo.get_run_by_key(conn, entry[0].id, key)
            if existing is not None:
                return existing
        return (*entry, remembered)

    def _read(self, name: tuple[str, str], reading: asyncio.Future[Any]) -> None:
        if self._reading.get(name) is reading:
            del self._reading[name]
        if not reading.cancelled():
            reading.exception()  # each caller that waited has it; none may have

    async def _read_catalog(self, request: RunRequest) -> tuple[Deployment, Pool, WorkQueue]:
        """Read (and remember) the deployment, pool and queue of a new run."""
        async with self._db.read() as conn:
            deployment = await catalog_repo.get_deployment(conn, name=request.deployment_name)
            if deployment is None:
                raise NotFound(f"deployment {request.deployment_name!r} not found")
            pool = await catalog_repo.get_pool(conn, id=deployment.pool_id)
            assert pool is not None  # a deployment's pool cannot be deleted under it
            queue = await queues.resolve(
                conn,
                pool,
                request.queue or deployment.scheduling.queue,
                "queue" if request.queue else "deployment.queue",
            )
        if len(self._catalog) >= MAX_REMEMBERED:
            self._catalog.clear()
        self._catalog[request.deployment_name, request.queue] = (deployment, pool, queue)
        return deployment, pool, queue

    async def _plan(
        self,
        request: RunRequest,
        parameters: dict[str, Any],
        job_variables: dict[str, Any],
        key: str | None,
        remembered: bool = False,
    ) -> _Planned | Run:
        """The checked row of a new run, or the existing run with the idempotency key."""
        catalog = await self._catalog_of(request, key, remembered)
        if isinstance(catalog, Run):
            return catalog
        try:
            return self._checked(request, parameters, job_variables, key, *catalog)
        except (InvalidArgument, FailedPrecondition, NotFound):
            if not catalog[-1]:
                raise
            # Refused by what an earlier creation read: only what is stored now may refuse.
            return await self._plan(request, parameters, job_variables, key)

    @staticmethod
    def _checked(
        request: RunRequest,
        parameters: dict[str, Any],
        job_variables: dict[str, Any],
        key: str | None,
        deployment: Deployment,
        pool: Pool,
        queue: WorkQueue,
        remembered: bool,
    ) -> _Planned:
        """The row of a new run, checked against its deployment, pool and queue."""
        if request.schedule is not None:
            _check_schedule_current(deployment, request.schedule)
        merged = {**deployment.parameters, **parameters}
        validation.parameters(merged, deployment.parameter_schema, deployment.flow_name)
        merged = numbers.whole_numbers(merged, deployment.parameter_schema)
        with validation.evaluating(
            f"the job variables schema of pool {pool.name!r}",
            FailedPrecondition,
            validation.POOL_FIX,
        ):
            templates.check_job_variables(
                {**deployment.job_variables, **job_variables},
                pool.base_job_template,
                "job_variables_json",
            )
        now = clock.now()
        values: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "deployment_id": deployment.id,
            "pool_id": deployment.pool_id,
            "flow_name": deployment.flow_name,
            "parameters": merged,
            "job_variables": job_variables,
            "idempotency_key": key,
            "state_type": StateType.SCHEDULED.value,
            "state_name": "Scheduled",
            "state_message": "",
            "state_time": now,
            "version": 1,
            "last_transition_id": None,
            "attempt": 1,
            "scheduled_at": request.scheduled_at or now,
            "created_at": now,
            "agent_session_id": None,
            "agent_name": "",
            "infrastructure_id": "",
            "result_summary": "",
            "queue_id": queue.id,
            "max_retries": deployment.scheduling.retries,
            "schedule_name": request.schedule_name,
            "parent_run_id": request.parent_run_id,
            "parent_attempt": request.parent_attempt,
            "subflow": False,
            "cancel_with_parent": request.cancel_with_parent,
            "has_subflows": False,
        }
        return _Planned(values, deployment, pool, queue.name, remembered)

    async def _insert(
        self, conn: AsyncConnection, plans: Sequence[_Planned]
    ) -> list[tuple[Run, bool] | Exception | None]:
        """Insert planned runs in one transaction. For each: the run and whether it is new
        (False: its idempotency key was taken since the plan looked), None when what it was
        checked against changed meanwhile, NotFound when its deployment is gone."""
        as_read: dict[tuple[str, datetime, datetime, str], bool | None] = {}
        for plan in plans:
            if plan.read not in as_read:
                as_read[plan.read] = await repo.catalog_as_read(conn, *plan.read)
        current = [plan for plan in plans if as_read[plan.read]]
        stored = await repo.insert_runs(conn, [plan.values for plan in current], self._db.dialect)
        outcomes: list[tuple[Run, bool] | Exception | None] = []
        for plan in plans:
            if as_read[plan.read] is None:
                outcomes.append(NotFound(f"deployment {plan.deployment.name!r} not found"))
            elif not as_read[plan.read]:
                outcomes.append(None)
            elif plan.values["id"] in stored:
                outcomes.append((plan.run(), True))
            else:
                existing = await repo.get_run_by_key(
                    conn, plan.deployment.id, plan.values["idempotency_key"]
                )
                assert existing is not None
                outcomes.append((existing, False))
        return outcomes

    async def get(self, run_id: str) -> tuple[Run, list[StateRecord]]:
        """A run and its state history; NOT_FOUND if there is no such run."""
        validation.run_id(run_id)
        async with self._db.read() as conn:
            run = await repo.get_run(conn, run_id)
            if run is None:
                raise NotFound(f"run {run_id} not found")
            return run, await repo.history(conn, run_id)

    async def engine_run_of(self, run: Run) -> tuple[str, int]:
        """The run and attempt whose engine runs ``run`` (see ``store.runs.engine_run_of``)."""
        if not run.subflow:
            return run.id, run.attempt
        async with self._db.read() as conn:
            return await repo.engine_run_of(conn, run)

    async def children(self, run_id: str) -> list[Run]:
        """The runs a run's flow started (subflows, ``run_deployment``), oldest first."""
        async with self._db.read() as conn:
            return await repo.children(conn, run_id)

    async def current(self, run_id: str) -> Run:
        """The run as stored now; NOT_FOUND if there is no such run."""
        validation.run_id(run_id)
        async with self._db.read() as conn:
            run = await repo.get_run(conn, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    async def list(
        self,
        deployment_name: str,
        state_types: list[StateType],
        page_size: int,
        page_token: str,
        schedule_name: str = "",
        run_id_prefix: str = "",
        pool_name: str = "",
        created_since: datetime | None = None,
        created_until: datetime | None = None,
    ) -> tuple[list[Run], str]:
        """One page of runs, newest first, and the token of the next page ("" at the end)."""
        # Each type is a parameter of the query: a list repeating one type 70,000 times
        # would be more than PostgreSQL takes in one statement.
        state_types = list(dict.fromkeys(state_types))
        if run_id_prefix:
            validation.run_id_prefix(run_id_prefix)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size: must be between 1 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})"
            )
        limit = page_size or DEFAULT_PAGE_SIZE
        before = _decode_page_token(page_token) if page_token else None
        async with self._db.read() as conn:
            deployment_id = None
            if deployment_name:
                validation.deployment_name(deployment_name, "deployment_name")
                deployment = await catalog_repo.get_deployment(conn, name=deployment_name)
                if deployment is None:
                    raise NotFound(f"deployment {deployment_name!r} not found")
                deployment_id = deployment.id
            if schedule_name:
                if deployment_id is None:
                    raise InvalidArgument("schedule_name: give deployment_name with it")
                validation.deployment_name(schedule_name, "schedule_name")
            pool_id = None
            if pool_name:
                validation.pool_name(pool_name, "pool")
                pool = await catalog_repo.get_pool(conn, name=pool_name)
                if pool is None:
                    raise NotFound(f"pool {pool_name!r} not found")
                pool_id = pool.id
            runs = await repo.list_runs(
                conn,
                deployment_id=deployment_id,
                state_types=state_types,
                limit=limit + 1,
                before=before,
                schedule_name=schedule_name,
                id_prefix=run_id_prefix,
                pool_id=pool_id,
                created_since=created_since,
                created_until=created_until,
            )
        if len(runs) <= limit:
            return runs, ""
        last = runs[limit - 1]
        return runs[:limit], _encode_page_token(last.created_at, last.id)

    async def cancel(self, run_id: str, reason: str) -> Run:
        """Cancel a run: CANCELLED at once if it holds no infrastructure, else CANCELLING."""
        validation.run_id(run_id)
        validation.text(reason, "reason", MAX_REASON_CHARS)

        async def attempt() -> Run:
            async with self._db.write() as conn:
                run = await repo.get_run(conn, run_id)
                if run is None:
                    raise NotFound(f"run {run_id} not found")
                if run.state_type is StateType.CANCELLING:
                    return run
                if run.is_terminal:
                    raise FailedPrecondition(
                        f"run {run_id} is already {run.state_type.value} and cannot be cancelled"
                    )
                if run.subflow:
                    raise FailedPrecondition(
                        f"run {run_id} is a subflow: it runs inside the flow of run "
                        f"{run.parent_run_id}; cancel that run"
                    )
                target = cancel_target(run.state_type, await self._holds_infrastructure(conn, run))
                refused = rejection(run.state_type, target, Actor.USER)
                if refused:
                    raise FailedPrecondition(refused)
                message = f"Cancelled by user: {reason}" if reason else "Cancelled by user"
                updated = await repo.compare_and_set(
                    conn, run, State(target, message=message), actor=Actor.USER, now=clock.now()
                )
                return claimed(updated)

        run = await retrying(attempt)
        self._notifier.changed(run)
        if run.state_type is StateType.CANCELLING:
            self._agents.tell_cancel(
                run.agent_session_id, CancelMessage(run.id, run.attempt, run.state_message)
            )
        await self._cancel_children(run)
        return run

    async def _cancel_children(self, parent: Run) -> None:
        """Cancel the deployment runs ``parent``'s flow waits on (``run_deployment(wait=True)``),
        and theirs in turn. Its subflows end with it (``store.runs.end_subflows``)."""
        async with self._db.read() as conn:
            children = await repo.children(conn, parent.id)
        for child in children:
            if child.subflow:
                # Ends with its parent; what it waits on is cancelled with it.
                await self._cancel_children(child)
            elif child.cancel_with_parent and not child.is_terminal:
                with contextlib.suppress(FailedPrecondition, NotFound):  # it ended meanwhile
                    await self.cancel(child.id, f"its parent run {parent.id} was cancelled")

    async def _holds_infrastructure(self, conn: AsyncConnection, run: Run) -> bool:
        # A PENDING run whose agent is gone and which was never submitted has nothing to tear
        # down; anything further along may have a live engine that must be told.
        if run.state_type is StateType.PENDING:
            return bool(run.infrastructure_id) or await self._agents.holder_connected(
                conn, run.agent_session_id
            )
        return run.state_type is not StateType.SCHEDULED


def _check_schedule_current(deployment: Deployment, schedule: Schedule) -> None:
    """FAILED_PRECONDITION unless ``schedule`` is still an active schedule of the deployment.

    Checked in the transaction that inserts the run: a scheduler pass that read the
    deployment before it was changed or paused cannot create a run of the old definition.
    """
    scheduling = deployment.scheduling
    current = {s.name: s for s in scheduling.schedules}.get(schedule.name)
    if scheduling.paused or current is None or current.paused or current != schedule:
        raise FailedPrecondition(
            f"schedule {schedule.name!r} of deployment {deployment.name!r} changed or is paused"
        )


def _encode_page_token(created_at: datetime, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{run_id}".encode()).decode()


def _decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        if len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii():
            raise ValueError(token)
        created, run_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        when = datetime.fromisoformat(created)
        # Tokens carry an aware UTC time; a naive one cannot be compared with stored times.
        if when.tzinfo is None:
            raise ValueError(created)
        return when, validation.run_id(run_id)
    except (ValueError, InvalidArgument):
        raise InvalidArgument(
            "page_token: not a token returned by ListRuns; pass next_page_token unchanged, "
            "or leave page_token empty for the first page"
        ) from None
