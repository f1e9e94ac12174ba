"""``flowyard-engine forkserver``: one interpreter with the engine imported, forking an engine
process per run.

Starting an engine costs an interpreter and its imports, about 0.1 s of CPU, which a burst of
short runs pays once per run. The fork server pays it once: it imports everything a run needs,
then forks a child for each run the agent sends it, and the child goes on exactly as
``flowyard-engine execute`` would. A child is one process per run, its own session and process
group, with the run's working directory, environment and output file set before any user
code is imported, and it is never reused.

Why forking is safe here: the server creates no thread, no gRPC channel and no event loop; it
checks that it has exactly one thread before it serves, and refuses to serve otherwise. A fork
copies only the calling thread, so forking is unsafe in a process whose other threads may
hold locks (a gRPC client's, say); this process has none. Each child creates its own channel
after the fork, as gRPC's multiprocessing example does, and gRPC's fork handlers are off in
every engine (``flowyard_common.forking``).

The protocol is JSON lines. The agent writes one line per run on stdin:
``{"run_id", "cwd", "env", "log"}``. The server answers each, in order, with ``{"started": pid}``
or ``{"error": text}``, and reports every child's end as ``{"exited": pid, "returncode": n}``
(negative: killed by that signal), whenever it comes. The server waits for its children
through pidfds, so an end is seen at once. At the end of its input (the agent went away) it
exits; children still running carry on and report their runs to the control plane.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
import threading
import traceback
from typing import Any

from engine.runner import ExitCode, execute_run
from engine.takeover import take_on

__all__ = ["serve"]

_STDIN, _STDOUT = 0, 1


def serve() -> int:
    """Serve fork requests until the end of stdin; the exit code of the server itself."""
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        print(f"flowyard-engine: cannot fork safely with threads running: {names}", file=sys.stderr)
        return ExitCode.COULD_NOT_RUN
    selector = selectors.DefaultSelector()
    selector.register(_STDIN, selectors.EVENT_READ, None)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.data is None:
                chunk = os.read(_STDIN, 1 << 16)
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        _start(line, selector)
            else:
                _reap(key.fd, key.data, selector)


def _send(message: dict[str, Any]) -> None:
    # Unbuffered: nothing may sit in a buffer that a child would inherit and write out.
    os.write(_STDOUT, (json.dumps(message) + "\n").encode())


def _start(line: bytes, selector: selectors.BaseSelector) -> None:
    try:
        request = json.loads(line)
        run_id, cwd, env, log = (
            str(request["run_id"]),
            str(request["cwd"]),
            {str(k): str(v) for k, v in dict(request["env"]).items()},
            str(request["log"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        _send({"error": f"malformed request: {error}"})
        return
    try:
        pid = os.fork()
    except OSError as error:
        _send({"error": f"cannot fork: {error}"})
        return
    if pid == 0:
        _child(run_id, cwd, env, log, selector)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as error:
        # Without a pidfd the end would go unseen: stop the child before it starts the run.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _send({"error": f"cannot watch the engine process: {error}"})
        return
    selector.register(pidfd, selectors.EVENT_READ, pid)
    _send({"started": pid})


def _reap(pidfd: int, pid: int, selector: selectors.BaseSelector) -> None:
    selector.unregister(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    _send({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _child(run_id: str, cwd: str, env: dict[str, str], log: str, selector: Any) -> None:
    """Become the run's engine process; never returns."""
    code = int(ExitCode.COULD_NOT_RUN)
    try:
        os.setsid()
        # The server's descriptors (its pipes to the agent, the other children's pidfds)
        # are none of the run's business.
        selector.close()
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.closerange(3, _max_fd() + 1)
        # The server changed no signal handler: the child's are an interpreter's defaults.
        take_on(run_id, cwd, env)
        code = execute_run(run_id)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(ExitCode.COULD_NOT_RUN)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            # The process ends either way.
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return 1024
