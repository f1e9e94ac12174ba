"""Waiting on a condition with a deadline, for every kind of test.

A check is asked again until it answers something truthy. A check that raises is asked again
too: what it looks at may simply not be there yet (the pod a list will hold, the row a query
will find). When the deadline passes, the last error is raised again, with a note saying how
long it was tried; a check that only answered falsy fails with "timed out waiting for ...".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["eventually", "wait_for"]


def wait_for(
    condition: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception as error:
            if time.monotonic() > deadline:
                _give_up(error, timeout, what)
        else:
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    within: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Like ``wait_for`` in a coroutine; ``check`` may be a plain or a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except Exception as error:
            if loop.time() > deadline:
                _give_up(error, within, what)
        else:
            if value:
                return value  # type: ignore[return-value]
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)


def _give_up(error: Exception, timeout: float, what: str) -> None:
    error.add_note(f"(the check still raised this after {timeout} s waiting for {what})")
    raise error
