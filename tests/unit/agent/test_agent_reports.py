"""The outbox: order, removal only after a write, credits restated by a new Hello."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from agent.models import RunKey
from agent.reports import Accepted, Cancelled, CreditGranted, Outbox, Submitted

KEY = RunKey("r", 1)


def test_reports_keep_their_order_until_discarded() -> None:
    outbox = Outbox()
    first, second = Accepted(KEY, datetime.now(UTC)), Submitted(KEY, "process/h/1")
    outbox.put(first)
    outbox.put(second)
    assert outbox.first() is first
    outbox.discard(second)  # not first: a stale discard must not drop anything
    assert outbox.pending() == (first, second)
    outbox.discard(first)
    assert outbox.pending() == (second,)
    assert len(outbox) == 1


def test_take_credits_drops_grants_and_keeps_everything_else_in_order() -> None:
    outbox = Outbox()
    outbox.put(CreditGranted(1))
    outbox.put(Cancelled(KEY))
    outbox.put(CreditGranted(2))
    assert outbox.take_credits() == 3
    assert outbox.pending() == (Cancelled(KEY),)
    assert outbox.take_credits() == 0


async def test_wait_returns_when_a_report_arrives() -> None:
    outbox = Outbox()
    waiter = asyncio.create_task(outbox.wait(), name="test:wait")
    await asyncio.sleep(0)
    assert not waiter.done()
    outbox.put(Cancelled(KEY))
    assert await asyncio.wait_for(waiter, timeout=5) == Cancelled(KEY)
    # Waiting does not consume.
    assert await asyncio.wait_for(outbox.wait(), timeout=5) == Cancelled(KEY)
