"""Reading a run's task runs: one page at a time, or counted by state.

Task runs are written by the engine's log batches (``store/task_runs.py: apply_events``) and
ended by the run's state changes (``store/runs.py: compare_and_set``); this module only reads.
"""

from __future__ import annotations

import base64
import binascii

from control_plane.errors import InvalidArgument, NotFound
from control_plane.models import TaskRunRecord, TaskRunState
from control_plane.orchestration import validation
from control_plane.store import runs as runs_repo
from control_plane.store import task_runs as repo
from control_plane.store.db import Database

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
MAX_TASK_NAME_CHARS = 200
#: Longer than any token ListTaskRuns hands out (two numbers and an id, in base64).
MAX_PAGE_TOKEN_CHARS = 200


class TaskRuns:
    """The task runs of flow runs, for users."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self, run_id: str, task_name: str, page_size: int, page_token: str
    ) -> tuple[list[TaskRunRecord], str]:
        """One page of a run's task runs in the order they started, and the token of the next
        page ("" at the end); NOT_FOUND if there is no such run."""
        validation.run_id(run_id)
        validation.text(task_name, "task_name", MAX_TASK_NAME_CHARS)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size: must be between 1 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE}), "
                f"got {page_size}"
            )
        limit = page_size or DEFAULT_PAGE_SIZE
        after = _decode_page_token(page_token) if page_token else None
        async with self._db.read() as conn:
            if await runs_repo.get_run(conn, run_id) is None:
                raise NotFound(f"run {run_id} not found")
            page = await repo.list_page(
                conn, run_id, task_name=task_name, limit=limit + 1, after=after
            )
        if len(page) <= limit:
            return page, ""
        last = page[limit - 1]
        return page[:limit], _encode_page_token(last)

    async def counts(self, run_id: str) -> dict[TaskRunState, int]:
        """How many task runs a run has in each state."""
        validation.run_id(run_id)
        async with self._db.read() as conn:
            return await repo.counts(conn, run_id)


def _encode_page_token(last: TaskRunRecord) -> str:
    position = f"{last.flow_attempt}:{last.first_seq}:{last.id}"
    return base64.urlsafe_b64encode(position.encode()).decode()


def _decode_page_token(token: str) -> tuple[int, int, str]:
    try:
        if len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii():
            raise ValueError(token)
        attempt, seq, last_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 2)
        position = int(attempt), int(seq), last_id
        if position[0] < 1 or position[1] < 1 or not last_id:
            raise ValueError(token)
        return position
    except (ValueError, binascii.Error):
        raise InvalidArgument(
            "page_token: not a token ListTaskRuns returned; pass next_page_token as it came, "
            "or leave it empty for the first page"
        ) from None
