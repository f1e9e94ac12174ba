"""Process groups on POSIX: signal a whole group and tell when it is really gone.

An engine runs in its own session, so its process group holds the engine and everything it
started (the flow's subprocesses). Cancelling means ending all of them, not only the leader.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

__all__ = ["group_alive", "signal_group", "wait_group_gone"]

_PROC = Path("/proc")
_POLL_SECONDS = 0.05


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to every process in group ``pgid``; False if the group is empty."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running.

    Zombies do not count: a dead grandchild waits for init to reap it, which can take a
    while in a container, and it holds no resources the run cares about.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not _PROC.is_dir():
        return True
    return any(_live_member(entry, pgid) for entry in _PROC.iterdir() if entry.name.isdigit())


def _live_member(entry: Path, pgid: int) -> bool:
    try:
        stat = (entry / "stat").read_text()
    except OSError:  # the process ended while we were looking
        return False
    # The command name is in parentheses and may contain anything, so split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 3:
        return False
    state, pgrp = fields[0], fields[2]
    return pgrp == str(pgid) and state not in ("Z", "X")


async def wait_group_gone(pgid: int) -> None:
    """Return once group ``pgid`` has no live member; bound it with ``asyncio.timeout``."""
    # Scanning /proc is blocking file I/O: keep it off the event loop. There is no event
    # for "the last member of a group died" when they are not our children, so poll.
    while True:
        if not await asyncio.to_thread(group_alive, pgid):
            return
        await asyncio.sleep(_POLL_SECONDS)
