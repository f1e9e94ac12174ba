"""Reports become protobuf at the edge: every event kind, gave_up and the log tail survive."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.models import InfraEvent, InfraEventKind, RunKey, SecretEnv
from agent.reports import InfraObserved
from agent.session import _assignment_from_proto, _report_to_proto
from flowyard.v1 import agent_pb2

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("kind", list(InfraEventKind))
def test_every_kind_has_its_proto_value(kind: InfraEventKind) -> None:
    event = InfraEvent(RunKey("r", 2), "default/flowyard-r-2", kind, NOW)
    message = _report_to_proto(InfraObserved(event)).infra_event
    assert agent_pb2.InfraEventKind.Name(message.kind) == f"INFRA_EVENT_KIND_{kind.name}"


def test_an_infra_event_keeps_everything() -> None:
    event = InfraEvent(
        RunKey("r", 2),
        "default/flowyard-r-2",
        InfraEventKind.IMAGE_PULL_ERROR,
        NOW,
        reason="ImagePullBackOff",
        message='Back-off pulling image "bad/image:1"',
        log_tail=("a", "b"),
        gave_up=True,
    )
    message = _report_to_proto(InfraObserved(event))
    assert message.WhichOneof("message") == "infra_event"
    infra = message.infra_event
    assert (infra.run_id, infra.attempt) == ("r", 2)
    assert infra.reason == "ImagePullBackOff"
    assert infra.message == 'Back-off pulling image "bad/image:1"'
    assert list(infra.log_tail) == ["a", "b"]
    assert infra.gave_up
    assert infra.exit_code == 0  # none known
    assert infra.observe_time.ToDatetime(tzinfo=UTC) == NOW


def test_an_assignment_keeps_its_secret_env_and_hides_its_token() -> None:
    assignment = _assignment_from_proto(
        agent_pb2.Assign(
            run_id="r" * 32,
            attempt=1,
            engine_token="tok-123",
            secret_env=[
                agent_pb2.SecretEnv(name="REPO_TOKEN", secret_name="creds", secret_key="token")
            ],
        )
    )
    assert assignment.secret_env == (SecretEnv("REPO_TOKEN", "creds", "token"),)
    assert "tok-123" not in repr(assignment)


def test_a_huge_log_tail_is_bounded_keeping_its_last_lines() -> None:
    lines = [f"line {i}" for i in range(20_000)] + ["x" * 5_000_000, "the last words"]
    event = InfraEvent(
        RunKey("r", 1), "default/flowyard-r-1", InfraEventKind.FAILED, NOW, log_tail=tuple(lines)
    )
    message = _report_to_proto(InfraObserved(event)).infra_event
    sent = list(message.log_tail)
    assert sent[-1] == "the last words"
    assert sent[-2].startswith("x" * 4096) and sent[-2].endswith("bytes cut]")
    assert sum(len(line.encode()) for line in sent) <= 64 * 1024
    assert message.ByteSize() < 100 * 1024
    assert sent[:-2] == lines[len(lines) - len(sent) : -2]  # the newest lines, in order
