"""The JSON API under ``/api/v1/``: what the web UI reads and writes, for any HTTP client.

Each route parses the request, calls the same use case as the gRPC method of the same job, and
answers a document of ``control_plane.web.documents``; errors come back as the gRPC API's
status and message (``control_plane.web.errors``). The event streams are in
``control_plane.web.events``; ``openapi.py`` describes all of it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control_plane.errors import InvalidArgument
from control_plane.models import Pool
from control_plane.orchestration.runs import RunRequest
from control_plane.states import StateType
from control_plane.store import cluster as cluster_repo
from control_plane.web import documents
from control_plane.web.documents import Document
from control_plane.web.services import Services, api, json_body

#: Next times shown for each schedule of a deployment.
UPCOMING = 5


def _int(request: Request, name: str, default: int = 0) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"{name}: must be an integer, got {raw!r}") from None


def time_param(request: Request, name: str) -> datetime | None:
    """The query parameter ``name`` as a time (None when absent), or InvalidArgument."""
    return parse_time(request.query_params.get(name, ""), name)


def parse_time(raw: str, name: str) -> datetime | None:
    """An RFC 3339 time with its zone (None for ""), or InvalidArgument naming ``name``."""
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{name}: must be an RFC 3339 time such as 2026-12-01T08:00:00Z, got {raw!r}"
        ) from None
    if value.tzinfo is None:
        raise InvalidArgument(f"{name}: give a time zone (Z or +hh:mm), got {raw!r}")
    return value


def state_types(values: list[str]) -> list[StateType]:
    """``?state=`` values (``RUNNING``, ``failed``...) as state types, or InvalidArgument."""
    types = []
    for value in values:
        try:
            types.append(StateType(value.upper()))
        except ValueError:
            known = ", ".join(t.value for t in StateType)
            raise InvalidArgument(f"state: {value!r} is not a state; one of {known}") from None
    return types


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: must be a string")
    return value


def _object_json(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name}: must be a JSON object")
    return json.dumps(value)


async def agents_of(services: Services, pools: list[Pool]) -> dict[str, list[Document]]:
    """The agents connected to each pool, over all replicas. Credit and last heartbeat are
    live for this replica's agents, and as of their replica's last heartbeat for others'."""
    local = {session.id: session for session in services.agents.all()}
    async with services.db.read() as conn:
        sessions = await cluster_repo.live_sessions(conn, [pool.id for pool in pools])
        hosts = await cluster_repo.replica_hosts(conn, [record.replica_id for record in sessions])
    agents: dict[str, list[Document]] = {}
    for record in sessions:
        session = local.get(record.id)
        agents.setdefault(record.pool_id, []).append(
            {
                "name": record.agent_name,
                "capacity": record.capacity,
                "free_credit": session.credits if session else record.free_credit,
                "connect_time": documents.time(record.connected_at),
                "last_seen_time": documents.time(
                    session.last_seen if session else record.last_seen_at
                ),
                "replica": record.replica_id,
                # Where that replica serves (host:port pid N), to tell it among others.
                "replica_host": hosts.get(record.replica_id, ""),
            }
        )
    return agents


@api
async def list_pools(request: Request, services: Services) -> Document:
    """Every work pool, with its queues and connected agents."""
    pools = await services.catalog.list_pools()
    queues = await services.queues.by_pool()
    agents = await agents_of(services, pools)
    return {"pools": [documents.pool(p, queues.get(p.id, []), agents.get(p.id, [])) for p in pools]}


@api
async def get_pool(request: Request, services: Services) -> Document:
    """One work pool."""
    pool = await services.catalog.get_pool(request.path_params["name"])
    agents = await agents_of(services, [pool])
    return documents.pool(pool, await services.queues.of_pool(pool.id), agents.get(pool.id, []))


@api
async def list_deployments(request: Request, services: Services) -> Document:
    """Every deployment (of ``?pool=``)."""
    found = await services.catalog.list_deployments(request.query_params.get("pool", ""))
    return {"deployments": [documents.deployment(d) for d in found]}


@api
async def get_deployment(request: Request, services: Services) -> Document:
    """One deployment, with the next times of its schedules."""
    deployment, statuses = await services.schedules.list(request.path_params["name"], UPCOMING)
    return documents.deployment(deployment, statuses)


