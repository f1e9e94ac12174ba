"""One identity per attempt: what ends an attempt, and what its engine is told then.

An attempt is one claim of a run. The dispatcher's claim mints the attempt's engine token
(``run-<id>-<attempt>.<secret>``); the agent holds the attempt under the key (run, attempt);
the engine reports with the token. All three agree because an attempt is never claimed twice:

- a hand-back (an assignment whose lease ran out, or whose agent left before accepting it)
  ends the attempt and puts the run back in the queue as the *next* attempt (:func:`hand_back`),
  so an engine started from the old assignment is refused, and the agent sees the next claim
  as a new key and starts it, instead of taking it for a repeat of the one it holds;
- a FAILED attempt with retries left becomes the next attempt too (:func:`retry`);
- a terminal state ends the attempt for good.

:func:`ended` is the one rule that decides whether an engine token still counts. The token
check of every ``EngineService`` call, the store of every log batch and the watcher of every
open engine stream go through it, so an engine whose attempt is over is refused everywhere
the same way, with the same words.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import Run
from control_plane.orchestration import clock
from control_plane.states import AWAITING_RETRY, Actor, State, StateType
from control_plane.store import catalog as catalog_repo
from control_plane.store import runs as repo

#: The sub-state of the first row of an attempt that follows a hand-back.
SCHEDULED = "Scheduled"


def ended(run: Run, attempt: int) -> str | None:
    """Why the engine of ``attempt`` may no longer report for ``run``; None while it may.

    The answer is meant for a person reading the engine's output: it says what happened
    and that the engine has nothing more to do.
    """
    return ended_at(run.id, attempt, run.attempt, run.state_type)


def ended_at(run_id: str, attempt: int, current: int, state: StateType) -> str | None:
    """:func:`ended` for a run read as just its current attempt and state (the hot path)."""
    if current != attempt:
        return (
            f"run {run_id} attempt {attempt} is over (the run is on attempt {current}): "
            "its engine token expired with it; this engine should stop, the current attempt "
            "has an engine of its own"
        )
    if state.is_terminal:
        return (
            f"run {run_id} attempt {attempt} has ended ({state.value}): its engine "
            "token expired with it; nothing more is accepted from this engine"
        )
    return None


async def hand_back(conn: AsyncConnection, run: Run, why: str) -> Run | None:
    """End a claimed, unsubmitted attempt and put the run back in the queue as the next one.

    The old attempt's end is recorded in its own history row, so ``runs show`` lists it as
    an attempt of its own and the retry count is untouched (a hand-back is not a failure).
    Claim, lease and engine token are cleared: the dispatcher mints the next attempt's.
    """
    now = clock.now()
    await repo.record_history(
        conn, run.id, run.attempt, State(StateType.SCHEDULED, SCHEDULED, f"Handed back: {why}"), now
    )
    return await repo.compare_and_set(
        conn,
        run,
        State(
            StateType.SCHEDULED,
            SCHEDULED,
            f"Back in the queue as attempt {run.attempt + 1}: attempt {run.attempt} was "
            f"handed back ({why})",
        ),
        actor=Actor.SERVER,
        now=now,
        attempt=run.attempt + 1,
        agent_session_id=None,
        agent_name="",
        lease_deadline=None,
        engine_token_hash=None,
        assigned_at=None,
        accepted_at=None,
        infrastructure_id="",
        last_heartbeat_at=None,
    )


async def retry(
    conn: AsyncConnection, run: Run, failed: State, transition_id: str, number: int
) -> Run | None:
    """A FAILED attempt with retries left: record its end (``failed``, as the engine proposed
    it), then SCHEDULED/AwaitingRetry as the next attempt at now + the deployment's retry
    delay; this is retry ``number``.

    Retries count failed attempts, not attempts: an attempt that was handed back (its
    agent never confirmed it) ended without the flow failing, and takes no retry.

    The new attempt has no claim, no infrastructure and no engine token: the failed
    attempt's token stops working, and the dispatcher mints a new one when it assigns the
    next attempt (whose Kubernetes Job gets a new name, derived from the attempt).
    """
    now = clock.now()
    deployment = await catalog_repo.get_deployment(conn, id=run.deployment_id)
    delay = deployment.scheduling.retry_delay_seconds if deployment else 0
    due = now + timedelta(seconds=delay)
    await repo.record_history(conn, run.id, run.attempt, failed, now)
    first_line = failed.message.strip().splitlines()[0] if failed.message.strip() else ""
    message = (
        f"Attempt {run.attempt} failed{': ' + first_line[:500] if first_line else ''}; "
        f"retry {number} of {run.max_retries} at {due.isoformat(timespec='seconds')}"
    )
    return await repo.compare_and_set(
        conn,
        run,
        State(StateType.SCHEDULED, AWAITING_RETRY, message),
        actor=Actor.SERVER,
        now=now,
        transition_id=transition_id or None,
        attempt=run.attempt + 1,
        scheduled_at=due,
        agent_session_id=None,
        agent_name="",
        lease_deadline=None,
        engine_token_hash=None,
        assigned_at=None,
        accepted_at=None,
        started_at=None,
        ended_at=None,
        last_heartbeat_at=None,
        infrastructure_id="",
        source_revision="",
    )
