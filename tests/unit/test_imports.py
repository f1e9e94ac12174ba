"""Every module imports on its own, first of all: no import cycle hides behind import order.

A cycle between two modules works when some third module happens to import them in the right
order first, and breaks when a program (or a test) imports the other one first. So each module
is imported as the first of our modules: one fresh interpreter per package, which forgets every
module of ours before importing the next (the generated stubs and third-party packages stay
loaded; they are not what is checked).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("control_plane", "agent", "engine", "flowyard_common", "flowyard_sdk")
#: Alembic runs these scripts itself; importing its environment outside a migration fails.
NOT_IMPORTABLE = ("control_plane.store.migrations",)

SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys, traceback

    ours, names = sys.argv[1].split(","), sys.argv[2:]
    failures = {}
    for name in names:
        for loaded in [m for m in sys.modules if m.split(".")[0] in ours]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except Exception:
            failures[name] = traceback.format_exc(limit=-3)
    print(json.dumps(failures))
    """
)


def modules(package: str) -> list[str]:
    """The dotted names of every module in ``package``."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if not name.startswith(NOT_IMPORTABLE):
            names.append(name)
    return names


@pytest.mark.parametrize("package", OURS)
def test_every_module_imports_first(package: str) -> None:
    names = modules(package)
    assert names
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(OURS), *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    failures = json.loads(result.stdout.splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{trace}" for name, trace in failures.items())
