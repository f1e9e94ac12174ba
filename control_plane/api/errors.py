"""Maps control-plane errors to gRPC status codes: the one place that does it."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from sqlalchemy import exc as sa_exc

from control_plane import errors
from control_plane.store.db import first_line, unavailable, unique_violation

log = logging.getLogger(__name__)

STATUS: dict[type[errors.FlowyardError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

#: Status messages travel in trailers, percent-encoded beyond ASCII, and clients refuse trailers
#: over 8 KiB by default: a message is cut to this many UTF-8 bytes (a person reads the start).
MAX_MESSAGE_BYTES = 1000

#: How long a client is told to wait before retrying a call the database was too busy for.
BUSY_RETRY_MS = 1000

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_of(error: errors.FlowyardError) -> grpc.StatusCode:
    """The status code for a domain error."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.UNKNOWN


def message_of(error: errors.FlowyardError) -> str:
    """The error's message as a status message: bounded, and valid UTF-8 even when it quotes
    a value with unpaired surrogates (which JSON escapes can produce)."""
    data = str(error).encode(errors="backslashreplace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return data.decode()
    kept = data[: MAX_MESSAGE_BYTES - 40].decode(errors="ignore")
    return f"{kept}… (cut; {len(data)} bytes in all)"


def busy_database(error: BaseException) -> str | None:
    """What to tell a client when ``error`` means the database could not serve the call now
    (locked, its connection pool exhausted, the server unreachable, a connection broken:
    ``store.db.unavailable``), or None for anything else.

    Those are not the caller's fault and pass: UNAVAILABLE with a retry hint, not INTERNAL.
    """
    if not unavailable(error):
        return None
    if isinstance(error, sa_exc.TimeoutError):
        return "the database is busy (no free connection); retry in a moment"
    if isinstance(error, sa_exc.OperationalError) and "locked" in str(error.orig).lower():
        return "the database is busy (locked by another writer); retry in a moment"
    return "the database is unavailable right now; retry in a moment"


async def abort_unavailable(context: grpc.aio.ServicerContext[Any, Any], reason: str) -> None:
    """End the call with UNAVAILABLE and the standard retry-pushback trailer."""
    await context.abort(
        grpc.StatusCode.UNAVAILABLE,
        reason,
        trailing_metadata=(("grpc-retry-pushback-ms", str(BUSY_RETRY_MS)),),
    )


async def abort_unexpected(
    context: grpc.aio.ServicerContext[Any, Any], name: str, error: Exception
) -> None:
    """End a call that failed with something other than a domain error: UNAVAILABLE with a
    retry hint when the database was too busy, ABORTED when a concurrent call took the same
    unique key first, INTERNAL (and the traceback in the log) for a bug."""
    if (reason := busy_database(error)) is not None:
        # It passes by itself: one line in the log, not a traceback.
        log.warning("%s: %s (%s)", name, reason, first_line(error))
        await abort_unavailable(context, reason)
        return
    if unique_violation(error):
        # Two calls created the same name at once and the unique key let one through (on
        # PostgreSQL writers are not queued, so the check before the insert can race).
        log.warning("%s: lost a race on a unique key (%s)", name, error)
        await context.abort(
            grpc.StatusCode.ABORTED,
            "a concurrent request changed the same object; retry to see its result",
        )
        return
    log.exception("%s failed", name)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.FlowyardError) -> None:
    """End the call with the error's status and message (never a traceback)."""
    await context.abort(status_of(error), message_of(error))


async def abort_failed(
    context: grpc.aio.ServicerContext[Any, Any], name: str, error: Exception
) -> None:
    """End a call that failed with ``error``, whatever it is: a domain error's own status,
    else as ``abort_unexpected`` does."""
    if isinstance(error, errors.FlowyardError):
        await abort(context, error)
    else:
        await abort_unexpected(context, name, error)


def unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary handler so domain errors become their status and bugs become INTERNAL.

    The servicer must have a ``_db`` (``control_plane.store.db.Database``).
    """

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            # Shielded: a client that hangs up mid-call never leaves a half-done transaction.
            response: Resp = await self._db.shielded(method(self, request, context))
            return response
        except errors.FlowyardError as exc:
            await abort(context, exc)
            raise AssertionError("unreachable") from exc
        except Exception as exc:
            await abort_unexpected(context, method.__name__, exc)
            raise

    return wrapper


def streaming(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Like ``unary``, for handlers that stream responses."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            # Closed when this wrapper ends, however it ends: the handler's own clean-up
            # (its ``finally`` blocks) runs then, not whenever the garbage collector gets to it.
            handler = cast(AsyncGenerator[Resp, None], method(self, request, context))
            async with contextlib.aclosing(handler) as items:
                async for item in items:
                    yield item
        except errors.FlowyardError as exc:
            await abort(context, exc)
        except Exception as exc:
            await abort_unexpected(context, method.__name__, exc)

    return wrapper
