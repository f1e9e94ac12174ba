"""Deleting an attempt's Job and making sure it is gone, for cancel and for giving up.

A deletion is confirmed by the watch; should the watch be down, the Job is read directly now
and then until it is gone or the deadline passes.

A Job someone else deleted without cascade (``propagationPolicy: Orphan``, or no policy at
all, which batch/v1 treats as Orphan) leaves its pods running the flow after the run ended
CRASHED; the runtime stops them (see :func:`agent.kubernetes.objects.orphaned`).
"""

from __future__ import annotations

import asyncio
import logging

from agent.errors import KubernetesError
from agent.kubernetes.client import KubeClient, Resource
from agent.kubernetes.naming import job_name
from agent.kubernetes.view import ClusterView
from agent.models import RunKey

logger = logging.getLogger("agent.runtimes.kubernetes")

# While waiting for a deleted Job to disappear, look it up directly this often in case
# the watch is down.
_GONE_POLL_SECONDS = 2.0


async def find_job(
    client: KubeClient, view: ClusterView, namespace: str, key: RunKey
) -> tuple[str, str] | None:
    """Where a Job of an attempt the runtime does not track is, if it exists.

    The watched namespaces are looked at first, then ``namespace`` (the agent's own) is read.
    """
    try:
        name = job_name(key.run_id, key.attempt)
    except ValueError:
        return None
    for watched in view.namespaces:
        if view.job(watched, name) is not None:
            return watched, name
    if await client.read(Resource.JOBS, namespace, name) is not None:
        return namespace, name
    return None


async def wait_gone(
    client: KubeClient, namespace: str, name: str, gone: asyncio.Event, within_seconds: float
) -> bool:
    """Wait until the Job is deleted: by the watch, else by reading it now and then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    while True:
        remaining = deadline - loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(_GONE_POLL_SECONDS, remaining))):
                await gone.wait()
            return True
        except TimeoutError:
            pass
        try:
            if await client.read(Resource.JOBS, namespace, name) is None:
                return True
        except KubernetesError as error:
            logger.warning("cannot read Job %s/%s: %s", namespace, name, error)
        if loop.time() >= deadline:
            return False


async def delete_quietly(client: KubeClient, resource: Resource, namespace: str, name: str) -> None:
    """Delete an object; a failure is logged, not raised (the caller reports regardless)."""
    try:
        await client.delete(resource, namespace, name)
    except KubernetesError as error:
        logger.error("cannot delete %s %s/%s: %s", resource.value, namespace, name, error)
