"""Maps control-plane errors to HTTP answers, through their gRPC status: one mapping for both.

A domain error gets the gRPC status the gRPC API would answer with (``api.errors``), and that
status the HTTP status Google's API guidelines pair with it. The body is the same for every
error, so a client reads it one way::

    {"error": {"status": "INVALID_ARGUMENT", "message": "parameters.n: ..."}}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
from starlette.responses import JSONResponse

from control_plane import errors
from control_plane.api.errors import (
    BUSY_RETRY_MS,
    busy_database,
    message_of,
    status_of,
)
from control_plane.store.db import first_line, unique_violation

log = logging.getLogger(__name__)

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


def error_response(
    code: grpc.StatusCode, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON answer for an error of ``code``."""
    return JSONResponse(
        {"error": {"status": code.name, "message": message}},
        status_code=HTTP_STATUS.get(code, 500),
        headers=headers,
    )


def domain_error(error: errors.FlowyardError) -> JSONResponse:
    """The answer for a domain error: its status and message, never a traceback."""
    return error_response(status_of(error), message_of(error))


@dataclass(frozen=True)
class Answer:
    """What to answer a request that failed: a status, a message and headers."""

    code: grpc.StatusCode
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        """The HTTP status of ``code``."""
        return HTTP_STATUS.get(self.code, 500)


def unexpected(name: str, error: Exception) -> Answer:
    """What to answer for anything but a domain error: UNAVAILABLE (503) with Retry-After
    when the database could not serve the request now, ABORTED (409) when a concurrent
    request took the same unique key first, INTERNAL (500, and the traceback in the log) for
    a bug."""
    if (reason := busy_database(error)) is not None:
        # It passes by itself: one line in the log, not a traceback.
        log.warning("%s: %s (%s)", name, reason, first_line(error))
        retry = str(max(1, BUSY_RETRY_MS // 1000))
        return Answer(grpc.StatusCode.UNAVAILABLE, reason, {"Retry-After": retry})
    if unique_violation(error):
        log.warning("%s: lost a race on a unique key (%s)", name, error)
        return Answer(
            grpc.StatusCode.ABORTED,
            "a concurrent request changed the same object; retry to see its result",
        )
    log.exception("%s failed", name)
    return Answer(grpc.StatusCode.INTERNAL, "internal error; see the server log")


def unexpected_error(name: str, error: Exception) -> JSONResponse:
    """The JSON answer for anything but a domain error (``unexpected``)."""
    answer = unexpected(name, error)
    return error_response(answer.code, answer.message, answer.headers)
