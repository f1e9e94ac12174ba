"""Turning what the flow writes into log lines.

Three sources feed the :class:`~engine.logbuffer.LogBuffer`:

* ``logging`` records, through a handler on the root logger (stream LOGGER, the record's
  logger name and level; the traceback of ``logger.exception`` stays in the same line);
* ``print`` and anything written to ``sys.stdout`` / ``sys.stderr``, through
  :class:`LineWriter` replacements that split on newlines and still write everything to the
  original streams, so the process or container output shows it too (STDOUT at level 20,
  STDERR at level 40);
* the engine's own lines about the run (stream SYSTEM, logger ``flowyard.engine``), through
  :meth:`Capture.system`.

Because the root logger now has a handler, ``logging.basicConfig()`` in the flow does nothing
(as documented for it); so that records still show in the process or container output, the
root handler also echoes them to the original stderr. A ``logging.StreamHandler`` the flow
adds itself writes to the replaced stream; its writes are passed through to the original
stream without being captured, since the root handler already has the record (a handler on a
logger that does not propagate to the root is the one case where such a record is not
captured, only shown).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO, TextIO

from engine.logbuffer import SYSTEM_LOGGER, LogBuffer
from engine.model import LogStream
from flowyard_common.loglines import MAX_LINE_BYTES
from flowyard_sdk.children import current_subflow_run
from flowyard_sdk.context import runtime
from flowyard_sdk.events import TaskRunChange

__all__ = ["Capture", "CaptureHandler", "LineWriter", "capture_output"]

TASKS_LOGGER = "flowyard.tasks"
_STREAM_HANDLER_EMIT = logging.StreamHandler.emit.__code__
# A line without a newline is cut into pieces of this many characters rather than growing
# without bound (progress bars that only ever write "\r").
_MAX_PENDING_CHARS = MAX_LINE_BYTES


class LineWriter(io.TextIOBase):
    """A text stream that tees to ``original`` and turns complete lines into log lines."""

    def __init__(self, buffer: LogBuffer, stream: LogStream, level: int, original: TextIO) -> None:
        super().__init__()
        self._buffer = buffer
        self._stream = stream
        self._level = level
        self._original = original
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def original(self) -> TextIO:
        """The stream this one replaced."""
        return self._original

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The original stream's encoding (libraries check it before writing)."""
        return getattr(self._original, "encoding", None) or "utf-8"

    @property
    def buffer(self) -> BinaryIO:
        """The original stream's binary buffer: bytes written there bypass the capture."""
        return self._original.buffer

    def writable(self) -> bool:
        """Always True."""
        return True

    def isatty(self) -> bool:
        """Whether the original stream is a terminal (colour decisions follow it)."""
        try:
            return self._original.isatty()
        except (AttributeError, ValueError):
            return False

    def fileno(self) -> int:
        """The original stream's descriptor: output written there bypasses the capture."""
        return self._original.fileno()

    def write(self, text: str) -> int:
        """Write ``text`` to the original stream and capture its complete lines."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        # A closed or broken original stream must not fail the flow (try, not suppress(): a
        # context manager per print costs more than the rest of the capture).
        try:  # noqa: SIM105
            self._original.write(text)
        except (OSError, ValueError):
            pass
        if sys._getframe(1).f_code is _STREAM_HANDLER_EMIT:
            return len(text)
        with self._lock:
            if text == "\n":  # print() writes the text, then the newline
                lines = [self._pending]
                self._pending = ""
            elif "\n" in text:
                *lines, self._pending = (self._pending + text).split("\n")
            else:
                lines = []
                self._pending += text
            while len(self._pending) > _MAX_PENDING_CHARS:
                lines.append(self._pending[:_MAX_PENDING_CHARS])
                self._pending = self._pending[_MAX_PENDING_CHARS:]
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        """Flush the original stream; a partial line stays pending (see :meth:`flush_partial`)."""
        with suppress(OSError, ValueError):
            self._original.flush()

    def flush_partial(self) -> None:
        """Capture a last line that has no newline."""
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending:
            self._emit(pending)

    def _emit(self, line: str) -> None:
        self._buffer.write(
            self._level,
            self._stream,
            "",
            line.removesuffix("\r"),
            _task_run_here(),
            None,
            current_subflow_run(),
        )


class CaptureHandler(logging.Handler):
    """Root-logger handler that turns records into LOGGER lines.

    Records of the engine's own loggers (``engine.*``, which report on the engine to the
    process's stderr) and of threads listed in ``ignored_threads`` (the reporter, whose gRPC
    traffic would otherwise log about itself) are skipped.
    """

    def __init__(self, buffer: LogBuffer, echo: TextIO | None = None) -> None:
        super().__init__(logging.NOTSET)
        self._buffer = buffer
        self._echo = echo
        self._echo_format = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.ignored_threads: set[int] = set()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Capture ``record`` as one line (its traceback included)."""
        if record.thread in self.ignored_threads or record.name.startswith("engine."):
            return
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._buffer.write(
            record.levelno,
            LogStream.LOGGER,
            record.name,
            text,
            _task_run_here(),
            None,
            current_subflow_run(),
        )
        if self._echo is not None:
            with suppress(Exception):  # the echo is a courtesy; the line is captured
                self._echo.write(self._echo_format.format(record) + "\n")


