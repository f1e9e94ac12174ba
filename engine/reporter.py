"""The engine's side of ``EngineService``, run from a background thread.

Why a thread with its own event loop and ``grpc.aio``: the flow must own the main thread
(signal handlers, libraries that insist on it, ``asyncio.run`` for async flows), so all gRPC
traffic happens elsewhere, and it must keep going while the flow blocks the main thread in
``time.sleep`` or CPU-bound work. The Report stream needs a reader (acknowledgements, state
results, cancel), a writer (batches, proposals, heartbeats) and timers at once; on one event
loop those are owned tasks that share state without locks (:mod:`engine.stream`). With the
synchronous API the same would take a request-iterator thread, a response thread and a timer
thread kept in step with locks.

The main thread talks to the loop only through :class:`~engine.logbuffer.LogBuffer` (itself
thread-safe), ``call_soon_threadsafe`` and ``concurrent.futures.Future`` answers awaited with
the deadlines of :class:`~engine.settings.Timeouts`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

from engine.cancellation import block_termination_signals
from engine.errors import ControlPlaneRejected, ControlPlaneUnavailable, ReportError
from engine.logbuffer import LogBuffer
from engine.model import OpenedInfo, RunSpec, StateResult, StateType
from engine.settings import EngineSettings
from engine.stream import FATAL_CODES, Proposal, ReportStream, backoff_delay, refusal
from engine.wire import new_transition_id, proposal_to_proto, run_spec_from_proto
from flowyard.v1 import engine_pb2, engine_pb2_grpc
from flowyard_common import addresses

__all__ = ["Reporter"]

logger = logging.getLogger(__name__)

# gRPC's own reconnect backoff (up to 120 s by default) would otherwise hide behind ours.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # A partition leaves the stream open and silent: keepalive pings find the dead connection
    # (the server accepts one every 10 s), so the engine reconnects and resends its lines.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class Reporter:
    """Owns the background thread, its event loop, the channel and the Report stream.

    Public methods are called from the main thread; they block with the deadlines of
    ``settings.timeouts`` and raise :class:`~engine.errors.ReportError`.
    """

    def __init__(
        self,
        settings: EngineSettings,
        buffer: LogBuffer,
        on_cancel: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._timeouts = settings.timeouts
        self._buffer = buffer
        self._on_cancel = on_cancel
        self._metadata = (("authorization", f"Bearer {settings.token}"),)
        self._thread = threading.Thread(
            target=self._thread_main, name="flowyard-reporter", daemon=True
        )
        self._ready = threading.Event()
        self._opened: concurrent.futures.Future[OpenedInfo] = concurrent.futures.Future()
        self._fatal: ReportError | None = None
        # Set on the reporter thread before _ready, then only read elsewhere:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stub: engine_pb2_grpc.EngineServiceAsyncStub | None = None
        self._stream: ReportStream | None = None

    @property
    def thread_ident(self) -> int | None:
        """The reporter thread's ident (its log records are not captured)."""
        return self._thread.ident

    def start(self) -> None:
        """Start the thread and begin connecting."""
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        """Close the stream and the channel and wait for the thread, within the grace period."""
        loop, stream = self._loop, self._stream
        if loop is not None and stream is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stream.stopping.set)
        self._thread.join(self._timeouts.stop_grace + 1.0)

    @property
    def opened(self) -> bool:
        """Whether the Report stream was opened (the control plane answered Open once)."""
        return self._opened.done() and self._opened.exception() is None

    def wait_opened(self) -> OpenedInfo:
        """Wait for the first Opened answer.

        Raises:
            ControlPlaneUnavailable: none within the connect timeout.
            ReportError: the control plane refused the stream.
        """
        timeout = self._timeouts.connect
        try:
            return self._opened.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ControlPlaneUnavailable(self._unreachable(timeout)) from None

    def start_run(self) -> RunSpec:
        """Call StartRun, retrying transient errors until the connect timeout.

        Raises:
            RunNotStartable: the attempt is stale or the run is finished.
            ReportError: unreachable or refused.
        """
        future = asyncio.run_coroutine_threadsafe(self._start_run(), self._running_loop())
        try:
            return future.result(self._timeouts.connect + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ControlPlaneUnavailable("StartRun did not answer in time") from None

    def call(self, method: str, request: Message) -> Any:
        """Call a unary EngineService method from any thread but the reporter's, retrying
        transient errors until the connect timeout.

        Raises:
            ReportError: refused, or unreachable.
        """
        future = asyncio.run_coroutine_threadsafe(
            self._unary(method, request), self._running_loop()
        )
        try:
            return future.result(self._timeouts.connect + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ControlPlaneUnavailable(f"{method} did not answer in time") from None

    def watch(
        self,
        request: engine_pb2.WatchChildRunRequest,
        on_change: Callable[[Any], bool],
        timeout: float | None,
    ) -> bool:
        """Follow a child run until ``on_change`` says stop or it is terminal; False if
        ``timeout`` passed first. ``on_change`` runs on the reporter thread.

        Raises:
            ReportError: refused.
        """
        future = asyncio.run_coroutine_threadsafe(
            self._watch(request, on_change), self._running_loop()
        )
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return False
        except BaseException:
            future.cancel()  # a cancelled flow stops waiting; the watch stops with it
            raise
        return True

    def set_heartbeat_interval(self, seconds: float) -> None:
        """Send a heartbeat every ``seconds`` from now on."""
        stream = self._running_stream()
        self._running_loop().call_soon_threadsafe(stream.set_heartbeat_interval, seconds)

    def propose(
        self,
        state: StateType,
        *,
        message: str = "",
        result_summary: str = "",
        source_revision: str = "",
    ) -> StateResult:
        """Propose a state and wait for the control plane's answer.

        The proposal survives reconnects: it is resent with the same transition id until
        answered or the propose timeout passes.

        Raises:
            ControlPlaneUnavailable: no answer in time.
            ReportError: the stream failed for good.
        """
        stream = self._running_stream()
        transition_id = new_transition_id()
        request = proposal_to_proto(
            transition_id,
            state,
            message=message,
            result_summary=result_summary,
            source_revision=source_revision,
        )
        future: concurrent.futures.Future[StateResult] = concurrent.futures.Future()
        self._running_loop().call_soon_threadsafe(
            stream.add_proposal, transition_id, Proposal(request, future)
        )
        timeout = self._timeouts.propose
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ControlPlaneUnavailable(
                f"the control plane did not answer the {state.value} proposal within "
                f"{timeout:g} s (last error: {stream.last_error})"
            ) from None

    def flush(self) -> bool:
        """Send every captured line now and wait until all are acknowledged.

        Returns False if the flush timeout passed first.

        Raises:
            ReportError: the stream failed for good.
        """
        done = self._buffer.wait_acknowledged(self._timeouts.flush)
        if self._fatal is not None:
            raise self._fatal
        return done

    def _unreachable(self, timeout: float) -> str:
        last_error = self._stream.last_error if self._stream else "the reporter did not start"
        return (
            f"could not reach the control plane at {self._settings.server} within "
            f"{timeout:g} s (last error: {last_error})"
        )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._fatal is not None:
            raise self._fatal
        if self._loop is None or self._loop.is_closed():
            raise ControlPlaneRejected("the reporter is not running")
        return self._loop

    def _running_stream(self) -> ReportStream:
        self._running_loop()
        assert self._stream is not None
        return self._stream

    # -- the reporter thread -------------------------------------------------------------

    def _thread_main(self) -> None:
        block_termination_signals()
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            logger.exception("The reporter stopped unexpectedly")
            self._fail(ControlPlaneRejected(f"the reporter stopped unexpectedly: {exc!r}"))
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Several addresses (replicas): one channel over all of them, moving to another
        # replica when the one it uses goes away (see flowyard_common.addresses).
        target, extra = addresses.grpc_target(self._settings.server)
        options = [*_CHANNEL_OPTIONS, *extra]
        if self._settings.tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._settings.tls_ca)
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = engine_pb2_grpc.EngineServiceStub(channel)
        stream = self._stream = ReportStream(
            self._stub,
            self._settings,
            self._buffer,
            metadata=self._metadata,
            on_opened=self._on_opened,
            on_cancel=self._on_cancel,
        )
        self._buffer.set_listener(self._wake_from_any_thread)
        self._ready.set()
        try:
            await stream.run()
        except ReportError as exc:
            logger.error("%s", exc)
            self._fail(exc)
        finally:
            self._buffer.set_listener(None)
            stream.fail_proposals(ControlPlaneRejected("the reporter has stopped"))
            await channel.close(grace=None)

    def _on_opened(self, info: OpenedInfo) -> None:
        if not self._opened.done():
            self._opened.set_result(info)

    def _wake_from_any_thread(self) -> None:
        loop, stream = self._loop, self._stream
        if loop is None or stream is None:
            return
        if threading.get_ident() == self._thread.ident:
            stream.wake.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the engine is exiting
            loop.call_soon_threadsafe(stream.wake.set)

    def _fail(self, error: ReportError) -> None:
        """Give up for good: every waiter in the main thread gets ``error``."""
        if self._fatal is None:
            self._fatal = error
        if not self._opened.done():
            self._opened.set_exception(error)
        if self._stream is not None:
            self._stream.fail_proposals(error)
        self._buffer.interrupt()

    async def _start_run(self) -> RunSpec:
        request = engine_pb2.StartRunRequest(
            run_id=self._settings.run_id, attempt=self._settings.attempt
        )
        return run_spec_from_proto(await self._unary("StartRun", request))

    async def _unary(self, method: str, request: Message) -> Any:
        """Call a unary EngineService method, retrying transient errors until the connect
        timeout; a fatal status is raised as :func:`~engine.stream.refusal` says."""
        assert self._stub is not None
        call = getattr(self._stub, method)
        deadline = time.monotonic() + self._timeouts.connect
        failures = 0
        last_error = "no answer"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                return await call(request, timeout=remaining, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    raise refusal(exc.code(), exc.details(), method) from None
                last_error = f"{exc.code().name}: {exc.details()}"
                failures += 1
                delay = backoff_delay(
                    failures, self._timeouts.backoff_base, self._timeouts.backoff_cap
                )
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        raise ControlPlaneUnavailable(
            f"{method} got no answer from {self._settings.server} within "
            f"{self._timeouts.connect:g} s (last error: {last_error})"
        )

    async def _watch(
        self, request: engine_pb2.WatchChildRunRequest, on_change: Callable[[Any], bool]
    ) -> None:
        """Follow WatchChildRun until ``on_change`` returns True for a snapshot (or the child
        is terminal), reconnecting after transient errors."""
        assert self._stub is not None
        failures = 0
        while True:
            try:
                async for response in self._stub.WatchChildRun(request, metadata=self._metadata):
                    failures = 0
                    if on_change(response.run):
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    raise refusal(exc.code(), exc.details(), "WatchChildRun") from None
                failures += 1
                await asyncio.sleep(
                    backoff_delay(failures, self._timeouts.backoff_base, self._timeouts.backoff_cap)
                )
