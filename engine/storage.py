"""Where the flow's code comes from.

A run's source is one of a small closed set of dataclasses (only :class:`LocalSource` today;
git repositories and archive URLs will join it). Each knows how to make its code available
as a directory on this machine through :meth:`CodeSource.fetch`; the runner then runs the
flow with that directory as its working directory and first on ``sys.path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.errors import SourceError

__all__ = ["CodeSource", "LocalSource", "fetch_code"]


class CodeSource(Protocol):
    """A place the engine can fetch a flow's code from."""

    def describe(self) -> str:
        """A short human-readable form for log lines, e.g. the path or URL."""
        ...

    def fetch(self, workdir: Path) -> Path:
        """Make the code available and return the directory that holds it.

        ``workdir`` is a scratch directory owned by the engine, where sources that download
        or unpack code put it; sources that are already local ignore it.

        Raises:
            SourceError: the code cannot be fetched; the message says why.
        """
        ...


@dataclass(frozen=True)
class LocalSource:
    """Code in a directory this machine can read (process runtime, shared volumes)."""

    path: Path

    def describe(self) -> str:
        """The directory's path."""
        return str(self.path)

    def fetch(self, workdir: Path) -> Path:
        """Return the directory itself, after checking that it is one."""
        del workdir  # already local: nothing to download
        if not self.path.is_absolute():
            raise SourceError(f"source directory {str(self.path)!r} is not an absolute path")
        if not self.path.exists():
            raise SourceError(f"source directory {str(self.path)!r} does not exist")
        if not self.path.is_dir():
            raise SourceError(f"source {str(self.path)!r} is not a directory")
        return self.path.resolve()


def fetch_code(source: CodeSource, workdir: Path) -> Path:
    """Fetch ``source`` into ``workdir`` and return the code's directory.

    Unexpected OS errors (permissions, disk) become :class:`SourceError` so that the run
    fails with a message instead of an engine traceback.
    """
    try:
        return source.fetch(workdir)
    except SourceError:
        raise
    except OSError as exc:
        raise SourceError(f"could not fetch code from {source.describe()}: {exc}") from exc
