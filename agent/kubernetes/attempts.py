"""What the Kubernetes runtime knows of each attempt, and the events it reports about it.

The runtime's watches (:mod:`agent.kubernetes.view`) call :meth:`AttemptReports.evaluate`
whenever an attempt's Job or pods change. It compares what the caches say, through the pure
functions of :mod:`agent.kubernetes.diagnosis`, with what was already reported: each new
diagnosis is reported once as a non-ending event, and the attempt's end once, with the exit
code and the pod's log tail for failures. A pod that does not start before the attempt's
deadline makes it give up: the Job is deleted and the end is reported with ``gave_up``.

An image pull error that cannot heal (:func:`~agent.kubernetes.diagnosis.pull_error_is_final`:
no such image or tag, a name that does not parse) brings the deadline forward to
``unpullable_image_grace`` after it was first seen: waiting out the whole pod-start timeout
(300 s by default) would only delay the same answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import metrics
from agent.errors import KubernetesError
from agent.kubernetes import diagnosis, objects
from agent.kubernetes.cleanup import delete_quietly
from agent.kubernetes.client import KubeClient, Resource
from agent.kubernetes.diagnosis import Diagnosis
from agent.kubernetes.naming import ATTEMPT_LABEL, CONTAINER_NAME, RUN_ID_LABEL
from agent.kubernetes.objects import object_name
from agent.kubernetes.view import ClusterView
from agent.models import EventCallback, InfraEvent, InfraEventKind, RunKey
from agent.settings import KubernetesSettings
from agent.tasks import TaskSet

__all__ = ["Attempt", "AttemptReports"]

logger = logging.getLogger("agent.runtimes.kubernetes")

Object = dict[str, Any]

# Kinds whose end is worth the pod's log tail.
_TAIL_KINDS = frozenset({InfraEventKind.FAILED, InfraEventKind.OOM_KILLED, InfraEventKind.EVICTED})


@dataclass(eq=False)
class Attempt:
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
    # The first pull error that cannot heal; set, it is what the attempt gives up with.
    final_pull_error: Diagnosis | None = None
    # Whether that error brought the deadline forward.
    cut_short: bool = False
    cancelling: bool = False
    reported: set[tuple[InfraEventKind, str]] = field(default_factory=set)
    # Set once started or ended: the pod-start deadline no longer applies.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def infrastructure_id(self) -> str:
        """``namespace/name`` of the attempt's Job."""
        return f"{self.namespace}/{self.name}"


