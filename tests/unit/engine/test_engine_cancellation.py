"""Cancellation: FlowCancelled raised in the main thread, only while the flow runs."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from engine.cancellation import TERMINATION_SIGNALS, Cancellation
from engine.errors import FlowCancelled


@pytest.fixture
def cancellation() -> Iterator[Cancellation]:
    previous = {signum: signal.getsignal(signum) for signum in TERMINATION_SIGNALS}
    cancellation = Cancellation()
    cancellation.install()
    yield cancellation
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_a_request_from_another_thread_interrupts_a_sleep(cancellation: Cancellation) -> None:
    timer = threading.Timer(0.05, cancellation.request, args=("stop now",))
    slept = False
    timer.start()
    try:
        with pytest.raises(FlowCancelled, match="stop now"), cancellation.armed():
            time.sleep(30)
            slept = True
    finally:
        timer.cancel()
    assert not slept, "the request waited for the sleep to end instead of interrupting it"


def test_a_request_before_arming_raises_on_arming(cancellation: Cancellation) -> None:
    cancellation.request("early")
    with pytest.raises(FlowCancelled, match="early"), cancellation.armed():
        pytest.fail("the flow must not start")


def test_outside_the_armed_window_a_signal_is_only_recorded(cancellation: Cancellation) -> None:
    signal.raise_signal(signal.SIGTERM)
    assert cancellation.requested == "received SIGTERM"
    with pytest.raises(FlowCancelled):
        cancellation.check()


def test_an_async_flow_is_interrupted_too(cancellation: Cancellation) -> None:
    async def flow() -> None:
        await asyncio.sleep(30)

    timer = threading.Timer(0.05, cancellation.request, args=("stop async",))
    timer.start()
    try:
        with pytest.raises(FlowCancelled, match="stop async"), cancellation.armed():
            asyncio.run(flow())
    finally:
        timer.cancel()
