"""Parsing of entrypoint strings: ``path/to/file.py:fn`` or ``package.module:fn``.

Pure and dependency-free: the control plane and the CLI parse a deployment's entrypoint with
:func:`parse_entrypoint` before it is stored, and the engine before it loads the flow, so a
malformed entrypoint is refused at deploy time with the message the engine would give at run
time.
"""

from __future__ import annotations

import enum
import keyword
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["Entrypoint", "EntrypointKind", "InvalidEntrypoint", "parse_entrypoint"]


class InvalidEntrypoint(ValueError):
    """The entrypoint text is not ``path/to/file.py:fn`` or ``package.module:fn``."""


class EntrypointKind(enum.Enum):
    """How the entrypoint's target is found."""

    FILE = "file"
    """A ``.py`` file, relative to the source directory."""
    MODULE = "module"
    """A dotted module name, imported with the source directory first on ``sys.path``."""


@dataclass(frozen=True)
class Entrypoint:
    """A parsed entrypoint: where the function lives and its name."""

    kind: EntrypointKind
    target: str
    """A relative POSIX path for FILE, a dotted module name for MODULE."""
    function: str
    """The function's name, a Python identifier."""

    def __str__(self) -> str:
        return f"{self.target}:{self.function}"

    @property
    def module_parts(self) -> tuple[str, ...]:
        """The dotted name split into its parts (MODULE only)."""
        return tuple(self.target.split("."))


_FORMAT_HINT = 'expected "path/to/file.py:function" or "package.module:function"'


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def parse_entrypoint(text: str) -> Entrypoint:
    """Parse an entrypoint string.

    A target that ends in ``.py`` or contains ``/`` is a file path relative to the source
    directory (absolute paths and ``..`` are refused: the code must live inside its
    source); anything else is a dotted module name.

    Raises:
        InvalidEntrypoint: a ``ValueError`` whose message says what is wrong.
    """
    stripped = text.strip()
    if not stripped:
        raise InvalidEntrypoint(f"the entrypoint is empty: {_FORMAT_HINT}")
    target, sep, function = stripped.rpartition(":")
    if not sep:
        raise InvalidEntrypoint(f"entrypoint {text!r} has no ':function' part: {_FORMAT_HINT}")
    target = target.strip()
    function = function.strip()
    if not target:
        raise InvalidEntrypoint(f"entrypoint {text!r} names no file or module: {_FORMAT_HINT}")
    if not _is_identifier(function):
        raise InvalidEntrypoint(
            f"entrypoint {text!r}: {function!r} is not a valid Python function name"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Entrypoint(EntrypointKind.FILE, _check_path(text, target), function)
    parts = target.split(".")
    bad = [part for part in parts if not _is_identifier(part)]
    if bad:
        raise InvalidEntrypoint(
            f"entrypoint {text!r}: {target!r} is neither a .py file nor a dotted module name "
            f"({bad[0]!r} is not a valid identifier)"
        )
    return Entrypoint(EntrypointKind.MODULE, target, function)


def _check_path(text: str, target: str) -> str:
    if "\\" in target:
        raise InvalidEntrypoint(f"entrypoint {text!r}: use '/' as the path separator")
    path = PurePosixPath(target)
    if path.is_absolute():
        raise InvalidEntrypoint(
            f"entrypoint {text!r}: the path must be relative to the source directory"
        )
    if ".." in path.parts:
        raise InvalidEntrypoint(
            f"entrypoint {text!r}: the path must stay inside the source directory (no '..')"
        )
    if path.suffix != ".py":
        raise InvalidEntrypoint(f"entrypoint {text!r}: {target!r} is not a .py file")
    return path.as_posix()
