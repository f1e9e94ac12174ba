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
        active: list[tuple[str, str, str | None]],
    ) -> None:
        self._pool = pool
        self._queues = {q.id: q for q in queues}
        self._deployments = {d.id: d for d in deployments}
        self._pool_count = len(active)
        self._by_queue: Counter[str | None] = Counter(queue for _, _, queue in active)
        self._by_deployment: Counter[str] = Counter(deployment for _, deployment, _ in active)
        self._holders: dict[str, list[str]] = {}
        for run_id, deployment_id, _ in active:
            self._holders.setdefault(deployment_id, []).append(run_id)

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
        self._holders.setdefault(run.deployment_id, []).append(run.id)

    def reason(self, deployment: DeploymentLimit) -> str:
        """Why a run of a deployment at its limit waits (or is cancelled), for its state."""
        holders = self._holders.get(deployment.id, [])
        shown = ", ".join(holders[:SHOWN_IDS]) + (", ..." if len(holders) > SHOWN_IDS else "")
        return (
            f"deployment {deployment.name} is at its concurrency limit "
            f"({len(holders)} of {deployment.limit} running: {shown})"
        )
