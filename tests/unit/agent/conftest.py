"""Fixtures for the agent's unit tests: a fake engine script and leak checks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests import waiting

# The fake engine's behaviour is picked by the run id's first word (before the first "-"):
#   exit<N>    print a few lines, exit with code N
#   lines<N>   print N numbered lines, exit 1
#   sleep      sleep for a long time
#   tree       start a grandchild, write its pid to child.pid, sleep
#   stubborn   ignore SIGTERM (and make the grandchild ignore it too), then like tree
#   gate       exit 0 once a file named "release" appears in the working directory
FAKE_ENGINE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time

    assert sys.argv[-2] == "execute", sys.argv
    run_id = sys.argv[-1]
    mode = run_id.split("-")[0]
    # Written whole or not at all: a run cancelled at once can kill the engine mid-write.
    with open("engine.pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename("engine.pid.tmp", "engine.pid")
    for name in sorted(os.environ):
        if name.startswith("FLOWYARD_"):
            print(f"{name}={os.environ[name]}")
    print(f"cwd={os.getcwd()}")
    print(f"pgid={os.getpgid(0)}", flush=True)

    def grandchild(ignore_term):
        code = "import signal, time\\n"
        if ignore_term:
            code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        code += "time.sleep(300)\\n"
        child = subprocess.Popen([sys.executable, "-c", code])
        with open("child.pid.tmp", "w") as f:
            f.write(str(child.pid))
        os.rename("child.pid.tmp", "child.pid")

    if mode.startswith("exit"):
        print("working", flush=True)
        print("stderr says hello", file=sys.stderr, flush=True)
        print("bye", flush=True)
        sys.exit(int(mode[4:]))
    elif mode.startswith("lines"):
        for i in range(int(mode[5:])):
            print(f"line {i}")
        sys.exit(1)
    elif mode == "sleep":
        time.sleep(300)
    elif mode == "tree":
        grandchild(ignore_term=False)
        time.sleep(300)
    elif mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild(ignore_term=True)
        time.sleep(300)
    elif mode == "gate":
        while not os.path.exists("release"):
            time.sleep(0.02)
        print("released", flush=True)
    else:
        sys.exit(f"unknown mode {mode!r}")
    """
)


@pytest.fixture
def fake_engine(tmp_path: Path) -> tuple[str, ...]:
    """The engine command: this Python running the fake engine script."""
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return (sys.executable, str(script))


@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    """The runtime's work directory; fails the test if an engine is left running in it."""
    path = tmp_path / "work"
    yield path
    leaked = []
    for pid_file in [*path.glob("*/engine.pid"), *path.glob("*/child.pid")]:
        pid = int(pid_file.read_text())
        if _alive(pid):
            leaked.append(pid)
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"the test left processes running: {leaked}"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.fixture
def alive() -> Callable[[int], bool]:
    """Whether a pid belongs to a live (non-zombie) process."""
    return _alive


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks behind."""
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"the test leaked tasks: {[t.get_name() for t in leaked]}"


Eventually = Callable[..., Awaitable[None]]


async def _eventually(
    condition: Callable[[], bool], within: float = 10.0, message: str = "condition"
) -> None:
    await waiting.eventually(condition, within, message)


@pytest.fixture
def eventually() -> Eventually:
    """``await eventually(condition, within=..., message=...)``: wait with a deadline."""
    return _eventually
