"""The runs this agent holds: assignments in, runtime calls, reports and credit out.

The manager is the agent's bookkeeping between the session (which speaks protobuf) and the
runtime (which creates infrastructure). It outlives sessions: a submission or a cancellation
in progress continues while the agent reconnects, and what it reports waits in the outbox.

Slots: each held attempt takes one of ``capacity`` slots from its Assign until it ends
(ending event, cancel or failed submission); the freed slot goes back to the server as
``CreditGrant(1)``, unless the server had pushed beyond capacity and no slot is really free.
An Assign for an attempt already held or recently finished takes no slot, so its credit is
returned at once.

Adoption: infrastructure the runtime finds without having created it in this process (after
a restart) is announced in every Hello and held like a submitted attempt, so its events and
its end are reported, and a ``Cancel`` tears it down. A ``Cancel`` for an attempt that is not
held still asks the runtime to remove whatever infrastructure it may have left behind.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from agent import metrics
from agent.errors import SubmitError
from agent.models import Assignment, InfraEvent, RunKey, RunningInfra
from agent.reports import (
    Accepted,
    Cancelled,
    CreditGranted,
    InfraObserved,
    Outbox,
    Report,
    SubmitFailed,
    Submitted,
)
from agent.runtimes.base import Runtime
from agent.tasks import TaskSet

__all__ = ["HelloState", "RunManager"]

logger = logging.getLogger(__name__)

# How many ended attempts to remember, to answer a repeated Assign without re-running it.
_FINISHED_MEMORY = 1024


@dataclass(frozen=True)
class HelloState:
    """What a new session announces: free slots, all slots, and the infrastructure still
    running."""

    capacity: int
    observed: tuple[RunningInfra, ...]
    slots: int = 0


@dataclass(eq=False)
class _HeldRun:
    # None for infrastructure adopted without an Assign in this process.
    assignment: Assignment | None
    infrastructure_id: str | None = None
    submitting: bool = False
    cancel_requested: bool = False
    cancel_started: bool = False


@dataclass(frozen=True)
class _Finished:
    infrastructure_id: str | None
    final: Report


class RunManager:
    """Holds attempts, drives the runtime and queues every report in the outbox."""

    def __init__(self, runtime: Runtime, outbox: Outbox, capacity: int) -> None:
        self._runtime = runtime
        self._outbox = outbox
        self._capacity = capacity
        self._held: dict[RunKey, _HeldRun] = {}
        self._finished: OrderedDict[RunKey, _Finished] = OrderedDict()
        self._orphan_cancels: set[RunKey] = set()
        self._tasks = TaskSet("runs")

    @property
    def free_slots(self) -> int:
        """Slots not taken by a held attempt."""
        return max(0, self._capacity - len(self._held))

    def held(self) -> tuple[RunKey, ...]:
        """The attempts held now, submitted or adopted."""
        return tuple(self._held)

    def hello(self) -> HelloState:
        """Restate credit and running infrastructure for a new session.

        Infrastructure the runtime sees but this manager does not hold yet is adopted first,
        so its slot is not offered again. Pending credit grants are dropped: the free slots
        they stand for are in ``capacity``.
        """
        self._outbox.take_credits()
        observed = tuple(self._runtime.observe())
        for infra in observed:
            if infra.key not in self._held:
                logger.info(
                    "adopting run %s: its infrastructure %s exists",
                    infra.key,
                    infra.infrastructure_id,
                )
                self._held[infra.key] = _HeldRun(None, infra.infrastructure_id)
        return HelloState(capacity=self.free_slots, observed=observed, slots=self._capacity)

    def assign(self, assignment: Assignment, received: datetime) -> None:
        """Take an assignment: acknowledge it now and submit it in the background."""
        key = assignment.key
        self._outbox.put(Accepted(key, received))
        held = self._held.get(key)
        if held is not None:
            logger.info("assignment %s repeated; it is already held", key)
            if held.assignment is None:
                held.assignment = assignment
            if held.infrastructure_id is not None:
                self._outbox.put(Submitted(key, held.infrastructure_id))
            self._outbox.put(CreditGranted(1))
            return
        finished = self._finished.get(key)
        if finished is not None:
            logger.info("assignment %s repeated; it already ended, reporting that again", key)
            if finished.infrastructure_id is not None:
                self._outbox.put(Submitted(key, finished.infrastructure_id))
            self._outbox.put(finished.final)
            self._outbox.put(CreditGranted(1))
            return
        if self.free_slots == 0:
            # The server owns the claim; refusing would strand the run until its lease ends.
            logger.warning("assignment %s arrived with no free slot; running it anyway", key)
        logger.info(
            "assignment received: run %s (deployment %r, flow %r)",
            key,
            assignment.deployment_name,
            assignment.flow_name,
        )
        self._held[key] = _HeldRun(assignment, submitting=True)
        self._tasks.spawn(f"submit:{key}", self._submit(key, assignment))

    def cancel(self, key: RunKey, reason: str) -> None:
        """Tear down an attempt; for one not held, remove what the runtime may have left."""
        held = self._held.get(key)
        if held is None:
            if key in self._orphan_cancels:
                return
            logger.info("cancel %s (%s): not held here, removing any leftover", key, reason)
            self._orphan_cancels.add(key)
            self._tasks.spawn(f"cancel-leftover:{key}", self._cancel_leftover(key))
            return
        if held.cancel_requested:
            return
        logger.info("cancel %s: %s", key, reason or "no reason given")
        held.cancel_requested = True
        if not held.submitting:
            self._start_cancel(key, held)
        # Otherwise the submission in progress cancels it as soon as it exists.

    def on_event(self, event: InfraEvent) -> None:
        """The runtime's event callback: report the event; an ending one frees the slot."""
        key = event.key
        held = self._held.get(key)
        if held is None:
            logger.info(
                "ignoring %s of run %s (%s): the run is not held here",
                event.kind.value,
                key,
                event.reason,
            )
            return
        if held.infrastructure_id is None:
            # The event overtook the submission's own report: keep Submitted first.
            held.infrastructure_id = event.infrastructure_id
            self._outbox.put(Submitted(key, event.infrastructure_id))
        if not event.ends:
            if not held.cancel_requested:
                logger.info(
                    "run %s: infrastructure %s: %s %s",
                    key,
                    event.kind.value,
                    event.reason,
                    event.message,
                )
                self._outbox.put(InfraObserved(event))
            return
        del self._held[key]
        final: Report
        if held.cancel_requested:
            final = Cancelled(key)
            logger.info("run %s cancelled: %s is gone", key, event.infrastructure_id)
        else:
            final = InfraObserved(event)
            logger.info(
                "run %s ended: %s%s (%s) %s",
                key,
                event.kind.value,
                " (gave up)" if event.gave_up else "",
                event.reason,
                event.message,
            )
        self._finish(key, held.infrastructure_id, final)

    async def close(self, grace: float) -> None:
        """Let submissions and cancellations finish for ``grace`` seconds, then cancel them."""
        await self._tasks.stop(grace)

    async def _submit(self, key: RunKey, assignment: Assignment) -> None:
        try:
            infrastructure_id = await self._runtime.submit(assignment)
        except SubmitError as error:
            self._submit_failed(key, str(error))
            return
        except Exception as error:
            logger.exception("run %s: unexpected error while submitting", key)
            self._submit_failed(key, f"internal agent error: {type(error).__name__}: {error}")
            return
        metrics.RUNS_STARTED.labels(self._runtime.name).inc()
        held = self._held.get(key)
        if held is None:
            return  # it already ended, Submitted first
        held.submitting = False
        if held.infrastructure_id is None:
            held.infrastructure_id = infrastructure_id
            logger.info("run %s submitted: %s", key, infrastructure_id)
            self._outbox.put(Submitted(key, infrastructure_id))
        if held.cancel_requested:
            self._start_cancel(key, held)

    def _submit_failed(self, key: RunKey, reason: str) -> None:
        held = self._held.pop(key, None)
        if held is not None and held.cancel_requested:
            # Nothing was created, which is all a cancellation asks for.
            self._finish(key, None, Cancelled(key))
            return
        logger.error("run %s: submit failed: %s", key, reason)
        self._finish(key, None, SubmitFailed(key, reason))

    def _finish(self, key: RunKey, infrastructure_id: str | None, final: Report) -> None:
        self._finished[key] = _Finished(infrastructure_id, final)
        self._finished.move_to_end(key)
        while len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        self._outbox.put(final)
        # Normally true; after the server pushed beyond capacity, the slot is not really free.
        if self.free_slots > 0:
            self._outbox.put(CreditGranted(1))

    def _start_cancel(self, key: RunKey, held: _HeldRun) -> None:
        if not held.cancel_started:
            held.cancel_started = True
            self._tasks.spawn(f"cancel:{key}", self._cancel(key))

    async def _cancel(self, key: RunKey) -> None:
        if not await self._runtime.cancel(key):
            # The infrastructure ended before the cancel reached it; its end was reported.
            logger.info("cancel %s: the infrastructure had already ended", key)

    async def _cancel_leftover(self, key: RunKey) -> None:
        try:
            if await self._runtime.cancel(key):
                logger.info("cancel %s: removed infrastructure left behind", key)
        except Exception:
            # Still answer: the server must not keep the run CANCELLING because of cleanup.
            logger.exception("cancel %s: could not remove leftover infrastructure", key)
        finally:
            self._orphan_cancels.discard(key)
        self._outbox.put(Cancelled(key))
