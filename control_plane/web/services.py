"""What the HTTP side is given: the same use cases the gRPC servicers call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane import metrics
from control_plane.admission import Admission, Refusal
from control_plane.auth.principals import Principal
from control_plane.auth.registry import Tokens
from control_plane.errors import FlowyardError, InvalidArgument
from control_plane.orchestration.agents import AgentRegistry
from control_plane.orchestration.catalog import Catalog
from control_plane.orchestration.following import Following
from control_plane.orchestration.queues import Queues
from control_plane.orchestration.runs import Runs
from control_plane.orchestration.scheduler import Schedules
from control_plane.orchestration.signals import Signals
from control_plane.orchestration.task_runs import TaskRuns
from control_plane.store.db import Database
from control_plane.web import auth
from control_plane.web.errors import domain_error, error_response, unexpected_error

#: A request body larger than this is refused before it is parsed (the gRPC API's default
#: message limit is 4 MiB; a web form never comes near either).
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Services:
    """The control plane's parts the HTTP routes use."""

    db: Database
    tokens: Tokens
    catalog: Catalog
    runs: Runs
    queues: Queues
    schedules: Schedules
    task_runs: TaskRuns
    agents: AgentRegistry
    following: Following
    signals: Signals
    #: Why the control plane is not ready to serve (None: ready), for ``/readyz``.
    unready: Callable[[], Awaitable[str | None]]
    #: The gRPC API's admission control, shared: one limit for both protocols.
    admission: Admission | None = None
    #: The Prometheus exposition and its content type, for ``/metrics``.
    metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None
    #: Set when the server stops: open event streams end, so the browser reconnects
    #: (to another replica, or to this one once it is back) and resumes where it was.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: The "lines" events of the batches just sent, by run and range: the followers of a run
    #: are sent the same batches, encoded once (``events.logs``).
    line_events: OrderedDict[tuple[str, int, int, int, int], bytes] = field(
        default_factory=OrderedDict
    )


def services(request: Request) -> Services:
    """The services of the app serving ``request``."""
    found: Services = request.app.state.services
    return found


Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def api(handler: Callable[[Request, Services], Awaitable[Any]]) -> Endpoint:
    """An authenticated JSON endpoint: ``handler`` returns a document (200) or a Response;
    a domain error becomes its status and message, anything else a 500 with the traceback
    only in the log."""

    refusals = metrics.ADMISSION_REFUSALS.labels(f"http:{handler.__name__}")

    async def endpoint(request: Request) -> Response:
        found = services(request)
        with admitted(found, refusals) as refused:
            if refused is not None:
                return busy(refused)
            try:
                await auth.authenticate(request, found.tokens)
                # Shielded: a client that hangs up mid-call never leaves a half-done
                # transaction.
                result = await found.db.shielded(handler(request, found))
            except FlowyardError as error:
                return domain_error(error)
            except Exception as error:
                return unexpected_error(handler.__name__, error)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


@contextlib.contextmanager
def admitted(found: Services, refusals: Counter) -> Iterator[Refusal | None]:
    """Inside: None if admission control admitted the request (it counts until the block
    ends), else why it was refused."""
    admission = found.admission
    refused = admission.enter(refusals) if admission is not None else None
    try:
        yield refused
    finally:
        if admission is not None and refused is None:
            admission.leave()


def busy(refusal: Refusal) -> Response:
    """429 for a request admission control refused, with when to retry."""
    return error_response(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        refusal.message,
        {"Retry-After": str(max(1, math.ceil(refusal.retry_seconds)))},
    )


async def authenticated(request: Request) -> Principal:
    """The caller of a streaming endpoint (which answers errors itself)."""
    return await auth.authenticate(request, services(request).tokens)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty), or InvalidArgument."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise InvalidArgument(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise InvalidArgument(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"the request body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return value
