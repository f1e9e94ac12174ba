"""The fork server's protocol, against the real ``flowyard-engine forkserver`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.runner import ExitCode


def answers(process: subprocess.Popen[bytes], count: int) -> list[dict[str, Any]]:
    assert process.stdout is not None
    return [json.loads(process.stdout.readline()) for _ in range(count)]


def test_it_answers_each_request_in_order_and_reports_each_end(tmp_path: Path) -> None:
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.main", "forkserver"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(b"not json\n")
        request = {
            "run_id": "r1",
            # A directory that does not exist: the child cannot take the run on.
            "cwd": str(tmp_path / "missing"),
            "env": {"PATH": os.environ["PATH"]},
            "log": str(tmp_path / "r1.log"),
        }
        process.stdin.write((json.dumps(request) + "\n").encode())
        process.stdin.flush()
        refused, started, exited = answers(process, 3)
        assert "malformed request" in refused["error"]
        assert exited == {"exited": started["started"], "returncode": ExitCode.COULD_NOT_RUN}
        # The child wrote why into the run's output file, not to the server's pipes.
        assert "FileNotFoundError" in (tmp_path / "r1.log").read_text()
    finally:
        process.stdin.close()
        assert process.wait(timeout=10) == 0
