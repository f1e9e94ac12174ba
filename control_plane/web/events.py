"""Server-Sent Events: a run's log lines, a run's changes, and "some run changed".

The browser's ``EventSource`` reconnects by itself and sends the id of the last event it saw
as ``Last-Event-ID``; a logs stream resumes right after it. Lines go in one event per stored
batch (the engine sends them in batches already), whose id is the position of its last line,
``attempt:seq``: a reconnect never loses or repeats a line, whichever replica it reaches.

Every stream sends a comment after ``KEEPALIVE_SECONDS`` without an event, so proxies keep it
open and a dead client is noticed, and ends with an ``end`` event the page closes on (an
``EventSource`` left open would reconnect for ever). When the server stops, streams end
without ``end`` (``Following.stop`` wakes and ends every follower): the browser reconnects
and resumes.

Each stream is one coroutine from the read to the socket, with no task of its own; the
streams of one run that have caught up share its feed (``orchestration.feeds``), so that many
browsers following one run cost little more than one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from control_plane.errors import FlowyardError, InvalidArgument
from control_plane.models import LogRecord, Run, TaskRunState
from control_plane.orchestration.signals import wait_or_recheck
from control_plane.web import documents
from control_plane.web.errors import domain_error, unexpected_error
from control_plane.web.services import Services, authenticated, services

#: A comment is sent after this long without an event.
KEEPALIVE_SECONDS = 15.0
#: Encoded batches kept for the followers of runs (a few per run followed at once).
RENDERED_BATCHES = 256
#: How soon a browser reconnects to a stream that broke.
RECONNECT_MS = 1000
#: Changes of many runs within this long go out as one "changed" event.
COALESCE_SECONDS = 1.0
#: Signals key notified whenever any run changes (see ``server.build``).
ANY_RUN = "runs:*"
T = TypeVar("T")

KEEPALIVE = b": keepalive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(kind: str, data: Any, event_id: str | None = None) -> bytes:
    """One event in the text/event-stream format."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def position(text: str) -> tuple[int, int]:
    """``attempt:seq`` as numbers, or InvalidArgument."""
    attempt, _, seq = text.partition(":")
    if not (attempt.isdigit() and seq.isdigit()):
        raise InvalidArgument(f"a log position reads 'attempt:seq', such as '1:250', got {text!r}")
    return int(attempt), int(seq)


def _stream(found: Services, items: AsyncIterator[bytes]) -> Response:
    async def framed() -> AsyncIterator[bytes]:
        # A browser that lost the stream reconnects after a second (its default is three).
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        async for item in items:
            yield item
            if found.stopping.is_set():
                return

    return StreamingResponse(framed(), media_type="text/event-stream", headers=HEADERS)


async def _serve(
    request: Request,
    name: str,
    source: Callable[[Services], AsyncGenerator[T]],
    render: Callable[[T], tuple[list[bytes], bool]],
) -> Response:
    """A stream of the events ``render`` makes of each item of ``source``, until it says the
    stream is done. The first item is read before answering, so a bad request (a malformed or
    unknown run) gets its JSON error and status instead of an empty stream."""
    found = services(request)
    try:
        await authenticated(request)
        items = source(found)
        first = await anext(items)
    except FlowyardError as error:
        return domain_error(error)
    except Exception as error:
        return unexpected_error(name, error)

    async def stream() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(items):
            item: T | None = first
            while item is not None:
                chunks, done = render(item)
                for chunk in chunks:
                    yield chunk
                if done:
                    return
                item = await anext(items, None)

    return _stream(found, stream())


async def logs(request: Request) -> Response:
    """``GET /api/v1/runs/{run_id}/logs``: the run's lines from the start (or after
    ``Last-Event-ID`` / ``?after=attempt:seq``), then live ones until the run has ended
    (``?follow=false``: only what is stored now)."""
    after = request.headers.get("last-event-id") or request.query_params.get("after", "")
    follow = request.query_params.get("follow", "true").lower() not in ("false", "0", "no")
    sent_state: list[str] = []

    def source(found: Services) -> AsyncGenerator[tuple[Run, list[LogRecord] | None]]:
        attempt, seq = position(after) if after else (0, 0)
        return found.following.lines(
            request.path_params["run_id"],
            attempt,
            seq,
            follow=follow,
            idle=KEEPALIVE_SECONDS,
            stoppable=True,
        )

    def render(batch: tuple[Run, list[LogRecord] | None]) -> tuple[list[bytes], bool]:
        run, lines = batch
        if lines is None:
            return [KEEPALIVE], False
        chunks = []
        if sent_state[-1:] != [run.state_type.value]:
            sent_state.append(run.state_type.value)
            chunks.append(event("state", _state(run)))
        if not lines:
            return [*chunks, event("end", _state(run))], True
        return [*chunks, lines_event(services(request), run.id, lines)], False

    return await _serve(request, "logs", source, render)


def lines_event(found: Services, run_id: str, lines: list[LogRecord]) -> bytes:
    """The "lines" event of a batch, encoded once for all the followers it is sent to."""
    first, last = lines[0], lines[-1]
    key = (run_id, first.attempt, first.seq, last.attempt, last.seq)
    cache = found.line_events
    encoded = cache.get(key)
    if encoded is None:
        encoded = event(
            "lines", [documents.line(line) for line in lines], f"{last.attempt}:{last.seq}"
        )
        cache[key] = encoded
        if len(cache) > RENDERED_BATCHES:
            cache.popitem(last=False)
    return encoded


async def changes(request: Request) -> Response:
    """``GET /api/v1/runs/{run_id}/events``: the run now, then at every change, until it
    has ended."""

    def source(found: Services) -> AsyncGenerator[tuple[Run, dict[TaskRunState, int]] | None]:
        return found.following.changes(
            request.path_params["run_id"], idle=KEEPALIVE_SECONDS, stoppable=True
        )

    def render(item: tuple[Run, dict[TaskRunState, int]] | None) -> tuple[list[bytes], bool]:
        if item is None:
            return [KEEPALIVE], False
        run, counts = item
        document = {"run": documents.run(run), "task_run_counts": documents.task_run_counts(counts)}
        if run.is_terminal:
            return [event("run", document), event("end", _state(run))], True
        return [event("run", document)], False

    return await _serve(request, "events", source, render)


async def any_run(request: Request) -> Response:
    """``GET /api/v1/events``: a ``changed`` event whenever runs were created or changed
    (coalesced), for pages that list runs and re-read them."""
    found = services(request)
    try:
        await authenticated(request)
    except FlowyardError as error:
        return domain_error(error)
    except Exception as error:
        return unexpected_error("events", error)

    async def items() -> AsyncIterator[bytes]:
        yield event("ready", {})
        while True:
            with found.signals.waiting(ANY_RUN) as changed:
                woken = await wait_or_recheck(changed, within=KEEPALIVE_SECONDS)
            if found.stopping.is_set():
                return
            if woken:
                await asyncio.sleep(COALESCE_SECONDS)
                yield event("changed", {})
            else:
                yield KEEPALIVE

    return _stream(found, items())


def _state(run: Run) -> dict[str, Any]:
    return {
        "type": run.state_type.value,
        "name": run.state_name,
        "message": run.state_message,
        "terminal": run.is_terminal,
    }


ROUTES = [
    Route("/api/v1/events", any_run),
    Route("/api/v1/runs/{run_id}/logs", logs),
    Route("/api/v1/runs/{run_id}/events", changes),
]
