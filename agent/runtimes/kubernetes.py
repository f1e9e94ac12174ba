"""The Kubernetes runtime: each attempt is a Job, watched until it ends.

Submit renders the pool's template and creates the attempt's Secret and Job
(:mod:`agent.kubernetes.submission`; a Job that already exists is adopted). What happens next
comes from two namespaced watches, of Jobs and of pods labelled with the agent's pool
(:mod:`agent.kubernetes.watching`), read through the pure functions of
:mod:`agent.kubernetes.diagnosis`:

* each new diagnosis of a pod that has not ended the attempt (Pending, Unschedulable, an image
  pull error, a config error, a crash loop) is reported once, as a non-ending event;
* the Job's end is reported once: Complete is SUCCEEDED; Failed is FAILED, OOM_KILLED or
  EVICTED with the exit code and the last lines of the pod's log; a Job deleted before it
  ended (seen by the watch, or missing from a re-list) is DELETED;
* a pod-start deadline: if no container of the attempt started within the template's
  ``pod_start_timeout_seconds`` (counted from submission, or from the Job's creation for an
  adopted Job), the runtime deletes the Job and reports an ending event with ``gave_up`` and
  the diagnosis at that moment (e.g. IMAGE_PULL_ERROR, ``ImagePullBackOff``).

The runtime reports only on attempts it tracks: those it submitted, and those :meth:`observe`
handed to the caller after a restart. Cancel deletes the Job with background propagation (its
pods and owned Secret follow) and waits, with a deadline, until the Job is gone. Closing stops
the watches and leaves Jobs alone: their engines report on their own, and the next agent
adopts them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from agent.errors import ConfigurationError, KubernetesError
from agent.kubernetes import diagnosis, objects, submission
from agent.kubernetes.client import ApiKubeClient, KubeClient, Resource, load_api_client
from agent.kubernetes.diagnosis import Diagnosis
from agent.kubernetes.manifests import (
    ATTEMPT_LABEL,
    CONTAINER_NAME,
    POOL_LABEL,
    RUN_ID_LABEL,
    job_name,
    label_value,
)
from agent.kubernetes.objects import object_name
from agent.kubernetes.view import ClusterView
from agent.models import Assignment, InfraEvent, InfraEventKind, RunKey, RunningInfra
from agent.runtimes.base import EventCallback, Runtime
from agent.settings import KubernetesSettings
from agent.tasks import TaskSet

__all__ = ["KubernetesRuntime"]

logger = logging.getLogger(__name__)

Object = dict[str, Any]

# While waiting for a deleted Job to disappear, look it up directly this often in case
# the watch is down.
_GONE_POLL_SECONDS = 2.0
# Kinds whose end is worth the pod's log tail.
_TAIL_KINDS = frozenset({InfraEventKind.FAILED, InfraEventKind.OOM_KILLED, InfraEventKind.EVICTED})


@dataclass(eq=False)
class _Attempt:
    """What the runtime tracks for one attempt whose events it reports."""

    key: RunKey
    namespace: str
    name: str
    pod_start_timeout: float
    # Wall-clock time by which a container must have started.
    deadline: datetime
    # Event-loop time from which the Job is known to exist; None while it is being created.
    known_since: float | None = None
    uid: str | None = None
    started: bool = False
    ended: bool = False
    cancelling: bool = False
    reported: set[tuple[InfraEventKind, str]] = field(default_factory=set)
    # Set once started or ended: the pod-start deadline no longer applies.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def infrastructure_id(self) -> str:
        return f"{self.namespace}/{self.name}"


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
        self._on_event: EventCallback | None = None
        self._attempts: dict[RunKey, _Attempt] = {}
        self._view: ClusterView | None = None
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

    async def start(self, on_event: EventCallback) -> None:
        """Connect, and list the agent's Jobs and pods in its namespace before returning."""
        if self._client is None:
            api_client = await asyncio.to_thread(load_api_client, self._settings)
            self._client = ApiKubeClient(api_client, self._settings.retry)
        self._on_event = on_event
        self._view = ClusterView(self._client, self._selector, self._settings, self)
        namespace = self._settings.namespace
        self._view.watch(namespace)
        try:
            async with asyncio.timeout(self._settings.startup_timeout):
                await self._view.wait_synced(namespace)
        except TimeoutError:
            error = self._view.last_error(namespace)
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
        logger.info(
            "kubernetes runtime: watching Jobs and pods labelled %s in namespace %s",
            self._selector,
            namespace,
        )

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
        attempt = _Attempt(
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
        self._tasks.spawn(f"pod-start:{key}", self._enforce_pod_start(attempt))
        self._evaluate(attempt)
        return attempt.infrastructure_id

    async def cancel(self, key: RunKey) -> bool:
        """Delete the attempt's Job (background propagation) and wait until it is gone."""
        attempt = self._attempts.get(key)
        if attempt is not None:
            attempt.cancelling = True
            namespace, name = attempt.namespace, attempt.name
        else:
            found = await self._find_job(key)
            if found is None:
                return False
            namespace, name = found
        gone = self.view.gone_event(namespace, name)
        logger.info("deleting Job %s/%s of run %s", namespace, name, key)
        try:
            existed = await self.client.delete(Resource.JOBS, namespace, name)
        except KubernetesError as error:
            # The attempt stays tracked: its end is reported whenever the Job does go.
            logger.error("cannot delete Job %s/%s of run %s: %s", namespace, name, key, error)
            return True
        if existed and not await self._wait_gone(namespace, name, gone):
            logger.error(
                "Job %s/%s of run %s is still there %g s after its deletion",
                namespace,
                name,
                key,
                self._settings.cancel_timeout,
            )
            return True
        if attempt is not None and not attempt.ended:
            self._end(attempt, diagnosis.job_deleted({"metadata": {"name": name}}, by_agent=True))
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
            self._evaluate(attempt)
        elif attempt.uid is None or objects.uid(job) in (None, attempt.uid):
            # (An earlier Job of the same name going away says nothing about this one.)
            self._end(attempt, diagnosis.job_deleted(job, by_agent=attempt.cancelling))

    def pods_changed(self, namespace: str, job: str) -> None:
        """Re-evaluate the attempt of the pods' Job."""
        attempt = self._attempt_of(namespace, job)
        if attempt is not None:
            self._evaluate(attempt)

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
                self._end(
                    attempt,
                    diagnosis.job_deleted(
                        {"metadata": {"name": attempt.name}}, by_agent=attempt.cancelling
                    ),
                )

    def _attempt_of(self, namespace: str, job: str) -> _Attempt | None:
        key = objects.key_of_job_name(job)
        attempt = self._attempts.get(key) if key is not None else None
        if attempt is None or attempt.namespace != namespace or attempt.name != job:
            return None
        return attempt

    def _adopt(self, namespace: str, key: RunKey, job: Object) -> _Attempt:
        timeout = objects.annotated_timeout(job) or self._settings.default_pod_start_timeout
        attempt = _Attempt(
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
        self._tasks.spawn(f"pod-start:{key}", self._enforce_pod_start(attempt))
        # Not now: the caller holds the run only after this returns.
        asyncio.get_running_loop().call_soon(self._evaluate, attempt)
        return attempt

    # Verdicts -----------------------------------------------------------------------------

    def _evaluate(self, attempt: _Attempt) -> None:
        """Compare what the caches say about the attempt with what was reported."""
        if attempt.ended:
            return
        job = self.view.job(attempt.namespace, attempt.name)
        if (
            job is not None
            and attempt.uid is not None
            and objects.uid(job) not in (None, attempt.uid)
        ):
            job = None  # an earlier Job of the same name, on its way out
        pods = self._pods_of(attempt)
        if not attempt.started and any(diagnosis.pod_started(p) for p in pods):
            attempt.started = True
            attempt.settled.set()
        if job is None:
            return
        outcome = diagnosis.job_outcome(job, pods)
        pod = diagnosis.latest_pod(pods)
        if outcome is not None:
            self._end(attempt, outcome, pod, job)
            return
        verdict = diagnosis.diagnose_pod(pod) if pod is not None else None
        if verdict is None or verdict.ends:
            return
        seen = (verdict.kind, verdict.reason)
        if seen not in attempt.reported:
            attempt.reported.add(seen)
            self._emit(attempt, verdict)

    def _pods_of(self, attempt: _Attempt) -> list[Object]:
        pods = self.view.pods_of(attempt.namespace, attempt.name)
        if attempt.uid is None:
            return pods
        # Pods of an earlier Job of the same name say nothing about this one.
        return [p for p in pods if objects.owner_uid(p) in (None, attempt.uid)]

    def _end(
        self,
        attempt: _Attempt,
        verdict: Diagnosis,
        pod: Mapping[str, Any] | None = None,
        job: Mapping[str, Any] | None = None,
    ) -> None:
        """Report the attempt's end once; failures first gather the exit code and log tail."""
        if attempt.ended:
            return
        attempt.ended = True
        attempt.settled.set()
        self._attempts.pop(attempt.key, None)
        if verdict.kind in _TAIL_KINDS:
            self._tasks.spawn(
                f"report-end:{attempt.key}", self._report_failure(attempt, verdict, pod, job)
            )
        else:
            self._emit(attempt, verdict)

    async def _report_failure(
        self,
        attempt: _Attempt,
        verdict: Diagnosis,
        pod: Mapping[str, Any] | None,
        job: Mapping[str, Any] | None,
    ) -> None:
        failed = pod is not None and (pod.get("status") or {}).get("phase") == "Failed"
        if job is not None and not failed:
            # The Job's watch ran ahead of the pods' watch: ask for the pods themselves.
            pods = await self._list_pods(attempt)
            if pods:
                verdict = diagnosis.job_outcome(job, pods) or verdict
                pod = diagnosis.latest_pod(pods)
        tail = await self._log_tail(attempt.namespace, pod) if pod is not None else ()
        self._emit(attempt, verdict, tail)

    async def _enforce_pod_start(self, attempt: _Attempt) -> None:
        remaining = (attempt.deadline - datetime.now(UTC)).total_seconds()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await attempt.settled.wait()
            return
        except TimeoutError:
            pass
        # The caches may have news the deadline raced with.
        self._evaluate(attempt)
        if attempt.ended or attempt.started:
            return
        await self._give_up(attempt)

    async def _give_up(self, attempt: _Attempt) -> None:
        """The pod did not start in time: delete the Job and report why, as an ending event."""
        attempt.ended = True
        attempt.settled.set()
        self._attempts.pop(attempt.key, None)
        pod = diagnosis.latest_pod(self._pods_of(attempt))
        verdict = diagnosis.diagnose_pod(pod) if pod is not None else None
        if verdict is None:
            verdict = Diagnosis(InfraEventKind.PENDING, "PodStartTimeout", "no pod was created")
        timeout = attempt.pod_start_timeout
        detail = f"no container started within {timeout:g} s; the Job was deleted"
        message = f"{verdict.message} ({detail})" if verdict.message else detail
        logger.warning(
            "run %s: giving up on Job %s: %s: %s",
            attempt.key,
            attempt.infrastructure_id,
            verdict.reason,
            message,
        )
        tail = await self._log_tail(attempt.namespace, pod) if pod is not None else ()
        await self._delete_quietly(Resource.JOBS, attempt.namespace, attempt.name)
        self._emit(
            attempt,
            Diagnosis(verdict.kind, verdict.reason, message, verdict.exit_code),
            tail,
            gave_up=True,
        )

    def _emit(
        self,
        attempt: _Attempt,
        verdict: Diagnosis,
        log_tail: tuple[str, ...] = (),
        *,
        gave_up: bool = False,
    ) -> None:
        if self._on_event is None:
            return
        self._on_event(
            InfraEvent(
                key=attempt.key,
                infrastructure_id=attempt.infrastructure_id,
                kind=verdict.kind,
                observe_time=datetime.now(UTC),
                reason=verdict.reason,
                message=verdict.message,
                exit_code=verdict.exit_code,
                log_tail=log_tail,
                gave_up=gave_up,
            )
        )

    # Helpers that call the API ------------------------------------------------------------

    async def _log_tail(self, namespace: str, pod: Mapping[str, Any]) -> tuple[str, ...]:
        """The last lines of the pod's engine container; empty if there are none to read."""
        name = object_name(pod)
        try:
            text = await self.client.log_tail(
                namespace, name, CONTAINER_NAME, self._settings.log_tail_lines
            )
        except KubernetesError as error:
            # A container that never started has no log (400); a deleted pod neither (404).
            logger.debug("no log tail for pod %s/%s: %s", namespace, name, error)
            return ()
        except Exception:
            # The end must be reported with or without its tail.
            logger.exception("cannot read the log tail of pod %s/%s", namespace, name)
            return ()
        return tuple(text.splitlines()[-self._settings.log_tail_lines :])

    async def _list_pods(self, attempt: _Attempt) -> list[Object]:
        selector = f"{RUN_ID_LABEL}={attempt.key.run_id},{ATTEMPT_LABEL}={attempt.key.attempt}"
        try:
            listing = await self.client.list(Resource.PODS, attempt.namespace, selector)
        except KubernetesError as error:
            logger.warning("cannot list the pods of Job %s: %s", attempt.infrastructure_id, error)
            return []
        return [
            p
            for p in listing.items
            if attempt.uid is None or objects.owner_uid(p) in (None, attempt.uid)
        ]

    async def _find_job(self, key: RunKey) -> tuple[str, str] | None:
        """Where a Job of an attempt this runtime does not track is, if it exists."""
        try:
            name = job_name(key.run_id, key.attempt)
        except ValueError:
            return None
        for namespace in self.view.namespaces:
            if self.view.job(namespace, name) is not None:
                return namespace, name
        namespace = self._settings.namespace
        if await self.client.read(Resource.JOBS, namespace, name) is not None:
            return namespace, name
        return None

    async def _wait_gone(self, namespace: str, name: str, gone: asyncio.Event) -> bool:
        """Wait until the Job is deleted: by the watch, else by reading it now and then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.cancel_timeout
        while True:
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(0.0, min(_GONE_POLL_SECONDS, remaining))):
                    await gone.wait()
                return True
            except TimeoutError:
                pass
            try:
                if await self.client.read(Resource.JOBS, namespace, name) is None:
                    return True
            except KubernetesError as error:
                logger.warning("cannot read Job %s/%s: %s", namespace, name, error)
            if loop.time() >= deadline:
                return False

    async def _delete_quietly(self, resource: Resource, namespace: str, name: str) -> None:
        try:
            await self.client.delete(resource, namespace, name)
        except KubernetesError as error:
            logger.error("cannot delete %s %s/%s: %s", resource.value, namespace, name, error)
