"""Where the flow's code comes from.

A run's source is one of a small closed set of dataclasses: :class:`LocalSource` here,
:class:`engine.git.GitSource` and :class:`engine.archives.ArchiveSource`. Each knows how to
make its code available as a directory on this machine through :meth:`CodeSource.fetch`; the
runner then runs the flow with that directory as its working directory and first on
``sys.path``, and reports the :attr:`FetchedCode.revision` it ran (a git commit, an archive's
sha256) with the run's states.

Every failure is a :class:`SourceError` whose message names what was missing (the ref, the
file, the subdirectory, the checksum) and never carries a credential.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from engine.errors import SourceError

__all__ = [
    "CodeSource",
    "FetchedCode",
    "LocalSource",
    "fetch_code",
    "scratch_directory",
    "subdirectory_of",
]


@dataclass(frozen=True)
class FetchedCode:
    """Code made available on this machine."""

    directory: Path
    """The directory entrypoint paths are relative to."""
    revision: str = ""
    """What was fetched: a git commit sha, an archive's sha256; empty for local code."""


class CodeSource(Protocol):
    """A place the engine can fetch a flow's code from."""

    def describe(self) -> str:
        """A short human-readable form for log lines, e.g. the path or URL (no credential)."""
        ...

    def fetch(self, workdir: Path) -> FetchedCode:
        """Make the code available and say where it is.

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

    def fetch(self, workdir: Path) -> FetchedCode:
        """The directory itself, after checking that it is one."""
        del workdir  # already local: nothing to download
        if not self.path.is_absolute():
            raise SourceError(f"source directory {str(self.path)!r} is not an absolute path")
        if not self.path.exists():
            raise SourceError(f"source directory {str(self.path)!r} does not exist")
        if not self.path.is_dir():
            raise SourceError(f"source {str(self.path)!r} is not a directory")
        return FetchedCode(self.path.resolve())


@contextlib.contextmanager
def scratch_directory(source: CodeSource | None) -> Iterator[Path]:
    """A directory for ``source`` to download or unpack code into, removed afterwards.

    Local code (or no source: the run fails without fetching) needs none, and gets none: no
    directory is made, and ``tempfile`` (with the ``shutil`` and compression modules it loads)
    is not imported on that path, which is most runs' and the one engine start-up is measured
    on.
    """
    if source is None or isinstance(source, LocalSource):
        yield Path(".")  # never used: ``LocalSource.fetch`` ignores its scratch directory
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flowyard-") as path:
        yield Path(path)


def subdirectory_of(root: Path, subdirectory: str, where: str) -> Path:
    """``root/subdirectory``, checked to exist and to stay inside ``root``.

    ``where`` names the fetched code in the message (e.g. "repository https://… at 1a2b3c").
    """
    if not subdirectory:
        return root
    relative = PurePosixPath(subdirectory)
    if relative.is_absolute() or ".." in relative.parts:
        raise SourceError(f"subdirectory {subdirectory!r} must be a relative path without '..'")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SourceError(f"subdirectory {subdirectory!r} leads outside the {where}")
    if not path.is_dir():
        raise SourceError(f"subdirectory {subdirectory!r} not found in the {where}")
    return path


def fetch_code(source: CodeSource, workdir: Path) -> FetchedCode:
    """Fetch ``source`` into ``workdir``.

    Unexpected OS errors (permissions, disk) become :class:`SourceError` so that the run
    fails with a message instead of an engine traceback.
    """
    try:
        return source.fetch(workdir)
    except SourceError:
        raise
    except OSError as exc:
        raise SourceError(f"could not fetch code from {source.describe()}: {exc}") from exc
