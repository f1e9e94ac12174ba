"""Tracebacks as the flow's author wants to read them.

The frames of the engine itself and of the import machinery above the user's code say nothing
to the person reading a FAILED run, so they are cut from the front of the traceback; the
SDK's own frames (between a flow and the task it called, say) are left out wherever they are.
"""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from types import TracebackType

import flowyard_sdk

__all__ = ["describe_exception", "format_user_traceback"]

_ENGINE_DIR = str(Path(__file__).resolve().parent)
_ASYNCIO_DIR = str(Path(asyncio.__file__).resolve().parent)
_SDK_DIR = str(Path(flowyard_sdk.__file__).resolve().parent)


def _is_plumbing(filename: str) -> bool:
    return (
        filename.startswith((_ENGINE_DIR, _ASYNCIO_DIR, _SDK_DIR))
        or filename.startswith("<frozen importlib")
        or filename.endswith(("/importlib/__init__.py", "/runpy.py"))
    )


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    first = tb
    while first is not None and _is_plumbing(first.tb_frame.f_code.co_filename):
        first = first.tb_next
    # If every frame is plumbing (the error is in the engine), keep them all: hiding
    # everything would leave nothing to debug with.
    return first if first is not None else tb


def format_user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without the engine's leading frames, without trailing newline."""
    shown = traceback.TracebackException(type(exc), exc, _user_frames(exc.__traceback__))
    _drop_sdk_frames(shown, set())
    return "".join(shown.format()).rstrip("\n")


def _drop_sdk_frames(shown: traceback.TracebackException, seen: set[int]) -> None:
    if id(shown) in seen:
        return
    seen.add(id(shown))
    kept = [frame for frame in shown.stack if not frame.filename.startswith(_SDK_DIR)]
    if kept:  # an error inside the SDK itself keeps its frames
        shown.stack = traceback.StackSummary.from_list(kept)
    for chained in (shown.__cause__, shown.__context__):
        if chained is not None:
            _drop_sdk_frames(chained, seen)


def describe_exception(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, or just the type when the message is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
