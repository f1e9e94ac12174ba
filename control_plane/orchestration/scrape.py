"""``/metrics``: the exposition of the control plane's metrics, with the gauges read now.

Gauges that describe stored state (what waits in each pool queue) are not kept up to date by
the code that changes it: each scrape reads them with a couple of grouped queries, so they
are right whatever replica, schedule or user call changed the runs. The agents' gauges are
this replica's sessions, read from memory; ``flowyard_replica_info`` names this replica (its
id and where it serves), so that a scrape target can be matched to the replica an agent is on.

The gauges are cleared and set again without awaiting in between, and the text is rendered
in the same step: a scrape never shows a pool or queue that was deleted, nor a mix of two
scrapes' values.
"""

from __future__ import annotations

from prometheus_client import generate_latest

from control_plane import metrics
from control_plane.metrics import CONTENT_TYPE
from control_plane.orchestration import clock
from control_plane.orchestration.agents import AgentRegistry
from control_plane.orchestration.cluster import Replica
from control_plane.store import backlog as backlog_repo
from control_plane.store.db import Database

__all__ = ["CONTENT_TYPE", "scrape"]


async def scrape(db: Database, agents: AgentRegistry, replica: Replica | None = None) -> bytes:
    """The text exposition of every control-plane metric (served with ``CONTENT_TYPE``), with
    ``replica``'s identity (``flowyard_replica_info``)."""
    now = clock.now()
    async with db.read() as conn:
        queues = await backlog_repo.due_by_queue(conn, now)
    metrics.QUEUE_DEPTH.clear()
    metrics.OLDEST_DUE_AGE.clear()
    metrics.AGENTS_CONNECTED.clear()
    metrics.AGENT_CREDIT.clear()
    metrics.REPLICA_INFO.clear()
    if replica is not None:
        metrics.REPLICA_INFO.labels(replica.id, replica.host).set(1)
    for queue in queues:
        age = (now - queue.oldest_due_at).total_seconds() if queue.oldest_due_at else 0.0
        metrics.QUEUE_DEPTH.labels(queue.pool, queue.queue).set(queue.due)
        metrics.OLDEST_DUE_AGE.labels(queue.pool, queue.queue).set(max(0.0, age))
    connected: dict[str, int] = {queue.pool: 0 for queue in queues}
    credit = dict(connected)
    for session in agents.all():
        if not agents.connected(session):
            continue
        connected[session.pool_name] = connected.get(session.pool_name, 0) + 1
        credit[session.pool_name] = credit.get(session.pool_name, 0) + max(0, session.credits)
    for pool, count in connected.items():
        metrics.AGENTS_CONNECTED.labels(pool).set(count)
        metrics.AGENT_CREDIT.labels(pool).set(credit[pool])
    return generate_latest(metrics.REGISTRY)
