"""What an update of a deployment changes: whether anything, and which scheduled runs.

``flowyard deploy`` applies a whole project file every time, so most updates change nothing
or change only labels (description, tags, version). Such an update must not move
``update_time`` nor replace the runs the scheduler already created ahead of time: their ids
are what users and other systems hold on to.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from control_plane.models import Deployment


def same(old: Deployment, new: Deployment) -> bool:
    """Whether ``new`` says exactly what the stored ``old`` says (ids and times aside)."""
    return _document(old) == _document(new)


def _document(deployment: Deployment) -> str:
    fields = dataclasses.asdict(deployment)
    for server_set in ("id", "created_at", "updated_at"):
        fields.pop(server_set)
    # Compared as JSON text, not as Python values: 1, 1.0 and true are equal in Python but
    # are three different parameter values to a flow.
    return json.dumps(fields, sort_keys=True, default=str)


def stale_schedules(old: Deployment, new: Deployment) -> set[str] | None:
    """The schedules whose future runs no longer fit ``new``: None for all of them.

    A run created ahead of time carries copies of the deployment's pool, flow name,
    parameters (checked against its schema), queue and retries; a change to any of those, or
    pausing the deployment, makes every such run stale. Otherwise only the runs of a schedule
    that was changed, paused or removed are. Code, job variables, limits and labels are read
    when a run is dispatched or started, so changing them leaves the runs as they are.
    """
    if new.scheduling.paused or _run_copies(old) != _run_copies(new):
        return None
    kept = {schedule.name: schedule for schedule in new.scheduling.schedules}
    return {
        schedule.name
        for schedule in old.scheduling.schedules
        if _json(kept.get(schedule.name)) != _json(schedule)
    }


def _run_copies(deployment: Deployment) -> str:
    return _json(
        {
            "pool": deployment.pool_id,
            "flow_name": deployment.flow_name,
            "parameters": deployment.parameters,
            "parameter_schema": deployment.parameter_schema,
            "queue": deployment.scheduling.queue,
            "retries": deployment.scheduling.retries,
        }
    )


def _json(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, sort_keys=True, default=str)
