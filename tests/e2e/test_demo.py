"""The README's first command: ``flowyard demo`` runs the hello flow end to end."""

import subprocess

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
