"""Ports for tests that must know a server's port before it starts (to restart it there)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (for a server that must come back on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
