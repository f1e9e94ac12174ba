"""The control plane's Prometheus metrics: one registry, the metric objects, and the rule for
counting what a transaction wrote.

The metrics live in their own ``CollectorRegistry`` rather than prometheus_client's global one,
so that ``/metrics`` shows exactly these (no process or GC collectors a library registered, no
duplicates when tests build several control planes in one process). Counters are per process:
with several replicas, Prometheus sums them.

What a unit of work writes (runs created, states entered) is counted only once its transaction
commits: ``Database.write()`` gives each transaction a ``Pending`` in the connection's ``info``
and applies it after the commit, and drops it on a rollback. A batch that fails and is tried
again item by item (``GroupCommit``) is therefore counted once, as stored. Code that writes
outside ``Database.write()`` (a test on a bare connection) counts at once.

Hot paths pay one dictionary lookup and one ``inc`` per batch, never per line or per run
where a batch is at hand; the gauges that describe stored state are not kept here at all but
read from the database at scrape time (``control_plane.orchestration.scrape``).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from control_plane.states import StateType

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "Pending",
    "counted",
]

#: The Content-Type of the text exposition ``/metrics`` answers with.
CONTENT_TYPE = CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

# A ``_created`` timestamp beside every counter and histogram would double the exposition,
# and nothing reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latencies from a run being due to an engine running it span milliseconds (a warm process
# engine) to many minutes (a pod waiting for a node and an image).
_RUN_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
)
# A unit of work is sub-millisecond on a quiet SQLite and seconds behind a busy writer lock.
_DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RUNS_CREATED = Counter(
    "flowyard_runs_created",
    "Flow runs stored (user calls, schedules, child runs and subflows).",
    registry=REGISTRY,
)
STATE_TRANSITIONS = Counter(
    "flowyard_run_state_transitions",
    "States entered by flow runs (one per state-history row), by state type; a new run's "
    "first state included.",
    ["state"],
    registry=REGISTRY,
)
# Every state from the start, so that rate() sees the first increment of each.
_ENTERED = {state.value: STATE_TRANSITIONS.labels(state.value) for state in StateType}

QUEUE_DEPTH = Gauge(
    "flowyard_queue_depth",
    "Runs SCHEDULED and due, waiting for dispatch, by pool and queue (read at scrape time).",
    ["pool", "queue"],
    registry=REGISTRY,
)
OLDEST_DUE_AGE = Gauge(
    "flowyard_queue_oldest_due_age_seconds",
    "How long the oldest due SCHEDULED run of a pool queue has been due; 0 when none is.",
    ["pool", "queue"],
    registry=REGISTRY,
)
DUE_TO_ASSIGNED = Histogram(
    "flowyard_run_due_to_assigned_seconds",
    "From a run's scheduled time to the dispatcher assigning it to an agent.",
    buckets=_RUN_BUCKETS,
    registry=REGISTRY,
)
ASSIGNED_TO_RUNNING = Histogram(
    "flowyard_run_assigned_to_running_seconds",
    "From a run's assignment to an agent to its engine's RUNNING being accepted.",
    buckets=_RUN_BUCKETS,
    registry=REGISTRY,
)
AGENTS_CONNECTED = Gauge(
    "flowyard_agents_connected",
    "Agent sessions connected to this replica, by pool (read at scrape time).",
    ["pool"],
    registry=REGISTRY,
)
AGENT_CREDIT = Gauge(
    "flowyard_agent_free_credit",
    "Assignments the agents connected to this replica can still take, by pool.",
    ["pool"],
    registry=REGISTRY,
)
REPLICA_INFO = Gauge(
    "flowyard_replica_info",
    "Always 1: this replica's id (as the log and /api/v1/pools show it) and where it serves.",
    ["replica", "host"],
    registry=REGISTRY,
)
ENGINE_STREAMS = Gauge(
    "flowyard_engine_streams_open",
    "Engine Report streams open on this replica.",
    registry=REGISTRY,
)
LOG_LINES = Counter(
    "flowyard_log_lines_ingested",
    "Log lines of engines stored (resent duplicates not counted).",
    registry=REGISTRY,
)
LEASE_EXPIRIES = Counter(
    "flowyard_lease_expiries",
    "Assignments whose lease ran out unconfirmed: handed back, or (when cancelling) cancelled.",
    registry=REGISTRY,
)
REAPED = Counter(
    "flowyard_runs_reaped",
    "Runs changed by a liveness rule, by rule.",
    ["rule"],
    registry=REGISTRY,
)
DB_SECONDS = Histogram(
    "flowyard_database_seconds",
    "Units of work on the database, from asking for a connection (a wait for SQLite's "
    "writer lock included) to the commit or rollback, by operation.",
    ["operation"],
    buckets=_DB_BUCKETS,
    registry=REGISTRY,
)
DB_READ = DB_SECONDS.labels("read")
DB_WRITE = DB_SECONDS.labels("write")
ADMISSION_REFUSALS = Counter(
    "flowyard_admission_refusals",
    "User calls refused with RESOURCE_EXHAUSTED because the control plane was busy, by method.",
    ["method"],
    registry=REGISTRY,
)

#: Rules of the reaper, as the ``rule`` label names them.
REAP_RULES = ("engine_silent", "agent_gone", "late", "cancel_timeout")
for _rule in REAP_RULES:
    REAPED.labels(_rule)

#: The key of a transaction's ``Pending`` in its connection's ``info``.
PENDING_KEY = "flowyard.metrics.pending"


class Pending:
    """Counts a transaction made, applied when it commits."""

    __slots__ = ("_counts", "_observed")

    def __init__(self) -> None:
        self._counts: list[tuple[Counter, float]] = []
        self._observed: list[tuple[Histogram, float]] = []

    def inc(self, counter: Counter, amount: float = 1) -> None:
        """Add ``amount`` to ``counter`` once the transaction commits."""
        if amount:
            self._counts.append((counter, amount))

    def observe(self, histogram: Histogram, value: float) -> None:
        """Observe ``value`` once the transaction commits."""
        self._observed.append((histogram, value))

    def created(self, runs: int) -> None:
        """``runs`` runs were stored."""
        self.inc(RUNS_CREATED, runs)

    def entered(self, states: Iterable[str]) -> None:
        """Runs entered these states (``StateType`` values, one per history row)."""
        for state in states:
            self.inc(_ENTERED[state])

    def apply(self) -> None:
        """The transaction committed: count what it did."""
        for counter, amount in self._counts:
            counter.inc(amount)
        for histogram, value in self._observed:
            histogram.observe(value)
        self._counts.clear()
        self._observed.clear()


class _Immediate(Pending):
    """Counts at once: for writes made outside ``Database.write()``."""

    __slots__ = ()

    def inc(self, counter: Counter, amount: float = 1) -> None:
        if amount:
            counter.inc(amount)

    def observe(self, histogram: Histogram, value: float) -> None:
        histogram.observe(value)


_IMMEDIATE = _Immediate()


def counted(info: MutableMapping[Any, Any]) -> Pending:
    """Where a write through the connection whose ``info`` this is counts what it did."""
    pending = info.get(PENDING_KEY)
    return pending if isinstance(pending, Pending) else _IMMEDIATE
