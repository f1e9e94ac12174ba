"""The attempt rules: when an engine token's attempt is over, and how `runs show` counts."""

from __future__ import annotations

from control_plane.cli.runs import attempt_text
from control_plane.orchestration.attempts import ended_at
from control_plane.states import StateType
from flowyard.v1 import types_pb2

RUN = "a" * 32


def test_the_current_attempt_of_an_unfinished_run_may_report() -> None:
    for state in (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING):
        assert ended_at(RUN, 2, 2, state) is None


def test_an_attempt_handed_back_or_retried_is_over() -> None:
    why = ended_at(RUN, 1, 2, StateType.SCHEDULED)
    assert why is not None
    assert f"run {RUN} attempt 1 is over (the run is on attempt 2)" in why
    assert "engine token expired" in why


def test_every_terminal_state_ends_the_attempt() -> None:
    for state in (t for t in StateType if t.is_terminal):
        why = ended_at(RUN, 3, 3, state)
        assert why is not None and f"has ended ({state.value})" in why


def test_runs_show_counts_failed_attempts_as_retries_not_hand_backs() -> None:
    scheduled, failed = types_pb2.STATE_TYPE_SCHEDULED, types_pb2.STATE_TYPE_FAILED
    run = types_pb2.FlowRun(attempt=3, max_retries=2)
    history = [
        types_pb2.RunState(attempt=1, type=scheduled, message="Handed back: agent a did not …"),
        types_pb2.RunState(attempt=2, type=failed, message="boom"),
        types_pb2.RunState(attempt=3, type=scheduled),
    ]
    assert attempt_text(run, history) == "3 (retries used: 1 of 2)"