class AttemptReports:
    """Reports the events of the attempts in ``attempts`` (shared with the runtime)."""

    def __init__(
        self,
        *,
        client: KubeClient,
        view: ClusterView,
        settings: KubernetesSettings,
        tasks: TaskSet,
        attempts: dict[RunKey, Attempt],
        on_event: EventCallback,
    ) -> None:
        self._client = client
        self._view = view
        self._settings = settings
        self._tasks = tasks
        self._attempts = attempts
        self._on_event = on_event

    def evaluate(self, attempt: Attempt) -> None:
        """Compare what the caches say about the attempt with what was reported."""
        if attempt.ended:
            return
        job = self._view.job(attempt.namespace, attempt.name)
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
            self.end(attempt, outcome, pod, job)
            return
        verdict = diagnosis.diagnose_pod(pod) if pod is not None else None
        if verdict is None or verdict.ends:
            return
        if attempt.final_pull_error is None and diagnosis.pull_error_is_final(verdict):
            self._bring_deadline_forward(attempt, verdict)
        seen = (verdict.kind, verdict.reason)
        if seen not in attempt.reported:
            attempt.reported.add(seen)
            self._emit(attempt, verdict)

    def _bring_deadline_forward(self, attempt: Attempt, verdict: Diagnosis) -> None:
        attempt.final_pull_error = verdict
        grace = self._settings.unpullable_image_grace
        deadline = datetime.now(UTC) + timedelta(seconds=grace)
        if deadline < attempt.deadline:
            attempt.deadline = deadline
            attempt.cut_short = True
            # The task enforcing the old deadline ends when this one settles the attempt.
            self._tasks.spawn(f"pod-start-early:{attempt.key}", self.enforce_pod_start(attempt))
        logger.warning(
            "run %s: %s: %s; it will not heal, giving up on Job %s in %g s",
            attempt.key,
            verdict.reason,
            verdict.message,
            attempt.infrastructure_id,
            (attempt.deadline - datetime.now(UTC)).total_seconds(),
        )

    def _pods_of(self, attempt: Attempt) -> list[Object]:
        pods = self._view.pods_of(attempt.namespace, attempt.name)
        if attempt.uid is None:
            return pods
        # Pods of an earlier Job of the same name say nothing about this one.
        return [p for p in pods if objects.owner_uid(p) in (None, attempt.uid)]

    def end(
        self,
        attempt: Attempt,
        verdict: Diagnosis,
        pod: Mapping[str, Any] | None = None,
        job: Mapping[str, Any] | None = None,
    ) -> None:
        """Report the attempt's end once; failures first gather the exit code and log tail."""
        if attempt.ended:
            return
        if attempt.cancelling and verdict.kind is not InfraEventKind.DELETED:
            # The agent is tearing this attempt down: a container that exits now (143 after
            # SIGTERM) shows the cancel taking effect, not the flow failing.
            verdict = diagnosis.job_deleted({"metadata": {"name": attempt.name}}, by_agent=True)
            pod = job = None
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
        attempt: Attempt,
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

    async def enforce_pod_start(self, attempt: Attempt) -> None:
        """Give up on the attempt if no container started by its deadline."""
        remaining = (attempt.deadline - datetime.now(UTC)).total_seconds()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await attempt.settled.wait()
            return
        except TimeoutError:
            pass
        # The caches may have news the deadline raced with.
        self.evaluate(attempt)
        if attempt.ended or attempt.started:
            return
        await self._give_up(attempt)

    async def _give_up(self, attempt: Attempt) -> None:
        """The pod did not start in time: delete the Job and report why, as an ending event."""
        attempt.ended = True
        attempt.settled.set()
        self._attempts.pop(attempt.key, None)
        pod = diagnosis.latest_pod(self._pods_of(attempt))
        verdict = diagnosis.diagnose_pod(pod) if pod is not None else None
        if attempt.final_pull_error is not None:
            # Its own words ("not found"), not the back-off that may be showing now.
            verdict = attempt.final_pull_error
        if attempt.cut_short:
            detail = (
                "an image pull error that retrying cannot fix; the Job was deleted "
                f"{self._settings.unpullable_image_grace:g} s after it was first seen"
            )
        else:
            timeout = attempt.pod_start_timeout
            detail = f"no container started within {timeout:g} s; the Job was deleted"
        if verdict is None:
            verdict = Diagnosis(InfraEventKind.PENDING, "PodStartTimeout", "no pod was created")
        message = f"{verdict.message} ({detail})" if verdict.message else detail
        logger.warning(
            "run %s: giving up on Job %s: %s: %s",
            attempt.key,
            attempt.infrastructure_id,
            verdict.reason,
            message,
        )
        tail = await self._log_tail(attempt.namespace, pod) if pod is not None else ()
        await delete_quietly(self._client, Resource.JOBS, attempt.namespace, attempt.name)
        self._emit(
            attempt,
            Diagnosis(verdict.kind, verdict.reason, message, verdict.exit_code),
            tail,
            gave_up=True,
        )

    def _emit(
        self,
        attempt: Attempt,
        verdict: Diagnosis,
        log_tail: tuple[str, ...] = (),
        *,
        gave_up: bool = False,
    ) -> None:
        metrics.DIAGNOSES.labels(verdict.kind.name, verdict.reason).inc()
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
            text = await self._client.log_tail(
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

    async def _list_pods(self, attempt: Attempt) -> list[Object]:
        selector = f"{RUN_ID_LABEL}={attempt.key.run_id},{ATTEMPT_LABEL}={attempt.key.attempt}"
        try:
            listing = await self._client.list(Resource.PODS, attempt.namespace, selector)
        except KubernetesError as error:
            logger.warning("cannot list the pods of Job %s: %s", attempt.infrastructure_id, error)
            return []
        return [
            p
            for p in listing.items
            if attempt.uid is None or objects.owner_uid(p) in (None, attempt.uid)
        ]