@api
async def create_run(request: Request, services: Services) -> JSONResponse:
    """A new run of a deployment (201), or the run its idempotency key already made (200)."""
    body = await json_body(request)
    unknown = set(body) - {
        "parameters",
        "job_variables",
        "idempotency_key",
        "queue",
        "scheduled_time",
    }
    if unknown:
        raise InvalidArgument(f"unknown fields: {', '.join(sorted(unknown))}")
    scheduled_at = parse_time(_text(body, "scheduled_time"), "scheduled_time")
    run, created = await services.runs.create(
        RunRequest(
            deployment_name=request.path_params["name"],
            parameters_json=_object_json(body, "parameters"),
            job_variables_json=_object_json(body, "job_variables"),
            idempotency_key=_text(body, "idempotency_key"),
            queue=_text(body, "queue"),
            scheduled_at=scheduled_at,
        )
    )
    return JSONResponse(
        {"run": documents.run(run), "created": created}, status_code=201 if created else 200
    )


@api
async def pause_deployment(request: Request, services: Services) -> Document:
    """Pause or resume a deployment, or one of its schedules (``{"paused": bool,
    "schedule": name}``)."""
    body = await json_body(request)
    paused = body.get("paused")
    if not isinstance(paused, bool):
        raise InvalidArgument("paused: must be true or false")
    deployment = await services.schedules.pause(
        request.path_params["name"], _text(body, "schedule"), paused
    )
    return documents.deployment(deployment)


@api
async def list_runs(request: Request, services: Services) -> Document:
    """One page of runs, newest first, filtered by state, deployment, pool and creation time."""
    params = request.query_params
    runs, token = await services.runs.list(
        params.get("deployment", ""),
        state_types(params.getlist("state")),
        _int(request, "page_size"),
        params.get("page_token", ""),
        run_id_prefix=params.get("id_prefix", ""),
        pool_name=params.get("pool", ""),
        created_since=time_param(request, "since"),
        created_until=time_param(request, "until"),
    )
    return {"runs": [documents.run(r) for r in runs], "next_page_token": token}


@api
async def get_run(request: Request, services: Services) -> Document:
    """One run: its state history, task runs (first page), subflows and counts."""
    run_id = request.path_params["run_id"]
    run, history = await services.runs.get(run_id)
    counts = await services.task_runs.counts(run.id)
    children = await services.runs.children(run.id)
    task_runs, token = await services.task_runs.list(run.id, "", 0, "")
    return {
        "run": documents.run(run),
        "history": [documents.state(h) for h in history],
        "task_run_counts": documents.task_run_counts(counts),
        "task_runs": [documents.task_run(t) for t in task_runs],
        "task_runs_next_page_token": token,
        "children": [documents.run(child) for child in children],
    }


@api
async def list_task_runs(request: Request, services: Services) -> Document:
    """One page of a run's task runs, in the order they started."""
    records, token = await services.task_runs.list(
        request.path_params["run_id"],
        request.query_params.get("task_name", ""),
        _int(request, "page_size"),
        request.query_params.get("page_token", ""),
    )
    return {"task_runs": [documents.task_run(r) for r in records], "next_page_token": token}


@api
async def cancel_run(request: Request, services: Services) -> Document:
    """Cancel a run (``{"reason": text}``, optional)."""
    body = await json_body(request)
    run = await services.runs.cancel(request.path_params["run_id"], _text(body, "reason"))
    return {"run": documents.run(run)}


ROUTES = [
    Route("/api/v1/pools", list_pools),
    Route("/api/v1/pools/{name}", get_pool),
    Route("/api/v1/deployments", list_deployments),
    Route("/api/v1/deployments/{name}", get_deployment),
    Route("/api/v1/deployments/{name}/runs", create_run, methods=["POST"]),
    Route("/api/v1/deployments/{name}/pause", pause_deployment, methods=["POST"]),
    Route("/api/v1/runs", list_runs),
    Route("/api/v1/runs/{run_id}", get_run),
    Route("/api/v1/runs/{run_id}/task-runs", list_task_runs),
    Route("/api/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
]
