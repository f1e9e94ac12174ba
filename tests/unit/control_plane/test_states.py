"""The run state rules."""

import dataclasses
from datetime import UTC, datetime

import pytest

from control_plane.models import Run
from control_plane.states import (
    TERMINAL,
    Actor,
    IllegalTransition,
    State,
    StateType,
    cancel_target,
    crash_target,
    rejection,
)
from control_plane.store.runs import Change

S = StateType


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("actor", list(Actor))
@pytest.mark.parametrize("target", list(StateType))
def test_terminal_states_are_final(terminal: StateType, actor: Actor, target: StateType) -> None:
    reason = rejection(terminal, target, actor)
    assert reason is not None
    assert "can no longer change" in reason


@pytest.mark.parametrize(
    ("current", "proposed", "actor"),
    [
        (S.SCHEDULED, S.PENDING, Actor.SERVER),
        (S.PENDING, S.RUNNING, Actor.ENGINE),
        (S.PENDING, S.FAILED, Actor.ENGINE),
        (S.RUNNING, S.COMPLETED, Actor.ENGINE),
        (S.RUNNING, S.FAILED, Actor.ENGINE),
        (S.RUNNING, S.CRASHED, Actor.AGENT),
        (S.PENDING, S.SCHEDULED, Actor.SERVER),
        (S.SCHEDULED, S.CANCELLED, Actor.USER),
        (S.RUNNING, S.CANCELLING, Actor.USER),
        (S.CANCELLING, S.CANCELLED, Actor.ENGINE),
        (S.CANCELLING, S.CANCELLED, Actor.AGENT),
        (S.CANCELLING, S.COMPLETED, Actor.ENGINE),
    ],
)
def test_allowed_transitions(current: StateType, proposed: StateType, actor: Actor) -> None:
    assert rejection(current, proposed, actor) is None


@pytest.mark.parametrize(
    ("current", "proposed", "actor"),
    [
        # Only the engine of the run may say it runs or finished.
        (S.PENDING, S.RUNNING, Actor.AGENT),
        (S.PENDING, S.RUNNING, Actor.USER),
        (S.RUNNING, S.COMPLETED, Actor.AGENT),
        # The engine cannot go back or skip ahead.
        (S.SCHEDULED, S.RUNNING, Actor.ENGINE),
        (S.RUNNING, S.PENDING, Actor.ENGINE),
        (S.RUNNING, S.RUNNING, Actor.ENGINE),
        # The engine cannot cancel a run nobody asked to cancel.
        (S.RUNNING, S.CANCELLED, Actor.ENGINE),
        # A user cancels through CANCELLING once infrastructure may exist.
        (S.RUNNING, S.CANCELLED, Actor.USER),
        (S.CANCELLING, S.RUNNING, Actor.ENGINE),
    ],
)
def test_rejected_transitions_say_why(
    current: StateType, proposed: StateType, actor: Actor
) -> None:
    reason = rejection(current, proposed, actor)
    assert reason is not None
    assert current.value in reason and proposed.value in reason


def test_cancel_skips_cancelling_without_infrastructure() -> None:
    assert cancel_target(S.SCHEDULED, has_infrastructure=False) is S.CANCELLED
    assert cancel_target(S.SCHEDULED, has_infrastructure=True) is S.CANCELLED
    assert cancel_target(S.PENDING, has_infrastructure=False) is S.CANCELLED
    assert cancel_target(S.PENDING, has_infrastructure=True) is S.CANCELLING
    assert cancel_target(S.RUNNING, has_infrastructure=True) is S.CANCELLING


def test_infrastructure_ending_while_cancelling_is_a_cancel_not_a_crash() -> None:
    assert crash_target(S.RUNNING) is S.CRASHED
    assert crash_target(S.PENDING) is S.CRASHED
    assert crash_target(S.CANCELLING) is S.CANCELLED


@pytest.mark.parametrize(
    ("current", "proposed"),
    [
        # The server never says how a flow ended, nor starts one: only the engine does.
        (S.RUNNING, S.COMPLETED),
        (S.PENDING, S.RUNNING),
        (S.SCHEDULED, S.RUNNING),
        # A cancel is the user's to ask for.
        (S.RUNNING, S.CANCELLING),
    ],
)
def test_the_servers_own_changes_follow_the_table_too(
    current: StateType, proposed: StateType
) -> None:
    assert rejection(current, proposed, Actor.SERVER) is not None


def _run(state: StateType) -> Run:
    now = datetime.now(UTC)
    return Run(
        **{
            field.name: None
            for field in dataclasses.fields(Run)
            if field.default is dataclasses.MISSING
        }
        | {"id": "0" * 32, "state_type": state, "state_time": now, "version": 1, "attempt": 1}
    )


def test_a_state_change_the_table_forbids_is_refused_before_it_is_stored() -> None:
    with pytest.raises(
        IllegalTransition, match="server cannot move a run from RUNNING to COMPLETED"
    ):
        Change(_run(S.RUNNING), State(S.COMPLETED), actor=Actor.SERVER)
    with pytest.raises(IllegalTransition, match="already COMPLETED"):
        Change(_run(S.COMPLETED), State(S.SCHEDULED), actor=Actor.SERVER)
    # What the dispatcher does is allowed.
    Change(_run(S.SCHEDULED), State(S.PENDING, "Assigned"), actor=Actor.SERVER)
