"""Helpers for tests that drive a ``FakeCluster``: deadline waits and small manifests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tests import waiting

T = TypeVar("T")
#: Generous: a loaded machine may take a while to start processes and run the controllers;
#: a wait ends as soon as its condition holds.
DEADLINE = 30.0


def wait_for(condition: Callable[[], T], timeout: float = DEADLINE, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, asking again when it raises;
    fail after ``timeout`` seconds (see ``tests.waiting``)."""
    return waiting.wait_for(condition, timeout, what)


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def python_job(
    name: str,
    code: str,
    *,
    image: str = "python:3.11-slim",
    labels: dict[str, str] | None = None,
    env: list[dict[str, Any]] | None = None,
    resources: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A Job manifest whose one container runs ``python -c code`` (this interpreter)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "command": [sys.executable, "-c", code],
    }
    if env:
        container["env"] = env
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            **spec,
        },
    }
