"""Concurrency limits of one pool during a dispatch pass: pool, queues, deployments.

A run counts against the limits of its pool, its queue and its deployment from the moment it
is claimed (PENDING) until it is terminal: PENDING, RUNNING and CANCELLING runs hold a slot.
``Slots`` is built from the runs holding slots at the start of a pass and is updated as the
pass claims more, so one pass never overshoots a limit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from control_plane.models import Collision, Pool, Run, WorkQueue

#: Run ids named in a "limit reached" message.
SHOWN_IDS = 5


@dataclass(frozen=True)
class DeploymentLimit:
    """A deployment's concurrency limit and collision strategy."""

    id: str
    name: str
    limit: int
    collision: Collision


class Slots:
    """Free slots of a pool, its queues and its limited deployments."""

    def __init__(
        self,
        pool: Pool,
        queues: list[WorkQueue],
        deployments: list[DeploymentLimit],
        active: list[tuple[str, str | None, int]],
    ) -> None:
        """``active``: (deployment id, queue id, how many runs) holding slots now."""
        self._pool = pool
        self._queues = {q.id: q for q in queues}
        self._deployments = {d.id: d for d in deployments}
        self._pool_count = sum(count for _, _, count in active)
        self._by_queue: Counter[str | None] = Counter()
        self._by_deployment: Counter[str] = Counter()
        for deployment_id, queue_id, count in active:
            self._by_queue[queue_id] += count
            self._by_deployment[deployment_id] += count

    def pool_room(self, wanted: int) -> int:
        """How many more runs the pool may start, at most ``wanted``."""
        if not self._pool.concurrency_limit:
            return wanted
        return max(0, min(wanted, self._pool.concurrency_limit - self._pool_count))

    def queue_full(self, queue_id: str | None) -> bool:
        """Whether the queue is at its limit."""
        queue = self._queues.get(queue_id or "")
        return bool(
            queue
            and queue.concurrency_limit
            and self._by_queue[queue_id] >= queue.concurrency_limit
        )

    def deployment_full(self, deployment_id: str) -> bool:
        """Whether the deployment is at its limit."""
        limit = self._deployments.get(deployment_id)
        return bool(limit and self._by_deployment[deployment_id] >= limit.limit)

    def full_deployments(self) -> list[DeploymentLimit]:
        """Deployments at their limit."""
        return [d for d in self._deployments.values() if self.deployment_full(d.id)]

    def take(self, run: Run) -> None:
        """Count a run the pass just claimed."""
        self._pool_count += 1
        self._by_queue[run.queue_id] += 1
        self._by_deployment[run.deployment_id] += 1

    def reason(self, deployment: DeploymentLimit, holders: list[str]) -> str:
        """Why a run of a deployment at its limit waits (or is cancelled), for its state;
        ``holders`` are the ids of (the first ``SHOWN_IDS``) runs holding its slots."""
        count = self._by_deployment[deployment.id]
        shown = ", ".join(holders[:SHOWN_IDS]) + (", ..." if count > SHOWN_IDS else "")
        return (
            f"deployment {deployment.name} is at its concurrency limit "
            f"({count} of {deployment.limit} running: {shown})"
        )
