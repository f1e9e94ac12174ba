"""A small Server-Sent Events reader for tests, over an httpx streaming response."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    """One event as a browser's EventSource would deliver it."""

    kind: str
    data: Any
    id: str | None


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of a ``text/event-stream`` response, as they arrive (comments and
    ``retry:`` lines are skipped)."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    kind, data, event_id = "message", [], None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield Event(kind, json.loads("\n".join(data)), event_id)
            kind, data, event_id = "message", [], None
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
