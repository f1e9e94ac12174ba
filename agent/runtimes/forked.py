"""Engines forked from one warm interpreter: the process runtime's default way to start a run.

The agent keeps one ``<engine-command> forkserver`` running (``engine.forkserver``): an
interpreter that has imported the engine and forks a child per run, so a run pays neither an
interpreter's start nor its imports, in latency or in CPU. The child is a cold start's
equal: one process per run, its own session and process group, the run's working directory,
environment and output file set before user code is imported, never reused, killed as a
group on cancel.

The children are the fork server's, not the agent's, so the agent learns how one ended from
the server (``{"exited": pid, "returncode": n}``). Should the server itself die, the engines it
started keep running and reporting to the control plane; the agent then waits for each through
a pidfd, which tells that a process ended but not its exit status, and reports it as
``UNKNOWN_EXIT``. The server is then started again; after ``MAX_FAILURES`` failures in a row
runs start cold instead, saying so once.

A run whose environment differs from the server's in what an interpreter reads only at start
(``warm.compatible``) starts cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runtimes.output import read_tail
from agent.tasks import TaskSet

__all__ = ["MAX_FAILURES", "UNKNOWN_EXIT", "ForkServer", "ForkedProcess"]

logger = logging.getLogger(__name__)

#: Fork servers in a row that fail (exit, or refuse a run), after which every run starts cold.
MAX_FAILURES = 3
#: The exit code reported for an engine whose status died with its fork server.
UNKNOWN_EXIT = 255
#: How long a fork request may take before the server is taken for stuck.
FORK_TIMEOUT_SECONDS = 10.0


class ForkedProcess:
    """An engine process forked by the fork server: what the runtime needs of a process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = asyncio.Event()

    def ended(self, returncode: int) -> None:
        """Record how the process ended (once)."""
        if self.returncode is None:
            self.returncode = returncode
            self._ended.set()

    async def wait(self) -> int:
        """Wait until the process has ended; its exit code (negative: the signal)."""
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode


@dataclass(eq=False)
class _Server:
    """One fork server process, the engines it forked and are running, and the answer it
    owes (its replies and exits concern its own children only)."""

    process: asyncio.subprocess.Process
    children: dict[int, ForkedProcess] = field(default_factory=dict)
    answer: asyncio.Future[dict[str, Any]] | None = None
    #: Failed, and its failure counted (once, whether the runtime or its exit noticed it
    #: first): no run goes to it any more.
    stopped: bool = False

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class ForkServer:
    """One fork server process, started again if it dies, and the engines it forked."""

    def __init__(
        self, command: tuple[str, ...], work_dir: Path, env: Mapping[str, str], tasks: TaskSet
    ) -> None:
        self.env = dict(env)
        self._command = command
        self._work_dir = work_dir
        self._tasks = tasks
        self._server: _Server | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._closed = False
        self._log_path = work_dir / f"forkserver-{os.getpid()}.log"

    @property
    def available(self) -> bool:
        """Whether runs may go to the fork server (it has not failed too often)."""
        return not self._closed and self._failures < MAX_FAILURES

    async def warm_up(self) -> None:
        """Start the fork server ahead of the first run."""
        async with self._lock:
            if self.available and self._server is None:
                await self._start()

    async def fork(
        self, run_id: str, cwd: Path, env: Mapping[str, str], log: Path
    ) -> ForkedProcess | None:
        """The engine process started for ``run_id``, or None: start the run cold.

        A server found dead by the request (it died before the agent noticed its end) is
        started again once for it: the run is forked by the new one, not started cold.
        """
        async with self._lock:
            for last_try in (False, True):
                if not self.available:
                    return None
                server = self._server
                gone = server is None or server.stopped or not server.running
                if gone and not await self._start():
                    return None
                server = self._server
                assert server is not None and server.process.stdin is not None
                request = {"run_id": run_id, "cwd": str(cwd), "env": dict(env), "log": str(log)}
                server.answer = asyncio.get_running_loop().create_future()
                try:
                    server.process.stdin.write((json.dumps(request) + "\n").encode())
                    await server.process.stdin.drain()
                    async with asyncio.timeout(FORK_TIMEOUT_SECONDS):
                        answer = await server.answer
                except TimeoutError as error:
                    self._failed(server, f"the fork server did not answer: {error!r}")
                    return None
                except (OSError, ConnectionError, EOFError) as error:
                    self._failed(server, f"the fork server is gone: {error!r}")
                    if last_try:
                        return None
                    continue
                finally:
                    server.answer = None
                if "started" not in answer:
                    reason = f"the fork server refused run {run_id}: {answer.get('error')}"
                    self._failed(server, reason)
                    return None
                self._failures = 0
                child: ForkedProcess = answer["process"]
                return child
            return None

    async def close(self) -> None:
        """Stop the fork server (engines it forked keep running, like cold ones)."""
        self._closed = True
        if self._server is None or not self._server.running:
            return
        process = self._server.process
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _start(self) -> bool:
        try:
            with self._log_path.open("ab") as output:
                process = await asyncio.create_subprocess_exec(
                    *self._command,
                    "forkserver",
                    cwd=self._work_dir,
                    env=self.env,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=output,
                    start_new_session=True,
                )
        except OSError as error:
            self._failures += 1
            logger.warning("cannot start the fork server (%s); the run starts cold", error)
            return False
        self._server = _Server(process)
        self._tasks.spawn(f"forkserver:{process.pid}", self._read(self._server))
        return True

    async def _read(self, server: _Server) -> None:
        stdout = server.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                logger.warning("the fork server wrote something unexpected: %r", line[:200])
                continue
            if "exited" in message:
                ended = server.children.pop(int(message["exited"]), None)
                if ended is not None:
                    ended.ended(int(message["returncode"]))
                continue
            if "started" in message:
                # Made here, not by the caller: its end may be the very next line.
                pid = int(message["started"])
                message["process"] = server.children[pid] = ForkedProcess(pid)
            if server.answer is not None and not server.answer.done():
                server.answer.set_result(message)
        await server.process.wait()
        if server.answer is not None and not server.answer.done():
            server.answer.set_exception(EOFError("the fork server exited"))
        for child in server.children.values():
            self._tasks.spawn(f"orphan:{child.pid}", _wait_orphan(child))
        server.children.clear()
        if not self._closed and not server.stopped:
            tail = "".join(await asyncio.to_thread(read_tail, self._log_path, 1)) or "no output"
            self._failed(server, f"the fork server exited ({server.process.returncode}: {tail})")

    def _failed(self, server: _Server, reason: str) -> None:
        if server.stopped:
            return  # this server's failure is counted already
        server.stopped = True
        self._failures += 1
        if server.running:
            with contextlib.suppress(ProcessLookupError):
                server.process.kill()
        if self._failures >= MAX_FAILURES:
            logger.error("%s; every run starts cold from now on", reason.strip())
        else:
            logger.warning("%s; it is started again for the next run", reason.strip())


async def _wait_orphan(child: ForkedProcess) -> None:
    """Wait for an engine whose fork server died: a pidfd says when it ends, not how."""
    try:
        pidfd = os.pidfd_open(child.pid)
    except ProcessLookupError:
        child.ended(UNKNOWN_EXIT)
        return
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(pidfd, ended.set)
    try:
        await ended.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    child.ended(UNKNOWN_EXIT)
