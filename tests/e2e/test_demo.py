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
