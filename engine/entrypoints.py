"""Entrypoint strings as the engine parses them: a malformed one is a flow setup error.

The parsing itself is shared with the control plane (``flowyard_common.entrypoints``), so a
deployment is refused at deploy time with the message the engine would give at run time; here
its error becomes the engine's :class:`~engine.errors.InvalidEntrypoint`, which fails the run
like any other :class:`~engine.errors.FlowSetupError`.
"""

from __future__ import annotations

from engine.errors import InvalidEntrypoint
from flowyard_common import entrypoints as _shared
from flowyard_common.entrypoints import Entrypoint, EntrypointKind

__all__ = ["Entrypoint", "EntrypointKind", "InvalidEntrypoint", "parse_entrypoint"]


def parse_entrypoint(text: str) -> Entrypoint:
    """Parse an entrypoint string (see ``flowyard_common.entrypoints.parse_entrypoint``).

    Raises:
        InvalidEntrypoint: a ``FlowSetupError`` and ``ValueError`` saying what is wrong.
    """
    try:
        return _shared.parse_entrypoint(text)
    except _shared.InvalidEntrypoint as exc:
        raise InvalidEntrypoint(str(exc)) from None
