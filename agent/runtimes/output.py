"""The end of an engine's output file, for the reports that quote it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_tail"]

# Enough bytes for 50 long lines without reading a huge log file whole.
_TAIL_BYTES = 256 * 1024


def read_tail(path: Path, lines: int) -> tuple[str, ...]:
    """The last ``lines`` lines of a text file (empty if the file does not exist)."""
    if lines <= 0:
        return ()
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            file.seek(start)
            data = file.read()
    except FileNotFoundError:
        return ()
    rows = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and rows:
        rows = rows[1:]  # probably cut in the middle
    return tuple(rows[-lines:])
