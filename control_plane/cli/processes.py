"""Starting and stopping a local control plane and agent as child processes.

Used by ``flowyard demo``, the end-to-end tests and the benchmarks: each child gets its own
log file, start-up waits on a readiness condition with a deadline (never a fixed sleep), and
stopping is SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.config import ADMIN_TOKEN_FILE

STOP_GRACE_SECONDS = 10.0


class StartError(RuntimeError):
    """A child process did not become ready; the message includes the end of its log."""


def script(name: str) -> list[str]:
    """The command of one of our console scripts, next to the running interpreter if there."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which(name)
    if found:
        return [found]
    modules = {
        "flowyard": "control_plane.cli.main",
        "flowyard-agent": "agent.main",
        "flowyard-engine": "engine.main",
    }
    return [sys.executable, "-m", modules[name]]


@dataclass
class Child:
    """A running child process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.process.kill()
        self.process.wait()


def _spawn(name: str, command: list[str], log_path: Path, env: dict[str, str] | None) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    return Child(name, process, log_path)


def start_server(
    data_dir: Path,
    *,
    port: int = 0,
    db_url: str | None = None,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
    executable: str | None = None,
) -> Child:
    """Start ``flowyard server start`` and wait until it serves.

    ``extra`` then holds ``address``, ``token`` (the admin token the server keeps in
    ``data_dir``), ``http_url`` (the web UI's address; the HTTP port is a free one unless
    ``extra_args`` name one) and, with a mutual-TLS agent port, ``agent_address``. ``executable`` is
    another installation's ``flowyard`` (the benchmarks compare releases with it).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = data_dir / f"server-{time.monotonic_ns()}.ready"
    command = [
        *([executable] if executable else script("flowyard")),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--ready-file",
        str(ready),
    ]
    if db_url:
        command += ["--db-url", db_url]
    if not {"--http-port", "--no-http"} & set(extra_args or []):
        command += ["--http-port", "0"]
    child = _spawn("control plane", command + (extra_args or []), data_dir / "server.log", None)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not child.alive():
            raise StartError(f"the control plane exited during start-up:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            child.kill()
            raise StartError(
                f"the control plane did not start within {timeout} s:\n{child.log_tail()}"
            )
        time.sleep(0.02)
    addresses = ready.read_text().split()
    child.extra["address"] = addresses[0]
    for address in addresses[1:]:
        key = "http_url" if address.startswith("http://") else "agent_address"
        child.extra[key] = address
    child.extra["token"] = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    ready.unlink()
    return child


def start_agent(
    address: str,
    pool: str,
    work_dir: Path,
    *,
    name: str = "local-agent",
    capacity: int = 4,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    token: str = "",
) -> Child:
    """Start ``flowyard-agent`` with the process runtime (readiness: see ``wait_for_agent``).

    ``token`` reaches the agent as ``FLOWYARD_TOKEN`` (never on its command line, which any
    local user can read).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [
        *script("flowyard-agent"),
        "--pool",
        pool,
        "--server",
        address,
        "--runtime",
        "process",
        "--name",
        name,
        "--capacity",
        str(capacity),
        "--work-dir",
        str(work_dir),
        *(extra_args or []),
    ]
    if token:
        env = {**(env or {}), "FLOWYARD_TOKEN": token}
    return _spawn(f"agent {name}", command, work_dir / "agent.log", env)
