"""Cancelling tasks one owns without swallowing one's own cancellation.

The tempting ``task.cancel()`` then ``with suppress(CancelledError): await task`` cannot tell
the cancelled task's ``CancelledError`` from the caller's own: when the caller is cancelled
while it waits (a timeout around a shutdown, a client hanging up during a clean-up), it
swallows that too and goes on as if nothing had happened. :func:`cancel_and_wait` waits with
``asyncio.wait``, which never raises what the tasks ended with, so the only ``CancelledError``
that can come out of it is the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished; their outcomes are not raised.

    Raises:
        asyncio.CancelledError: only when the caller itself is cancelled meanwhile; the tasks
            are cancelled already and finish on their own.
    """
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
