"""The attempt's log lines between capture and acknowledgement.

Lines are written from any thread (the flow, its threads, the engine) and read by the
reporter's event loop, so the buffer is a plain lock-protected structure.

Numbering is lazy: a line gets its seq when it is first handed to the wire, not when it is
written. That is what lets the buffer stay bounded without gaps: when the control plane is
unreachable and the buffer is full, the oldest lines *not yet numbered* are dropped and one
marker line ("N log lines dropped: ...") takes a single seq in their place. Lines that were
numbered keep their seq until acknowledged, because the server may already have stored
them; the reporter resends them after a reconnect and the server drops the duplicates.
The number of numbered-but-unacknowledged lines is capped (``max_in_flight``) so that the
droppable part of the buffer never runs out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from engine.model import LogLine, LogStream
from flowyard_common.loglines import truncate_line
from flowyard_sdk.events import TaskRunChange

__all__ = ["BATCH_DELAY", "BATCH_MAX_BYTES", "BATCH_MAX_LINES", "LogBuffer"]

BATCH_DELAY = 0.05
"""A batch is sent at the latest this long after its first line was written..."""
BATCH_MAX_LINES = 2_500
"""...or as soon as this many lines are waiting (four such batches fit in the in-flight
window, so while one is stored the next ones are on their way: with two, a flow printing
100,000 lines had its last line tailed a median 110 ms after printing it, 83 ms with four)..."""
BATCH_MAX_BYTES = 1024 * 1024
"""...or this many bytes of text."""

SYSTEM_LOGGER = "flowyard.engine"


def _size(text: str) -> int:
    """UTF-8 size of ``text``; batch limits are about what goes on the wire."""
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="replace"))


class LogBuffer:
    """Thread-safe store of the attempt's lines until the control plane acknowledges them."""

    def __init__(
        self,
        *,
        capacity: int = 100_000,
        max_in_flight: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < max_in_flight < capacity:
            raise ValueError("max_in_flight must be positive and smaller than capacity")
        self._capacity = capacity
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Written lines, not numbered yet (seq 0 until ``next_batch`` numbers them).
        self._queued: deque[LogLine] = deque()
        self._queued_bytes = 0
        self._numbered: deque[LogLine] = deque()
        self._send_index = 0  # first line of _numbered not yet sent on the current stream
        self._next_seq = 1
        self._acked_seq = 0
        self._dropped = 0
        self._dropped_since = 0.0
        # Monotonic time the oldest unsent line was written (kept while the in-flight window
        # is full, so the lines are due at once when it opens); None: nothing unsent.
        self._oldest_unsent_at: float | None = None
        self._urgent = False
        self._interrupted = False
        self._listener: Callable[[], None] | None = None

    # -- writers (any thread) ------------------------------------------------------------

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener`` (from the writing thread) whenever a batch may have become due."""
        with self._lock:
            self._listener = listener

    def write(
        self,
        level: int,
        stream: LogStream,
        logger: str,
        text: str,
        task_run: str = "",
        task_event: TaskRunChange | None = None,
        subflow_run: str = "",
    ) -> None:
        """Add one line; never blocks on the network, drops the oldest unnumbered if full."""
        text = truncate_line(text)
        size = _size(text)
        entry = LogLine(
            0, self._clock(), level, stream, logger, text, task_run, task_event, subflow_run
        )
        with self._lock:
            queued = self._queued
            was_full = self._batch_full()
            if len(queued) + len(self._numbered) >= self._capacity and queued:
                dropped = queued.popleft()
                self._queued_bytes -= _size(dropped.text)
                if self._dropped == 0:
                    self._dropped_since = dropped.timestamp
                self._dropped += 1
            queued.append(entry)
            self._queued_bytes += size
            # The reporter is woken when a batch starts, and when one fills (not for every
            # line written while it is full: a wake-up costs the writer more than the line).
            if self._oldest_unsent_at is None:
                self._oldest_unsent_at = self._monotonic()
                notify = True
            else:
                notify = not was_full and self._batch_full()
            listener = self._listener
        if notify and listener is not None:
            listener()

    # -- the reporter (its event loop thread) --------------------------------------------

    def opened(self, stored_seq: int) -> None:
        """A new stream was opened and the server has every line up to ``stored_seq``.

        Acknowledges those lines and schedules every other numbered line for resending.
        """
        with self._lock:
            self._ack_locked(stored_seq)
            # An engine restarted for the same attempt continues after what is stored.
            self._next_seq = max(self._next_seq, stored_seq + 1)
            self._send_index = 0
            if self._numbered:
                self._oldest_unsent_at = 0.0  # resend at once
            self._changed.notify_all()

    def ack(self, stored_seq: int) -> None:
        """The server stored every line up to ``stored_seq``."""
        with self._lock:
            self._ack_locked(stored_seq)
            self._changed.notify_all()

    def _ack_locked(self, stored_seq: int) -> None:
        self._acked_seq = max(self._acked_seq, stored_seq)
        while self._numbered and self._numbered[0].seq <= stored_seq:
            self._numbered.popleft()
            self._send_index = max(0, self._send_index - 1)

    def batch_delay(self) -> float | None:
        """Seconds until the next batch is due (0: now), or None if there is nothing to send."""
        with self._lock:
            if not self._has_sendable():
                return None
            if self._urgent or self._batch_full() or self._oldest_unsent_at is None:
                return 0.0
            return max(0.0, self._oldest_unsent_at + BATCH_DELAY - self._monotonic())

    def next_batch(
        self, max_lines: int = BATCH_MAX_LINES, max_bytes: int = BATCH_MAX_BYTES
    ) -> list[LogLine]:
        """The next lines to send, in seq order, numbering written lines as needed."""
        with self._lock:
            batch: list[LogLine] = []
            size = 0
            # First the lines sent on a stream that broke, in order...
            numbered = self._numbered
            while self._send_index < len(numbered) and len(batch) < max_lines:
                line = numbered[self._send_index]
                line_size = _size(line.text)
                # A batch stays under the limit; a single line is never over it (truncation).
                if batch and size + line_size > max_bytes:
                    return self._sent(batch)
                self._send_index += 1
                batch.append(line)
                size += line_size
            if self._send_index < len(numbered):
                return self._sent(batch)  # full of resends: the rest go in the next batches
            # ...then written lines, numbered now, as far as the in-flight window allows.
            room = min(max_lines - len(batch), self._max_in_flight - len(numbered))
            if room > 0 and self._dropped:
                batch.append(self._number_drop_marker())
                room -= 1
            queued = self._queued
            seq = self._next_seq
            taken_bytes = 0
            while room > 0 and queued:
                line = queued[0]
                line_size = _size(line.text)
                if batch and size + line_size > max_bytes:
                    break
                queued.popleft()
                # Numbered in place: the line written is the line sent.
                line.seq = seq
                seq += 1
                numbered.append(line)
                batch.append(line)
                size += line_size
                taken_bytes += line_size
                room -= 1
            self._next_seq = seq
            self._queued_bytes -= taken_bytes
            self._send_index = len(numbered)
            return self._sent(batch)

    def _sent(self, batch: list[LogLine]) -> list[LogLine]:
        if not (self._queued or self._dropped or self._send_index < len(self._numbered)):
            self._oldest_unsent_at = None
        return batch

    def _number_drop_marker(self) -> LogLine:
        """The line that stands for the lines dropped, numbered next in their place."""
        line = LogLine(
            seq=self._next_seq,
            timestamp=self._dropped_since,
            level=30,
            stream=LogStream.SYSTEM,
            logger=SYSTEM_LOGGER,
            text=f"{self._dropped} log lines dropped: the control plane was unreachable",
        )
        self._next_seq += 1
        self._dropped = 0
        self._numbered.append(line)
        return line

    def _has_sendable(self) -> bool:
        if self._send_index < len(self._numbered):
            return True
        return len(self._numbered) < self._max_in_flight and bool(self._dropped or self._queued)

    def _batch_full(self) -> bool:
        unsent = len(self._numbered) - self._send_index + len(self._queued)
        return unsent >= BATCH_MAX_LINES or self._queued_bytes >= BATCH_MAX_BYTES

    # -- the main thread -----------------------------------------------------------------

    def wait_acknowledged(self, timeout: float) -> bool:
        """Send everything at once from now on, and wait until what was written is stored.

        Returns False on timeout or if :meth:`interrupt` was called.
        """
        deadline = self._monotonic() + timeout
        with self._lock:
            self._urgent = True
            target = self._next_seq - 1 + len(self._queued) + (1 if self._dropped else 0)
            listener = self._listener
        if listener is not None:
            listener()
        with self._lock:
            while not self._all_acknowledged(target):
                remaining = deadline - self._monotonic()
                if remaining <= 0 or self._interrupted:
                    return False
                self._changed.wait(remaining)
            return True

    def _all_acknowledged(self, target: int) -> bool:
        if self._acked_seq >= target:
            return True
        # Lines dropped while waiting lower the seq the last line gets: nothing pending at
        # all is also done.
        return not (self._numbered or self._queued or self._dropped)

    def interrupt(self) -> None:
        """Wake :meth:`wait_acknowledged` for good: the reporter gave up."""
        with self._lock:
            self._interrupted = True
            self._changed.notify_all()

    # -- introspection -------------------------------------------------------------------

    @property
    def acked_seq(self) -> int:
        """Highest seq the control plane acknowledged."""
        with self._lock:
            return self._acked_seq

    @property
    def pending(self) -> int:
        """Lines written but not acknowledged yet (a pending drop marker counts as one)."""
        with self._lock:
            return len(self._numbered) + len(self._queued) + (1 if self._dropped else 0)
