"""The README's first command: ``flowyard demo`` runs the hello flow end to end."""

import re
import signal
import subprocess
from pathlib import Path

import httpx

from control_plane.cli.processes import script


def test_demo_runs_hello_to_completed_and_cleans_up() -> None:
    result = subprocess.run(
        [*script("flowyard"), "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello, world!" in result.stdout
    assert "step 3 of 3" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == "Final state: COMPLETED"
    assert "kept in" not in result.stderr  # the temporary directory was removed


def test_the_etl_example_retries_its_extract_and_completes() -> None:
    result = subprocess.run(
        [*script("flowyard"), "demo", "--example", "etl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Task run extract-0 failed (attempt 2 of 4)" in out
    assert all(f"transform-{i} squared rows" in out for i in range(6)), out
    assert "Subflow report finished" in out
    assert "Flow returned '60 rows in squares'" in out
    assert out.rstrip().splitlines()[-1] == "Final state: COMPLETED"


def test_the_demo_prints_its_web_ui_serves_it_on_request_and_stops_whole_on_sigterm() -> None:
    demo = subprocess.Popen(
        [*script("flowyard"), "demo", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stderr is not None
        said: list[str] = []
        for line in demo.stderr:
            said.append(line)
            if "until Ctrl-C" in line:
                break
        text = "".join(said)
        found = re.search(
            r"Web UI: (http://\S+/runs/(\w+)) \(log in with the token in (\S+?)[;)]", text
        )
        assert found, text
        page, run_id, token_file = found.groups()
        token = Path(token_file).read_text().strip()
        answer = httpx.get(page, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200 and run_id in answer.text
        logs = httpx.get(
            page.replace(f"/runs/{run_id}", f"/runs/{run_id}/logs.txt"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert "Hello, world!" in logs.text
        workdir = str(Path(token_file).parents[1])
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
    # Nothing it started is left running.
    left = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout
    assert left.strip() == ""
