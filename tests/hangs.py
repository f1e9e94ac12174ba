"""What a test that hangs was waiting for.

A control plane running in the test's own event loop that stops answering leaves pytest-timeout
with nothing to show but an idle loop. ``report_hang_after`` arranges for the loop itself to
print, well before that timeout, every task's stack and (on PostgreSQL) what each connection to
the test's database is doing and which lock it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import Iterator

import psycopg

from tests.stores import conninfo

#: Reported this long into a test: before pytest-timeout's 120 s ends it.
HANG_REPORT_SECONDS = 90.0

_ACTIVITY = """
SELECT pid, state, wait_event_type, wait_event, pg_blocking_pids(pid) AS blocked_by,
       now() - xact_start AS in_transaction, left(query, 200) AS query
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


def _report(db_url: str | None) -> None:
    out = io.StringIO()
    out.write(f"--- still running after {HANG_REPORT_SECONDS:g} s: every task's stack ---\n")
    for task in asyncio.all_tasks():
        out.write(f"{task!r}\n")
        # Task.print_stack can fail on a frame without a line number: format frames here.
        for frame in task.get_stack(limit=25):
            code = frame.f_code
            out.write(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
    if db_url is not None:
        out.write("--- connections to the test database ---\n")
        try:
            with psycopg.connect(conninfo(db_url), connect_timeout=5) as connection:
                for row in connection.execute(_ACTIVITY):
                    out.write(f"{row}\n")
        except psycopg.Error as error:
            out.write(f"(could not ask the server: {error})\n")
    sys.stderr.write(out.getvalue())


@contextlib.contextmanager
def report_hang_after(db_url: str | None, seconds: float = HANG_REPORT_SECONDS) -> Iterator[None]:
    """Within a running loop: report as above if the block is still running after ``seconds``."""
    handle = asyncio.get_running_loop().call_later(seconds, _report, db_url)
    try:
        yield
    finally:
        handle.cancel()
