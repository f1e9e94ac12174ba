"""How long one log line may be, and how a longer one is cut.

The engine cuts what it captures before sending it; the control plane cuts what it stores with
the same function, so a line another client sent is held to the same limit and looks the same.
"""

from __future__ import annotations

__all__ = ["MAX_LINE_BYTES", "truncate_line"]

MAX_LINE_BYTES = 64 * 1024
"""Longer lines are cut, with a visible marker saying how much was cut."""

# Room kept for the marker so that a truncated line stays within MAX_LINE_BYTES.
_MARKER_ROOM = 48


def truncate_line(text: str, limit: int = MAX_LINE_BYTES) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its head and "… [truncated N bytes]"."""
    if len(text) * 4 <= limit:  # fast path: cannot exceed the limit even if all 4-byte chars
        return text
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return text
    head = encoded[: limit - _MARKER_ROOM].decode("utf-8", errors="ignore")
    cut = len(encoded) - len(head.encode("utf-8"))
    return f"{head}… [truncated {cut} bytes]"
