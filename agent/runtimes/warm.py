"""Warm engines: engine processes started ahead of their runs, each handed one run.

Starting an engine costs an interpreter and its imports (gRPC, protobuf, the engine), most of
the time between an assignment and the flow's first line. The process runtime keeps a few
engines started with ``<engine-command> standby``: imports done, waiting on stdin. A run is
handed to one as a JSON line (run id, working directory, the run's whole environment); the
engine takes those on and goes on as ``execute`` would. Each is its own session and process
group from the start, serves one run and exits, so isolation is a cold start's: one process
per run, never reused, killed as a group on cancel.

The default is to fork engines from one warm interpreter instead (``agent.runtimes.forked``),
which saves the interpreter's start in CPU as well as in latency; standbys remain for an
engine command that cannot fork (``--engine-start warm``).

What a standby cannot take on after it started: what the interpreter reads from its
environment at start (``PYTHON*``, ``LANG``/``LC_*``, gRPC core's ``GRPC_*``). A run whose
environment differs from the standby's in one of those is started cold instead
(``compatible``).

A standby that exits before it is handed a run (a broken engine command, say) is logged;
after ``MAX_FAILURES`` in a row the runtime stops keeping engines warm and starts every run
cold, saying so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.runtimes.output import read_tail
from agent.runtimes.pgroup import signal_group
from agent.tasks import TaskSet

__all__ = ["MAX_FAILURES", "Standby", "WarmEngines", "compatible"]

logger = logging.getLogger(__name__)

#: Standbys in a row that exit before their run, after which every run starts cold.
MAX_FAILURES = 3
#: Variables read when the interpreter (or gRPC core) starts, which a standby cannot take on.
STARTUP_VARIABLES = ("PYTHON", "LANG", "LC_", "GRPC_")


def compatible(standby_env: Mapping[str, str], run_env: Mapping[str, str]) -> bool:
    """Whether a run with ``run_env`` can go to a standby started with ``standby_env``."""
    changed = {
        name
        for name in standby_env.keys() | run_env.keys()
        if standby_env.get(name) != run_env.get(name)
    }
    return not any(name.startswith(STARTUP_VARIABLES) for name in changed)


@dataclass(eq=False)
class Standby:
    """One engine started ahead of its run."""

    process: asyncio.subprocess.Process
    log_path: Path
    taken: bool = False

    async def hand_over(self, run_id: str, cwd: Path, env: Mapping[str, str], log: Path) -> bool:
        """Give the engine its run; False if it could not take it (it is stopped: start the
        run cold instead)."""
        stdin = self.process.stdin
        if stdin is None or self.process.returncode is not None:
            return False
        line = json.dumps({"run_id": run_id, "cwd": str(cwd), "env": dict(env)}) + "\n"
        try:
            # Renamed, not copied: the engine keeps writing to the file it holds open.
            os.replace(self.log_path, log)
            stdin.write(line.encode())
            await stdin.drain()
            stdin.close()
        except (OSError, ConnectionError) as error:
            logger.warning(
                "warm engine %d could not take run %s: %s", self.process.pid, run_id, error
            )
            # Taken, so nobody else would stop it.
            signal_group(self.process.pid, signal.SIGKILL)
            return False
        return True


class WarmEngines:
    """Keeps ``size`` standby engines ready, started with ``command`` in ``work_dir``."""

    def __init__(
        self,
        command: tuple[str, ...],
        work_dir: Path,
        size: int,
        env: Mapping[str, str],
        tasks: TaskSet,
    ) -> None:
        self.env = dict(env)
        self._command = command
        self._work_dir = work_dir
        self._size = size
        self._tasks = tasks
        self._ready: list[Standby] = []
        self._wanted = asyncio.Event()
        self._failures = 0
        self._numbers = itertools.count(1)
        self._stopped = False

    def start(self) -> None:
        """Start filling the pool in the background."""
        self._wanted.set()
        self._tasks.spawn("warm-engines", self._keep_warm())

    def take(self) -> Standby | None:
        """A ready standby for a run (the pool refills behind it), or None."""
        while self._ready:
            standby = self._ready.pop(0)
            if standby.process.returncode is None:
                standby.taken = True
                self._wanted.set()
                return standby
        self._wanted.set()
        return None

    def handed_over(self) -> None:
        """A standby took its run: whatever failed before, engines start again."""
        self._failures = 0

    async def close(self) -> None:
        """Stop every standby that has no run (those with one are runs like any other)."""
        self._stopped = True
        ready, self._ready = self._ready, []
        for standby in ready:
            signal_group(standby.process.pid, signal.SIGKILL)
        for standby in ready:
            with contextlib.suppress(ProcessLookupError):
                await standby.process.wait()
            with contextlib.suppress(OSError):
                standby.log_path.unlink()

    async def _keep_warm(self) -> None:
        while not self._stopped:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self._size and self._failures < MAX_FAILURES:
                standby = await self._start_one()
                if standby is None:
                    return
                if self._stopped:
                    # Closed while it started: stop it like the others.
                    signal_group(standby.process.pid, signal.SIGKILL)
                    return
                self._ready.append(standby)
                self._tasks.spawn(f"standby:{standby.process.pid}", self._watch(standby))

    async def _start_one(self) -> Standby | None:
        log_path = self._work_dir / f"standby-{os.getpid()}-{next(self._numbers)}.log"
        try:
            with log_path.open("wb") as output:
                process = await asyncio.create_subprocess_exec(
                    *self._command,
                    "standby",
                    cwd=self._work_dir,
                    env=self.env,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            logger.warning("cannot start a warm engine (%s): runs start cold", error)
            return None
        return Standby(process, log_path)

    async def _watch(self, standby: Standby) -> None:
        await standby.process.wait()
        if standby.taken or self._stopped:
            return
        # It ended with no run: something is wrong with the engine it runs.
        if standby in self._ready:
            self._ready.remove(standby)
        self._failures += 1
        tail = "".join(await asyncio.to_thread(read_tail, standby.log_path, 1)) or "no output"
        with contextlib.suppress(OSError):
            standby.log_path.unlink()
        if self._failures >= MAX_FAILURES:
            logger.error(
                "warm engines keep exiting before their run (exit %s: %s); every run starts cold",
                standby.process.returncode,
                tail,
            )
            return
        logger.warning(
            "a warm engine exited before its run (exit %s: %s)", standby.process.returncode, tail
        )
        self._wanted.set()
