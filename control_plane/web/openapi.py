"""The OpenAPI 3.1 description of the JSON + Server-Sent-Events API, served at
``/api/v1/openapi.json``. A test checks it names exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}
_ERRORS = {str(code): _ERROR for code in (400, 401, 403, 404, 409, 503)}
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_OBJECT = {"type": "object"}
_SSE = {
    "200": {
        "description": "A stream of Server-Sent Events (text/event-stream).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_ERRORS,
}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": schema or _OBJECT}},
        },
        **_ERRORS,
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Flowyard control plane HTTP API",
        "version": "v1",
        "description": (
            "Pools, deployments, runs and their logs over JSON and Server-Sent Events, with the "
            "same tokens as the gRPC API: 'Authorization: Bearer <admin token>', or the "
            "browser's login cookie (state-changing requests then need X-CSRF-Token). Errors "
            'answer {"error": {"status": <gRPC status name>, "message": <text>}}.'
        ),
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "flowyard_session"},
        },
        "responses": {
            "Error": {
                "description": "The request failed; the message says why.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["error"],
                            "properties": {
                                "error": {
                                    "type": "object",
                                    "required": ["status", "message"],
                                    "properties": {
                                        "status": {"type": "string"},
                                        "message": {"type": "string"},
                                    },
                                }
                            },
                        }
                    }
                },
            }
        },
    },
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": {
        "/api/v1/pools": {"get": {"summary": "Every work pool", "responses": _ok("Pools")}},
        "/api/v1/pools/{name}": {
            "get": {"summary": "One work pool", "parameters": [_NAME], "responses": _ok("A pool")}
        },
        "/api/v1/deployments": {
            "get": {
                "summary": "Every deployment",
                "parameters": [_query("pool", "Only this pool's")],
                "responses": _ok("Deployments"),
            }
        },
        "/api/v1/deployments/{name}": {
            "get": {
                "summary": "One deployment with its schedules' next times",
                "parameters": [_NAME],
                "responses": _ok("A deployment"),
            }
        },
        "/api/v1/deployments/{name}/runs": {
            "post": {
                "summary": "Create a run of the deployment",
                "parameters": [_NAME],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "parameters": _OBJECT,
                                    "job_variables": _OBJECT,
                                    "idempotency_key": {"type": "string"},
                                    "queue": {"type": "string"},
                                    "scheduled_time": {"type": "string", "format": "date-time"},
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "201": {
                        "description": "Created",
                        "content": {"application/json": {"schema": _OBJECT}},
                    },
                    **_ok("The run its idempotency key made before"),
                },
            }
        },
        "/api/v1/deployments/{name}/pause": {
            "post": {
                "summary": "Pause or resume the deployment or one of its schedules",
                "parameters": [_NAME],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["paused"],
                                "properties": {
                                    "paused": {"type": "boolean"},
                                    "schedule": {"type": "string"},
                                },
                            }
                        }
                    }
                },
                "responses": _ok("The deployment"),
            }
        },
        "/api/v1/runs": {
            "get": {
                "summary": "One page of runs, newest first",
                "parameters": [
                    _query("state", "A state (repeat for several)"),
                    _query("deployment", "Only this deployment's"),
                    _query("pool", "Only this pool's"),
                    _query("since", "Created at or after (RFC 3339)"),
                    _query("until", "Created before (RFC 3339)"),
                    _query("id_prefix", "Ids starting with this"),
                    _query("page_size", "Up to 500 (default 50)", {"type": "integer"}),
                    _query("page_token", "next_page_token of the previous page"),
                ],
                "responses": _ok("Runs"),
            }
        },
        "/api/v1/runs/{run_id}": {
            "get": {
                "summary": "One run with its history, task runs and child runs",
                "parameters": [_RUN_ID],
                "responses": _ok("A run"),
            }
        },
        "/api/v1/runs/{run_id}/task-runs": {
            "get": {
                "summary": "One page of a run's task runs",
                "parameters": [
                    _RUN_ID,
                    _query("task_name", "Only this task's"),
                    _query("page_size", "Up to 500", {"type": "integer"}),
                    _query("page_token", "next_page_token of the previous page"),
                ],
                "responses": _ok("Task runs"),
            }
        },
        "/api/v1/runs/{run_id}/cancel": {
            "post": {
                "summary": "Cancel a run",
                "parameters": [_RUN_ID],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"reason": {"type": "string"}},
                            }
                        }
                    }
                },
                "responses": _ok("The run"),
            }
        },
        "/api/v1/runs/{run_id}/logs": {
            "get": {
                "summary": "The run's log lines as Server-Sent Events",
                "description": (
                    "'lines' events (a JSON array of lines; the id is 'attempt:seq' of the last), "
                    "'state' events, and one 'end' event once the run has ended and every line "
                    "was sent. Resumes after Last-Event-ID or ?after=attempt:seq."
                ),
                "parameters": [
                    _RUN_ID,
                    _query("after", "Resume after this position (attempt:seq)"),
                    _query("follow", "false: only the lines stored now", {"type": "boolean"}),
                ],
                "responses": _SSE,
            }
        },
        "/api/v1/runs/{run_id}/events": {
            "get": {
                "summary": "The run's changes as Server-Sent Events ('run', then 'end')",
                "parameters": [_RUN_ID],
                "responses": _SSE,
            }
        },
        "/api/v1/events": {
            "get": {
                "summary": "A 'changed' event whenever runs are created or change",
                "responses": _SSE,
            }
        },
        "/api/v1/openapi.json": {
            "get": {"summary": "This document", "security": [], "responses": _ok("OpenAPI")}
        },
    },
}
