"""The web UI's pages: rendered on the server from the same use cases as the API.

Pages are plain HTML from Jinja templates (``templates/``), usable without a script; the one
script, ``static/flowyard.js`` (no framework, no build step), makes them live: the runs list
re-renders its rows when runs change, a run page follows its state and its logs over
Server-Sent Events, and the Run and Cancel buttons call the JSON API.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane import metrics
from control_plane.api.errors import status_of
from control_plane.errors import FlowyardError, NotFound, PermissionDenied, Unauthenticated
from control_plane.models import Run
from control_plane.orchestration import clock
from control_plane.states import StateType
from control_plane.web import auth, documents
from control_plane.web.api import UPCOMING, agents_of, state_types, time_param
from control_plane.web.errors import (
    HTTP_STATUS,
    domain_error,
    error_response,
    unexpected,
    unexpected_error,
)
from control_plane.web.services import Services, admitted, busy, services

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
#: Runs per page of the runs list.
PAGE_SIZE = 50
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return ""
    seconds = ((end or clock.now()) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


TEMPLATES.filters["duration"] = lambda run: _duration(run.started_at, run.ended_at)
TEMPLATES.filters["when"] = _when
#: An RFC 3339 time of a document as the pages show times.
TEMPLATES.filters["stamp"] = lambda value: value[:19].replace("T", " ") if value else ""
TEMPLATES.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
TEMPLATES.filters["level"] = lambda value: LEVELS.get(value, str(value))
TEMPLATES.globals["iso"] = documents.time
TEMPLATES.globals["state_types"] = [t.value for t in StateType]


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from its template."""
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status)


def page(handler: Any) -> Any:
    """A page that needs a logged-in admin: the login page otherwise, errors as a page."""

    refusals = metrics.ADMISSION_REFUSALS.labels(f"http:{handler.__name__}")

    async def endpoint(request: Request) -> Response:
        found = services(request)
        with admitted(found, refusals) as refused:
            if refused is not None:
                response = render("error.html", 429, title="Busy", message=refused.message)
                response.headers["Retry-After"] = busy(refused).headers["Retry-After"]
                return response
            return await _answer(request, found)

    async def _answer(request: Request, found: Services) -> Response:
        try:
            await auth.authenticate(request, found.tokens)
        except (Unauthenticated, PermissionDenied):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        except Exception as error:
            return failure_page(handler.__name__, error)
        try:
            response: Response = await found.db.shielded(handler(request, found))
            return response
        except FlowyardError as error:
            status = HTTP_STATUS.get(status_of(error), 500)
            return render(
                "error.html",
                status,
                title="Not found" if isinstance(error, NotFound) else "Error",
                message=str(error),
            )
        except Exception as error:
            return failure_page(handler.__name__, error)

    endpoint.__name__ = handler.__name__
    return endpoint


def failure_page(name: str, error: Exception) -> Response:
    """The page for anything but a domain error: 503 with Retry-After when the database could
    not serve it now, 500 for a bug (``web.errors.unexpected``)."""
    answer = unexpected(name, error)
    title = "Unavailable" if answer.code is grpc.StatusCode.UNAVAILABLE else "Error"
    response = render("error.html", answer.http_status, title=title, message=answer.message)
    response.headers.update(answer.headers)
    return response


@page
async def runs_page(request: Request, found: Services) -> Response:
    """The runs list, filtered like ``GET /api/v1/runs``; ``?rows=1`` renders the rows only
    (the page re-reads them when runs change)."""
    params = request.query_params
    selected = [s.upper() for s in params.getlist("state") if s]
    runs, token = await found.runs.list(
        params.get("deployment", ""),
        state_types(selected),
        PAGE_SIZE,
        params.get("page_token", ""),
        pool_name=params.get("pool", ""),
        created_since=time_param(request, "since"),
        created_until=time_param(request, "until"),
    )
    filters = {k: v for k, v in params.multi_items() if k != "page_token" and k != "rows" and v}
    context: dict[str, Any] = {
        "runs": runs,
        "next_page": f"/runs?{urlencode([*filters.items(), ('page_token', token)])}"
        if token
        else "",
        "filters": params,
        "selected": selected,
        "deployments": [d.name for d in await found.catalog.list_deployments("")],
        "pools": [p.name for p in await found.catalog.list_pools()],
        "reason": _reason,
    }
    if params.get("rows"):
        return render("run_rows.html", **context)
    return render("runs.html", title="Runs", nav="runs", **context)


def _reason(run: Run) -> str:
    """Why a run that has not started waits, or how it ended, in a few words."""
    if run.state_name and run.state_name.upper() != run.state_type.value:
        return run.state_name + (f": {run.state_message}" if run.state_message else "")
    return run.state_message