class Capture:
    """The installed capture: the root handler, the replaced streams, system lines."""

    def __init__(self, buffer: LogBuffer, stdout: LineWriter, stderr: LineWriter) -> None:
        self.buffer = buffer
        self.handler = CaptureHandler(buffer, echo=stderr.original)
        self.stdout = stdout
        self.stderr = stderr

    def system(self, text: str, level: int = logging.INFO, subflow_run: str = "") -> None:
        """Write one of the engine's own lines about the run (or one of its subflows);
        echoed to the original stderr."""
        self.buffer.write(level, LogStream.SYSTEM, SYSTEM_LOGGER, text, "", None, subflow_run)
        with suppress(OSError, ValueError):
            print(f"[flowyard] {text}", file=self.stderr.original, flush=True)

    def task_change(self, change: TaskRunChange) -> None:
        """Write a task run's change as a line that carries it (``flowyard_sdk.events``'s
        listener while the flow runs); echoed to the original stderr unless it is DEBUG."""
        self.buffer.write(
            change.level,
            LogStream.SYSTEM,
            TASKS_LOGGER,
            change.text,
            change.name,
            change,
            current_subflow_run(),
        )
        if change.level > logging.DEBUG:
            with suppress(OSError, ValueError):
                print(f"[flowyard] {change.text}", file=self.stderr.original, flush=True)

    def flush_partial(self) -> None:
        """Capture lines still waiting for a newline on stdout and stderr."""
        for writer in (self.stdout, self.stderr):
            writer.flush()
            writer.flush_partial()


@contextmanager
def capture_output(buffer: LogBuffer, level: int = logging.INFO) -> Iterator[Capture]:
    """Install the capture for the duration of the block, then restore everything.

    ``level`` becomes the root logger's level. Partial lines are captured on exit.
    """
    original_out, original_err = sys.stdout, sys.stderr
    capture = Capture(
        buffer,
        LineWriter(buffer, LogStream.STDOUT, logging.INFO, original_out),
        LineWriter(buffer, LogStream.STDERR, logging.ERROR, original_err),
    )
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(capture.handler)
    root.setLevel(level)
    sys.stdout, sys.stderr = capture.stdout, capture.stderr
    try:
        yield capture
    finally:
        capture.flush_partial()
        sys.stdout, sys.stderr = original_out, original_err
        root.removeHandler(capture.handler)
        root.setLevel(previous_level)


def _task_run_here() -> str:
    """The name of the task run the calling thread (or asyncio task) is in, or ""."""
    return runtime.task_run.name or ""
