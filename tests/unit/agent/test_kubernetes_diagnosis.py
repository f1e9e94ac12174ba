"""Pod and Job dicts, as the API serves them, to verdicts: pure functions, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from agent.kubernetes.diagnosis import (
    Diagnosis,
    diagnose_pod,
    job_deleted,
    job_finished,
    job_outcome,
    latest_pod,
    pod_started,
    pull_error_is_final,
)
from agent.models import InfraEventKind as Kind

Object = dict[str, Any]


def pod(phase: str = "Pending", *containers: Object, **status: Any) -> Object:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2030-01-01T00:00:00Z"},
        "status": {"phase": phase, "containerStatuses": list(containers), **status},
    }


def container(state: Object, last: Object | None = None, name: str = "flowyard") -> Object:
    return {"name": name, "state": state, "lastState": last or {}}


def waiting(reason: str, message: str = "") -> Object:
    return container({"waiting": {"reason": reason, "message": message}})


def terminated(exit_code: int, reason: str = "Error", message: str = "") -> Object:
    return container({"terminated": {"exitCode": exit_code, "reason": reason, "message": message}})


def job(*conditions: tuple[str, str, str], backoff_limit: int | None = 0) -> Object:
    spec: Object = {} if backoff_limit is None else {"backoffLimit": backoff_limit}
    return {
        "metadata": {"name": "flowyard-r-1"},
        "spec": spec,
        "status": {
            "conditions": [
                {"type": kind, "status": "True", "reason": reason, "message": message}
                for kind, reason, message in conditions
            ]
        },
    }


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 Insufficient cpu.",
}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            pod("Pending", waiting("ErrImagePull", 'pulling image "bad/image:1": not found')),
            Diagnosis(
                Kind.IMAGE_PULL_ERROR, "ErrImagePull", 'pulling image "bad/image:1": not found'
            ),
        ),
        (
            pod("Pending", waiting("ImagePullBackOff", 'Back-off pulling image "bad/image:1"')),
            Diagnosis(
                Kind.IMAGE_PULL_ERROR, "ImagePullBackOff", 'Back-off pulling image "bad/image:1"'
            ),
        ),
        (
            pod("Pending", waiting("InvalidImageName", "couldn't parse image")),
            Diagnosis(Kind.IMAGE_PULL_ERROR, "InvalidImageName", "couldn't parse image"),
        ),
        (
            pod("Pending", waiting("CreateContainerConfigError", 'secret "s" not found')),
            Diagnosis(Kind.PENDING, "CreateContainerConfigError", 'secret "s" not found'),
        ),
        (
            pod("Pending", conditions=[UNSCHEDULABLE]),
            Diagnosis(Kind.UNSCHEDULABLE, "Unschedulable", UNSCHEDULABLE["message"]),
        ),
        (
            pod("Pending"),
            Diagnosis(Kind.PENDING, "Pending", "the pod is waiting to be scheduled"),
        ),
        (
            pod("Pending", waiting("ContainerCreating")),
            Diagnosis(Kind.PENDING, "Pending", "the pod is pending (ContainerCreating)"),
        ),
        (pod("Running", container({"running": {}})), None),
        (
            pod("Succeeded", terminated(0, "Completed")),
            Diagnosis(Kind.SUCCEEDED, "Completed", "", 0),
        ),
        (
            pod("Failed", terminated(3, "Error", "boom")),
            Diagnosis(Kind.FAILED, "Error", "boom", 3),
        ),
        (
            pod("Failed", terminated(137, "OOMKilled")),
            Diagnosis(
                Kind.OOM_KILLED,
                "OOMKilled",
                "container flowyard was killed for exceeding its memory limit",
                137,
            ),
        ),
        (
            pod("Failed", reason="Evicted", message="The node was low on resource: memory."),
            Diagnosis(Kind.EVICTED, "Evicted", "The node was low on resource: memory."),
        ),
        (
            pod(
                "Running",
                container(
                    {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    last={"terminated": {"exitCode": 2, "reason": "Error"}},
                ),
            ),
            Diagnosis(Kind.CRASH_LOOP, "CrashLoopBackOff", "back-off 10s", 2),
        ),
    ],
)
def test_diagnose_pod(status: Object, expected: Diagnosis | None) -> None:
    assert diagnose_pod(status) == expected


def test_eviction_wins_over_the_killed_container() -> None:
    evicted = pod("Failed", terminated(137, "Error"), reason="Evicted", message="low memory")
    assert diagnose_pod(evicted) == Diagnosis(Kind.EVICTED, "Evicted", "low memory")


def test_ending_kinds() -> None:
    assert Diagnosis(Kind.OOM_KILLED, "OOMKilled").ends
    assert Diagnosis(Kind.DELETED, "Deleted").ends
    assert not Diagnosis(Kind.IMAGE_PULL_ERROR, "ErrImagePull").ends
    assert not Diagnosis(Kind.CRASH_LOOP, "CrashLoopBackOff").ends


@pytest.mark.parametrize(
    ("status", "started"),
    [
        (pod("Pending"), False),
        (pod("Pending", waiting("ImagePullBackOff")), False),
        (pod("Failed", reason="Evicted"), False),
        (pod("Running", container({"running": {"startedAt": "x"}})), True),
        (pod("Failed", terminated(1)), True),
        (
            pod(
                "Running",
                container(
                    {"waiting": {"reason": "CrashLoopBackOff"}},
                    last={"terminated": {"exitCode": 1}},
                ),
            ),
            True,
        ),
    ],
)
def test_pod_started(status: Object, started: bool) -> None:
    assert pod_started(status) is started


def test_a_running_job_has_no_outcome() -> None:
    assert job_outcome(job(), [pod("Running", container({"running": {}}))]) is None
    assert not job_finished(job())


def test_complete_job_succeeded() -> None:
    complete = job(("SuccessCriteriaMet", "CompletionsReached", ""), ("Complete", "", ""))
    assert job_outcome(complete, []) == Diagnosis(Kind.SUCCEEDED, "Completed", "", 0)
    assert job_finished(complete)


def test_failed_job_carries_the_containers_exit_code() -> None:
    failed = job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    assert job_finished(failed)
    assert job_outcome(failed, [pod("Failed", terminated(3, "Error"))]) == Diagnosis(
        Kind.FAILED, "Error", "Job has reached the specified backoff limit", 3
    )


def test_failed_job_of_an_oom_killed_or_evicted_pod_says_so() -> None:
    failed = job(("Failed", "BackoffLimitExceeded", ""))
    oom = job_outcome(failed, [pod("Failed", terminated(137, "OOMKilled"))])
    assert oom is not None and oom.kind is Kind.OOM_KILLED and oom.exit_code == 137
    evicted = job_outcome(failed, [pod("Failed", reason="Evicted", message="low memory")])
    assert evicted == Diagnosis(Kind.EVICTED, "Evicted", "low memory")


def test_failure_target_counts_as_failed() -> None:
    failing = job(("FailureTarget", "DeadlineExceeded", "Job was active longer than allowed"))
    outcome = job_outcome(failing, [pod("Running", container({"running": {}}))])
    assert outcome == Diagnosis(
        Kind.FAILED, "DeadlineExceeded", "Job was active longer than allowed"
    )


def test_a_job_without_retries_ends_when_its_pod_fails() -> None:
    # No Failed condition yet: with backoffLimit 0 the pod's failure is the Job's.
    outcome = job_outcome(job(backoff_limit=0), [pod("Failed", terminated(1))])
    assert outcome is not None and outcome.kind is Kind.FAILED and outcome.exit_code == 1
    # With retries left (or the default of 6) the Job controller decides.
    assert job_outcome(job(backoff_limit=2), [pod("Failed", terminated(1))]) is None
    assert job_outcome(job(backoff_limit=None), [pod("Failed", terminated(1))]) is None


def test_latest_pod_is_the_newest() -> None:
    old = {"metadata": {"name": "a", "creationTimestamp": "2030-01-01T00:00:00Z"}}
    new = {"metadata": {"name": "b", "creationTimestamp": "2030-01-01T00:00:05Z"}}
    assert latest_pod([new, old]) is new
    assert latest_pod([]) is None


def test_job_deleted() -> None:
    assert job_deleted(job(), by_agent=False) == Diagnosis(
        Kind.DELETED, "Deleted", "the Job flowyard-r-1 was deleted by someone else"
    )
    assert "by the agent" in job_deleted(job(), by_agent=True).message


# Pull errors as kubelets with containerd, CRI-O and Docker word them.
NOT_FOUND = (
    'rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/library/nginx:'
    'nope": failed to resolve reference "docker.io/library/nginx:nope": docker.io/library/'
    "nginx:nope: not found"
)
NO_REPOSITORY = (
    'failed to pull and unpack image "docker.io/nobody/nothing:1": failed to resolve reference '
    '"docker.io/nobody/nothing:1": pull access denied, repository does not exist or may require '
    "authorization: server message: insufficient_scope: authorization failed"
)
DOCKERD_MANIFEST = (
    "Error response from daemon: manifest for nginx:nope not found: manifest unknown: "
    "manifest unknown"
)
CRIO_NAME_UNKNOWN = (
    "reading manifest 1 in quay.io/team/nothing: name unknown: repository name not known to "
    "registry"
)
TIMEOUT = (
    'failed to pull and unpack image "registry.example.com/flows:1": failed to resolve '
    'reference "registry.example.com/flows:1": failed to do request: Head "https://registry.'
    'example.com/v2/flows/manifests/1": dial tcp 10.0.0.7:443: i/o timeout'
)
RATE_LIMITED = (
    'failed to resolve reference "docker.io/library/nginx:1": unexpected status from HEAD '
    "request to https://registry-1.docker.io/v2/library/nginx/manifests/1: 429 Too Many "
    "Requests - Server message: toomanyrequests: You have reached your pull rate limit"
)
UNAUTHORIZED = (
    'failed to resolve reference "ghcr.io/team/flows:1": failed to authorize: failed to fetch '
    "anonymous token: unexpected status from GET request to https://ghcr.io/token: 401 "
    "Unauthorized"
)
# A registry that is down answers "not found" for its token endpoint now and then: the
# timeout in the same message says it may heal.
MIXED = f"{TIMEOUT}; token endpoint not found"


@pytest.mark.parametrize(
    ("reason", "message", "final"),
    [
        ("ErrImagePull", NOT_FOUND, True),
        ("ErrImagePull", NO_REPOSITORY, True),
        ("ErrImagePull", DOCKERD_MANIFEST, True),
        ("ErrImagePull", CRIO_NAME_UNKNOWN, True),
        # The back-off's own message says nothing; one that quotes the pull error counts.
        ("ImagePullBackOff", 'Back-off pulling image "nginx:nope"', False),
        (
            "ImagePullBackOff",
            f'Back-off pulling image "nginx:nope": ErrImagePull: {NOT_FOUND}',
            True,
        ),
        (
            "InvalidImageName",
            'couldn\'t parse image name "Bad Image": invalid reference format',
            True,
        ),
        ("ErrImagePull", TIMEOUT, False),
        ("ErrImagePull", RATE_LIMITED, False),
        ("ErrImagePull", UNAUTHORIZED, False),
        ("ErrImagePull", MIXED, False),
        (
            "ErrImageNeverPull",
            'Container image "x:1" is not present with pull policy of Never',
            False,
        ),
    ],
)
def test_only_pull_errors_that_cannot_heal_are_final(
    reason: str, message: str, final: bool
) -> None:
    verdict = diagnose_pod(pod("Pending", waiting(reason, message)))
    assert verdict is not None and verdict.kind is Kind.IMAGE_PULL_ERROR
    assert pull_error_is_final(verdict) is final


def test_a_pull_error_names_the_image_when_its_message_does_not() -> None:
    status = {**waiting("ImagePullBackOff", "Back-off pulling image"), "image": "team/flows:1"}
    verdict = diagnose_pod(pod("Pending", status))
    assert verdict is not None
    assert verdict.message == 'image "team/flows:1": Back-off pulling image'
