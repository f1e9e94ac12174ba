"""Admission control: refuse the user calls the server cannot take now, and say when to retry.

SQLite takes one writer at a time, so a burst of calls queues on the write lock
(``control_plane.store.db``). Queuing without bound only moves the failure: waits grow until
clients' deadlines expire, and a call whose deadline expires after its transaction committed
leaves a run its caller was never told about. So the server works on at most ``limit`` user
calls at once, counting database work still running for callers that have gone, and refuses
the rest at once, before doing anything, with RESOURCE_EXHAUSTED and a retry hint:

- trailing metadata ``grpc-retry-pushback-ms`` (gRPC's server pushback, gRFC A6): a client
  whose service config has a retry policy for RESOURCE_EXHAUSTED waits that long and retries
  without any code of its own;
- a status message ending in "retry after N s", for people and for clients without one.

A refused call changed nothing, so retrying it is always safe, with or without an idempotency
key. Only the unary calls of ``ControlPlaneService`` are admitted this way: agent and engine
streams, the engine's ``StartRun`` and health checks are the work the server exists for, are
bounded by the number of agents and runs, and must get through an overload of user calls.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc
from prometheus_client import Counter

from control_plane import metrics
from control_plane.interceptors import Handler, MethodWrapper

#: Trailing metadata carrying the retry hint in milliseconds (gRFC A6 server pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: The hint when the server has not yet seen enough calls finish to estimate its pace.
DEFAULT_RETRY_SECONDS = 1.0
MIN_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 30.0
#: The pace of the server is measured over calls that finished this recently...
PACE_WINDOW_SECONDS = 10.0
PACE_SAMPLES = 512
#: ...and only once they span this long: the first few calls of a burst finish slowly while
#: the rest is still arriving, and would make the server look far slower than it is.
MIN_PACE_SPAN_SECONDS = 1.0

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class Pace:
    """How fast admitted calls finish, from the most recent ones."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._finished: collections.deque[float] = collections.deque(maxlen=PACE_SAMPLES)

    def finished(self) -> None:
        """One admitted call has finished."""
        self._finished.append(self._clock())

    def per_second(self) -> float | None:
        """Calls finished per second lately, or None if too few finished to tell."""
        now = self._clock()
        while self._finished and now - self._finished[0] > PACE_WINDOW_SECONDS:
            self._finished.popleft()
        if len(self._finished) < 2:
            return None
        span = self._finished[-1] - self._finished[0]
        return (len(self._finished) - 1) / span if span >= MIN_PACE_SPAN_SECONDS else None


def retry_after(backlog: int, pace: float | None, spread: float) -> float:
    """Seconds a refused caller should wait: about the time the backlog takes to drain.

    ``spread`` (1.0 to 1.5, random per refusal) keeps callers refused together from all
    coming back in the same instant.
    """
    seconds = (backlog / pace if pace else DEFAULT_RETRY_SECONDS) * spread
    return min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, seconds))


@dataclass(frozen=True)
class Refusal:
    """Why a call was refused, and how long its caller should wait before retrying."""

    message: str
    retry_seconds: float


class Admission(MethodWrapper):
    """Admits the unary calls of ``services`` while fewer than ``limit`` are in progress.

    ``backlog`` reports the database work in flight (``Database.in_flight``): it includes work
    that outlives its call (a client that hung up does not stop a shielded transaction), so a
    client that sends and cancels in a loop cannot pile up work behind the limit.
    """

    def __init__(
        self,
        limit: int,
        backlog: Callable[[], int],
        services: Iterable[str],
        spread: Callable[[], float] = lambda: random.uniform(1.0, 1.5),
    ) -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        super().__init__(services)
        self.limit = limit
        self._backlog = backlog
        self._spread = spread
        self._active = 0
        self._pace = Pace()

    @property
    def active(self) -> int:
        """Admitted calls not yet finished."""
        return self._active

    def wrap(self, handler: Handler, service: str, method: str) -> Handler | None:
        if handler.unary_unary is None:
            return None  # streams are long-lived: their limits are gRPC's own
        return grpc.unary_unary_rpc_method_handler(
            # On an aio server the behavior is a coroutine function (the stubs type it sync).
            self._guard(
                cast(Behavior, handler.unary_unary), metrics.ADMISSION_REFUSALS.labels(method)
            ),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def enter(self, refusals: Counter) -> Refusal | None:
        """Admit one call (then ``leave()`` when it ends), or say why it is refused and when
        to retry: one limit for every protocol the server speaks."""
        in_progress = max(self._active, self._backlog())
        if in_progress >= self.limit:
            refusals.inc()
            seconds = retry_after(in_progress, self._pace.per_second(), self._spread())
            return Refusal(
                f"the control plane is busy (requests in progress: {in_progress}, at most "
                f"{self.limit}); nothing was done; retry after {seconds:.1f} s",
                seconds,
            )
        self._active += 1
        return None

    def leave(self) -> None:
        """An admitted call has ended."""
        self._active -= 1
        self._pace.finished()

    def _guard(self, behavior: Behavior, refusals: Counter) -> Behavior:
        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            refused = self.enter(refusals)
            if refused is not None:
                await self._refuse(context, refused)
            try:
                return await behavior(request, context)
            finally:
                self.leave()

        return admitted

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], refusal: Refusal
    ) -> NoReturn:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            refusal.message,
            trailing_metadata=((RETRY_PUSHBACK_KEY, str(round(refusal.retry_seconds * 1000))),),
        )
