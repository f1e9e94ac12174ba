"""The Kubernetes runtime: each attempt is a Job, watched until it ends.

Submit renders the pool's template and creates the attempt's Secret and Job
(:mod:`agent.kubernetes.submission`; a Job that already exists is adopted). What happens next
comes from two namespaced watches per namespace, of Jobs and of pods labelled with the agent's
pool (:mod:`agent.kubernetes.watching`), read through the pure functions of
:mod:`agent.kubernetes.diagnosis`:

* each new diagnosis of a pod that has not ended the attempt (Pending, Unschedulable, an image
  pull error, a config error, a crash loop) is reported once, as a non-ending event;
* the Job's end is reported once: Complete is SUCCEEDED; Failed is FAILED, OOM_KILLED or
  EVICTED with the exit code and the last lines of the pod's log; a Job deleted before it
  ended (seen by the watch, or missing from a re-list) is DELETED, and pods it left behind
  (deleted without cascade, they keep running the flow) are deleted too;
* a pod-start deadline: if no container of the attempt started within the template's
  ``pod_start_timeout_seconds`` (counted from submission, or from the Job's creation for an
  adopted Job), the runtime deletes the Job and reports an ending event with ``gave_up`` and
  the diagnosis at that moment (e.g. IMAGE_PULL_ERROR, ``ImagePullBackOff``).

The runtime reports only on attempts it tracks: those it submitted, and those :meth:`observe`
handed to the caller after a restart. Cancel deletes the Job with background propagation (its
pods and owned Secret follow) and waits, with a deadline, until the Job is gone. Closing stops
the watches and leaves Jobs alone: their engines report on their own, and the next agent
adopts them.

The per-attempt bookkeeping and the events are in :mod:`agent.kubernetes.attempts`; deleting a
Job and waiting until it is gone in :mod:`agent.kubernetes.cleanup`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from agent import metrics
from agent.errors import ConfigurationError, KubernetesError
from agent.kubernetes import cleanup, diagnosis, objects, submission
from agent.kubernetes.attempts import Attempt, AttemptReports
from agent.kubernetes.client import ApiKubeClient, KubeClient, Resource, load_api_client
from agent.kubernetes.naming import (
    POOL_LABEL,
    label_value,
)
from agent.kubernetes.objects import object_name
from agent.kubernetes.view import ClusterView
from agent.models import Assignment, RunKey, RunningInfra
from agent.runtimes.base import EventCallback, Runtime
from agent.settings import KubernetesSettings
from agent.tasks import TaskSet

__all__ = ["KubernetesRuntime"]

logger = logging.getLogger(__name__)

Object = dict[str, Any]


class KubernetesRuntime(Runtime):
    """Runs each attempt as a Kubernetes Job in the template's namespace."""

    name: ClassVar[str] = "kubernetes"

    def __init__(
        self,
        settings: KubernetesSettings,
        *,
        pool: str,
        client: KubeClient | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._selector = f"{POOL_LABEL}={label_value(pool)}"
        self._client = client
        self._environ = os.environ if environ is None else environ
        self._reports: AttemptReports | None = None
        self._attempts: dict[RunKey, Attempt] = {}
        # Secrets being given their Job as owner, after the submission (see ``submission``).
        self._owning: dict[RunKey, asyncio.Task[None]] = {}
        self._view: ClusterView | None = None
        # Orphaned pods whose deletion is under way.
        self._stopping: set[tuple[str, str]] = set()
        self._tasks = TaskSet("kubernetes")

    @property
    def client(self) -> KubeClient:
        """The API client (known once started)."""
        if self._client is None:
            raise RuntimeError("the kubernetes runtime has not been started")
        return self._client

    @property
    def view(self) -> ClusterView:
        """The watched Jobs and pods (known once started)."""
        if self._view is None:
            raise RuntimeError("the kubernetes runtime has not been started")
        return self._view

    @property
    def reports(self) -> AttemptReports:
        """What reports the attempts' events (known once started)."""
        if self._reports is None:
            raise RuntimeError("the kubernetes runtime has not been started")
        return self._reports

    async def start(self, on_event: EventCallback) -> None:
        """Connect, and list the pool's Jobs and pods in every namespace that has any.

        Those are the agent's namespace, the ``watch_namespaces`` of its settings (both must
        be listable, or :class:`~agent.errors.ConfigurationError`), and those where a
        cluster-wide list finds unfinished Jobs of the pool (best effort: see
        :meth:`_discover`), so that after a restart :meth:`observe` sees every Job the
        agent's runs may have, whatever namespace their job variables chose.
        """
        if self._client is None:
            api_client = await asyncio.to_thread(load_api_client, self._settings)
            self._client = ApiKubeClient(api_client, self._settings.retry)
        self._view = ClusterView(self._client, self._selector, self._settings, self)
        self._reports = AttemptReports(
            client=self._client,
            view=self._view,
            settings=self._settings,
            tasks=self._tasks,
            attempts=self._attempts,
            on_event=on_event,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.startup_timeout
        namespaces = (self._settings.namespace, *self._settings.watch_namespaces)
        for namespace in namespaces:
            self._view.watch(namespace)
        for namespace in namespaces:
            await self._wait_synced(namespace, deadline - loop.time())
        discovered = [n for n in await self._discover() if n not in namespaces]
        for namespace in discovered:
            self._view.watch(namespace)
        for namespace in discovered:
            reason: object = None
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._view.wait_synced(namespace)
            except TimeoutError:
                reason = self._view.last_error(namespace) or "no answer"
            except KubernetesError as error:
                reason = error
            if reason is not None:
                # Not fatal: the watch keeps trying, and the agent's own namespaces work.
                logger.error(
                    "cannot list Jobs and pods in namespace %s, where Jobs of pool %s run: %s",
                    namespace,
                    self._pool,
                    reason,
                )
        logger.info(
            "kubernetes runtime: watching Jobs and pods labelled %s in namespace(s) %s",
            self._selector,
            ", ".join(self.view.namespaces),
        )

    async def _wait_synced(self, namespace: str, within: float) -> None:
        """Wait for the first lists of a namespace the agent must be able to use."""
        try:
            async with asyncio.timeout(max(0.0, within)):
                await self.view.wait_synced(namespace)
        except TimeoutError:
            error = self.view.last_error(namespace)
            await self.close()
            raise ConfigurationError(
                f"cannot list Jobs and pods labelled {self._selector} in namespace "
                f"{namespace} within {self._settings.startup_timeout:g} s: "
                f"{error or 'no answer'}"
            ) from None
        except KubernetesError as error:
            await self.close()
            raise ConfigurationError(
                f"the Kubernetes API refused to list Jobs and pods in namespace {namespace} "
                f"({error}); check the agent's credentials and Role"
            ) from error

    async def _discover(self) -> list[str]:
        """The namespaces that hold unfinished Jobs of this pool, from one cluster-wide list.

        A deployment's ``namespace`` job variable may have put Jobs anywhere; after a restart,
        this is how the agent finds them again. It needs ``list`` on Jobs at the cluster scope
        (a ClusterRole); without it only the agent's namespaces are watched.
        """
        try:
            listing = await self.client.list_all_namespaces(Resource.JOBS, self._selector)
        except KubernetesError as error:
            known = ", ".join((self._settings.namespace, *self._settings.watch_namespaces))
            logger.warning(
                "cannot list Jobs in all namespaces (%s): Jobs of pool %s outside namespace(s) "
                "%s are not found after a restart; grant the agent list on jobs at the cluster "
                "scope, or name their namespaces with --watch-namespace",
                error,
                self._pool,
                known,
            )
            return []
        found = {
            str((job.get("metadata") or {}).get("namespace") or "")
            for job in listing.items
            if not diagnosis.job_finished(job) and not objects.deleting(job)
        }
        return sorted(found - {""})

    async def submit(self, assignment: Assignment) -> str:
        """Create the attempt's Secret and Job; adopt the Job if it already exists."""
        key = assignment.key
        tracked = self._attempts.get(key)
        if tracked is not None and tracked.known_since is not None:
            return tracked.infrastructure_id
        rendered = submission.render(
            assignment, pool=self._pool, settings=self._settings, environ=self._environ
        )
        self.view.watch(rendered.namespace)
        timeout = rendered.pod_start_timeout_seconds
        attempt = Attempt(
            key=key,
            namespace=rendered.namespace,
            name=rendered.name,
            pod_start_timeout=timeout,
            deadline=datetime.now(UTC) + timedelta(seconds=timeout),
        )
        # Tracked before the create, so that no watch event about the Job is missed.
        self._attempts[key] = attempt
        try:
            created = await submission.create_objects(self.client, rendered)
        except BaseException:
            self._attempts.pop(key, None)
            raise
        metrics.JOBS_SUBMITTED.labels("adopted" if created.adopted else "created").inc()
        if created.adopted:
            logger.info(
                "run %s: Job %s exists already, adopting it", key, attempt.infrastructure_id
            )
            attempt.deadline = objects.start_deadline(
                created.job, self._settings.default_pod_start_timeout
            )
        else:
            logger.info("run %s: created Job %s", key, attempt.infrastructure_id)
        attempt.uid = objects.uid(created.job)
        attempt.known_since = asyncio.get_running_loop().time()
        owning = self._tasks.spawn(
            f"own-secret:{key}", submission.own_secret(self.client, rendered, created.job)
        )
        self._owning[key] = owning
        owning.add_done_callback(
            lambda done: self._owning.pop(key) if self._owning.get(key) is done else None
        )
        self._tasks.spawn(f"pod-start:{key}", self.reports.enforce_pod_start(attempt))
        self.reports.evaluate(attempt)
        return attempt.infrastructure_id

    async def cancel(self, key: RunKey) -> bool:
        """Delete the attempt's Job (background propagation) and wait until it is gone."""
        attempt = self._attempts.get(key)
        if attempt is not None:
            attempt.cancelling = True
            namespace, name = attempt.namespace, attempt.name
        else:
            found = await cleanup.find_job(self.client, self.view, self._settings.namespace, key)
            if found is None:
                return False
            namespace, name = found
        owning = self._owning.get(key)
        if owning is not None:
            # Deleting the Job deletes its Secret only once the Secret names it as owner.
            await asyncio.wait([owning])
        gone = self.view.gone_event(namespace, name)
        logger.info("deleting Job %s/%s of run %s", namespace, name, key)
        try:
            existed = await self.client.delete(Resource.JOBS, namespace, name)
        except KubernetesError as error:
            # The attempt stays tracked: its end is reported whenever the Job does go.
            logger.error("cannot delete Job %s/%s of run %s: %s", namespace, name, key, error)
            return True
        if existed and not await cleanup.wait_gone(
            self.client, namespace, name, gone, self._settings.cancel_timeout
        ):
            logger.error(
                "Job %s/%s of run %s is still there %g s after its deletion",
                namespace,
                name,
                key,
                self._settings.cancel_timeout,
            )
            return True
        if attempt is not None and not attempt.ended:
            self.reports.end(
                attempt, diagnosis.job_deleted({"metadata": {"name": name}}, by_agent=True)
            )
        return existed or attempt is not None

    def observe(self) -> list[RunningInfra]:
        """The unfinished Jobs of this pool in the watched namespaces; the caller holds them."""
        result = []
        for namespace in self.view.namespaces:
            for job in self.view.jobs(namespace):
                key = objects.run_key(job)
                if key is None or diagnosis.job_finished(job) or objects.deleting(job):
                    continue
                attempt = self._attempts.get(key)
                if attempt is None:
                    attempt = self._adopt(namespace, key, job)
                if not attempt.ended:
                    result.append(RunningInfra(key, attempt.infrastructure_id))
        return result

    async def close(self) -> None:
        """Stop watching and deadlines; the Jobs keep running."""
        await self._tasks.stop(grace=0)
        if self._view is not None:
            await self._view.stop()
        if self._client is not None:
            await self._client.close()
        running = [a.infrastructure_id for a in self._attempts.values() if not a.ended]
        if running:
            logger.info("leaving %d Job(s) running: %s", len(running), ", ".join(running))

    # What the view reports ---------------------------------------------------------------

    def job_changed(self, namespace: str, name: str, job: Object, deleted: bool) -> None:
        """Re-evaluate the Job's attempt; a deletion before its end is its end."""
        attempt = self._attempt_of(namespace, name)
        if attempt is None:
            return
        if not deleted:
            self.reports.evaluate(attempt)
        elif attempt.uid is None or objects.uid(job) in (None, attempt.uid):
            # (An earlier Job of the same name going away says nothing about this one.)
            self.reports.end(attempt, diagnosis.job_deleted(job, by_agent=attempt.cancelling))
        if deleted:
            self._stop_orphans(namespace, name)

    def pods_changed(self, namespace: str, job: str) -> None:
        """Re-evaluate the attempt of the pods' Job; stop pods their Job left behind."""
        attempt = self._attempt_of(namespace, job)
        if attempt is not None:
            self.reports.evaluate(attempt)
        self._stop_orphans(namespace, job)

    def jobs_relisted(self, namespace: str, started: float) -> None:
        """A Job known to exist before the list started, and missing from it, is gone."""
        for attempt in list(self._attempts.values()):
            if (
                attempt.namespace == namespace
                and not attempt.ended
                and attempt.known_since is not None
                and attempt.known_since < started
                and self.view.job(namespace, attempt.name) is None
            ):
                logger.info(
                    "Job %s disappeared while it was not watched", attempt.infrastructure_id
                )
                self.reports.end(
                    attempt,
                    diagnosis.job_deleted(
                        {"metadata": {"name": attempt.name}}, by_agent=attempt.cancelling
                    ),
                )
                self._stop_orphans(namespace, attempt.name)

    def _stop_orphans(self, namespace: str, job: str) -> None:
        """Delete the pods of ``job`` that outlived it (deleted without cascade).

        The run already ended when its Job went; a pod left behind would keep running the
        flow. Seen here whenever the pod's cache changes, so pods orphaned while no agent
        watched are stopped after a restart too.
        """
        if self.view.job(namespace, job) is not None:
            return  # the Job still exists: its pods are its own business
        for pod in self.view.pods_of(namespace, job):
            name = object_name(pod)
            if not objects.orphaned(pod) or (namespace, name) in self._stopping:
                continue
            self._stopping.add((namespace, name))
            logger.warning(
                "stopping pod %s/%s: its Job %s was deleted without its pods", namespace, name, job
            )
            self._tasks.spawn(f"stop-orphan:{namespace}/{name}", self._stop_pod(namespace, name))

    async def _stop_pod(self, namespace: str, name: str) -> None:
        try:
            await cleanup.delete_quietly(self.client, Resource.PODS, namespace, name)
        finally:
            self._stopping.discard((namespace, name))

    def _attempt_of(self, namespace: str, job: str) -> Attempt | None:
        key = objects.key_of_job_name(job)
        attempt = self._attempts.get(key) if key is not None else None
        if attempt is None or attempt.namespace != namespace or attempt.name != job:
            return None
        return attempt

    def _adopt(self, namespace: str, key: RunKey, job: Object) -> Attempt:
        timeout = objects.annotated_timeout(job) or self._settings.default_pod_start_timeout
        attempt = Attempt(
            key=key,
            namespace=namespace,
            name=object_name(job),
            pod_start_timeout=timeout,
            deadline=objects.start_deadline(job, self._settings.default_pod_start_timeout),
            known_since=asyncio.get_running_loop().time(),
            uid=objects.uid(job),
        )
        self._attempts[key] = attempt
        logger.info("run %s: following its existing Job %s", key, attempt.infrastructure_id)
        self._tasks.spawn(f"pod-start:{key}", self.reports.enforce_pod_start(attempt))
        # Not now: the caller holds the run only after this returns.
        asyncio.get_running_loop().call_soon(self.reports.evaluate, attempt)
        return attempt
