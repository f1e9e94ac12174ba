"""Stopping the flow when the run is cancelled.

Two things cancel a run: a ``CancelFlow`` pushed by the control plane (received in the
reporter thread) and SIGTERM from outside (the agent terminating the process group, Kubernetes
deleting the pod). Both end in the same place: :class:`~engine.errors.FlowCancelled` raised in
the main thread, where the flow runs, by a SIGTERM handler.

The reporter thread delivers its cancel as a real SIGTERM aimed at the main thread
(``signal.pthread_kill``) rather than with ``_thread.interrupt_main``: the latter only sets a
flag, which a main thread blocked in ``time.sleep`` or a socket read would not see until the
call returns; a real signal interrupts the system call (EINTR) and the handler runs at once.
For SIGTERM sent to the whole process to reach the main thread too, every other thread
blocks it (:func:`block_termination_signals`, called first thing in the reporter thread, whose
mask the gRPC threads it starts inherit).

The exception is raised only while the flow is running (:meth:`Cancellation.armed`). Outside
that window the request is recorded and the runner checks it at its next step, so a cancel
never interrupts the engine halfway through reporting a state.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from engine.errors import FlowCancelled

__all__ = ["TERMINATION_SIGNALS", "Cancellation", "block_termination_signals"]

TERMINATION_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def block_termination_signals() -> None:
    """Block SIGTERM and SIGINT in the calling thread so they reach the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATION_SIGNALS)


class Cancellation:
    """Records cancel requests and turns them into FlowCancelled while the flow runs."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._armed = False
        self._main_thread_id = threading.main_thread().ident

    @property
    def requested(self) -> str | None:
        """Why the run was cancelled, or None if it was not."""
        return self._reason

    def install(self) -> None:
        """Handle SIGTERM and SIGINT in the main thread (call it from the main thread)."""
        for signum in TERMINATION_SIGNALS:
            signal.signal(signum, self._on_signal)

    def request(self, reason: str) -> None:
        """Ask for the flow to stop (any thread): raises FlowCancelled in it if it runs."""
        if self._reason is None:
            self._reason = reason
        if self._armed and self._main_thread_id is not None:
            signal.pthread_kill(self._main_thread_id, signal.SIGTERM)

    @contextmanager
    def armed(self) -> Iterator[None]:
        """While inside, a cancel request raises FlowCancelled in the main thread."""
        self._armed = True
        # Checked after arming: a request that saw the gate closed just before is not lost.
        if self._reason is not None:
            self._armed = False
            raise FlowCancelled(self._reason)
        try:
            yield
        finally:
            self._armed = False

    def check(self) -> None:
        """Raise FlowCancelled if a cancel was requested."""
        if self._reason is not None:
            raise FlowCancelled(self._reason)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        # Signal handlers run in the main thread between bytecodes: plain attribute
        # updates are enough, and a lock here could deadlock with the interrupted code.
        if self._reason is None:
            self._reason = f"received {signal.Signals(signum).name}"
        if self._armed:
            self._armed = False
            raise FlowCancelled(self._reason)
