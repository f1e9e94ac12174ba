"""Which runs a warm engine may take, and a standby engine given no run or a bad one."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.runtimes.warm import Standby, compatible
from control_plane.cli.processes import script

BASE = {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8"}


@pytest.mark.parametrize(
    "extra",
    [
        {"FLOWYARD_RUN_ID": "r1", "GREETING": "hi"},
        {"HOME": "/home/flow"},
        {"TZ": "Asia/Kathmandu"},
    ],
)
def test_a_run_that_adds_or_changes_ordinary_variables_can_go_warm(extra: dict[str, str]) -> None:
    assert compatible(BASE, {**BASE, **extra})


@pytest.mark.parametrize(
    "extra",
    [
        {"PYTHONHASHSEED": "7"},
        {"PYTHONPATH": "/opt/lib"},
        {"LANG": "de_DE.UTF-8"},
        {"LC_ALL": "C"},
        {"GRPC_DNS_RESOLVER": "native"},
    ],
)
def test_a_run_that_sets_what_an_interpreter_reads_at_start_goes_cold(
    extra: dict[str, str],
) -> None:
    assert not compatible(BASE, {**BASE, **extra})
    # Taking one away counts too.
    assert not compatible({**BASE, **extra}, BASE)


def test_a_standby_engine_whose_agent_goes_away_exits_quietly() -> None:
    done = subprocess.run(
        [*script("flowyard-engine"), "standby"],
        input=b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr == b""


@pytest.mark.parametrize("line", [b"not json\n", b'{"run_id": "r"}\n', b'{"cwd": 1}\n'])
def test_a_standby_engine_handed_a_bad_run_says_so_and_runs_nothing(line: bytes) -> None:
    done = subprocess.run(
        [*script("flowyard-engine"), "standby"],
        input=line,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert b"cannot take the run handed over" in done.stderr


async def test_a_standby_that_cannot_take_its_run_is_stopped(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    # Its output file is not there to be renamed: the handover fails half-way.
    standby = Standby(process, tmp_path / "gone.log")
    assert not await standby.hand_over("r1", tmp_path, {}, tmp_path / "r1-0.log")
    async with asyncio.timeout(10):
        assert await process.wait() == -signal.SIGKILL