@page
async def run_page(request: Request, found: Services) -> Response:
    """One run: header, timeline, attempts, parameters, infrastructure, task runs, logs."""
    run, history = await found.runs.get(request.path_params["run_id"])
    task_runs, _ = await found.task_runs.list(run.id, "", 0, "")
    children = await found.runs.children(run.id)
    attempts: dict[int, list[Any]] = {}
    for state in history:
        attempts.setdefault(state.attempt, []).append(state)
    return render(
        "run.html",
        title=f"Run {run.id[:8]}",
        nav="runs",
        run=run,
        attempts=attempts,
        task_runs=task_runs,
        children=children,
    )


async def run_logs_text(request: Request) -> Response:
    """The run's lines stored so far as plain text, for the Download button."""
    found = services(request)
    try:
        await auth.authenticate(request, found.tokens)
        lines: list[str] = []
        batches = found.following.lines(request.path_params["run_id"], 0, 0, follow=False)
        async for _, batch in batches:
            lines.extend(
                f"{_when(line.timestamp)} {LEVELS.get(line.level, line.level):<8} {line.text}"
                for line in batch or ()
            )
    except FlowyardError as error:
        return domain_error(error)
    except Exception as error:
        return unexpected_error("run_logs_text", error)
    run_id = request.path_params["run_id"]
    return PlainTextResponse(
        "\n".join(lines) + ("\n" if lines else ""),
        headers={"Content-Disposition": f'attachment; filename="{run_id}.log"'},
    )


@page
async def deployments_page(request: Request, found: Services) -> Response:
    """Every deployment."""
    deployments = await found.catalog.list_deployments(request.query_params.get("pool", ""))
    return render(
        "deployments.html", title="Deployments", nav="deployments", deployments=deployments
    )


@page
async def deployment_page(request: Request, found: Services) -> Response:
    """One deployment: source, pool and queue, schedules with next runs, and the Run form."""
    deployment, statuses = await found.schedules.list(request.path_params["name"], UPCOMING)
    runs, _ = await found.runs.list(deployment.name, [], 10, "")
    return render(
        "deployment.html",
        title=deployment.name,
        nav="deployments",
        deployment=deployment,
        statuses=statuses,
        runs=runs,
        reason=_reason,
        schema=deployment.parameter_schema or {},
        defaults=deployment.parameters,
    )


@page
async def pools_page(request: Request, found: Services) -> Response:
    """Pools: queues, limits, paused, connected agents."""
    pools = await found.catalog.list_pools()
    queues = await found.queues.by_pool()
    agents = await agents_of(found, pools)
    return render(
        "pools.html",
        title="Pools",
        nav="pools",
        pools=[(p, queues.get(p.id, []), agents.get(p.id, [])) for p in pools],
    )


async def login(request: Request) -> Response:
    """The login form (GET), or a login with a token (POST)."""
    target = request.query_params.get("next", "/runs")
    if not target.startswith("/") or target.startswith("//"):
        target = "/runs"  # only this site's pages: a login link cannot send the user away
    if request.method == "GET":
        return render("login.html", title="Log in", next=target)
    form = await request.form()
    token = str(form.get("token", "")).strip()
    found = services(request)
    try:
        if not token:
            raise Unauthenticated("enter a token")
        principal = await found.tokens.verify(token)
        if principal.kind.value != "admin":
            raise PermissionDenied(f"{principal.describe()} cannot log in: it needs an admin token")
    except (Unauthenticated, PermissionDenied) as error:
        return render("login.html", 401, title="Log in", next=target, error=str(error))
    except Exception as error:
        answer = unexpected("login", error)
        refused = render(
            "login.html", answer.http_status, title="Log in", next=target, error=answer.message
        )
        refused.headers.update(answer.headers)
        return refused
    response = RedirectResponse(target, status_code=303)
    auth.start_session(response, request, token)
    return response


async def logout(request: Request) -> Response:
    """End the browser's session."""
    response = RedirectResponse("/login", status_code=303)
    auth.end_session(response)
    return response


async def home(request: Request) -> Response:
    """The runs list is the home page."""
    return RedirectResponse("/runs", status_code=307)


async def not_found(request: Request, exc: Exception) -> Response:
    """404 as JSON under /api, as a page elsewhere."""
    if request.url.path.startswith("/api/"):
        return error_response(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {request.url.path}")
    return render("error.html", 404, title="Not found", message=f"No page at {request.url.path}.")


ROUTES = [
    Route("/", home),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/runs", runs_page),
    Route("/runs/{run_id}", run_page),
    Route("/runs/{run_id}/logs.txt", run_logs_text),
    Route("/deployments", deployments_page),
    Route("/deployments/{name}", deployment_page),
    Route("/pools", pools_page),
]
