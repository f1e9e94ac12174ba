"""API errors as the kube-apiserver reports them: an HTTP status plus a ``Status`` object.

There is one exception, :class:`ApiError`; every failure the fake API server answers is one of
them, raised wherever the rule lives (store, validation, selectors, faults) and turned into a
response in one place (``server.py``). The constructors below reproduce the real server's
``reason``, ``message`` and ``details`` wording, so ``kubernetes.client.ApiException`` sees the
same ``status``, ``reason`` (the HTTP phrase) and ``body`` as against a real cluster.

Faithful: message formats (``jobs.batch "x" not found``, ``Job.batch "x" is invalid: ...``,
``too old resource version: 1 (5)``), ``details`` with name/group/kind/causes, ``Retry-After``
on 429. Simplified: ``details.causes`` carry only the first-level field path and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakekube.resources import Resource

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class ApiError(Exception):
    """A failed API request: HTTP ``code`` and the ``Status`` fields that describe it."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        """The ``Status`` object the API server sends as the response body."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(resource: Resource, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.plural
    return details


def forbidden_cluster_scope(resource: Resource, verb: str) -> ApiError:
    """What RBAC answers a service account that may not ``verb`` ``resource`` cluster-wide."""
    return ApiError(
        403,
        "Forbidden",
        f'{resource.qualified} is forbidden: User "system:serviceaccount:flowyard:'
        f'flowyard-agent" cannot {verb} resource "{resource.plural}" in API group '
        f'"{resource.group}" at the cluster scope',
        {"group": resource.group, "kind": resource.plural},
    )


def not_found(resource: Resource, name: str) -> ApiError:
    """``jobs.batch "x" not found`` (404)."""
    return ApiError(
        404, "NotFound", f'{resource.qualified} "{name}" not found', _details(resource, name)
    )


def already_exists(resource: Resource, name: str) -> ApiError:
    """``jobs.batch "x" already exists`` (409)."""
    return ApiError(
        409,
        "AlreadyExists",
        f'{resource.qualified} "{name}" already exists',
        _details(resource, name),
    )


def conflict(resource: Resource, name: str) -> ApiError:
    """A write based on a stale ``resourceVersion`` (409 Conflict)."""
    message = (
        f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, _details(resource, name))


@dataclass(frozen=True)
class Cause:
    """One invalid field: ``reason`` is e.g. FieldValueRequired, ``message`` the human text."""

    field: str
    reason: str
    message: str


def invalid(resource: Resource, name: str, causes: list[Cause]) -> ApiError:
    """``Job.batch "x" is invalid: <field>: <message>`` (422) with one cause per field."""
    texts = [f"{cause.field}: {cause.message}" for cause in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {
        "name": name,
        **({"group": resource.group} if resource.group else {}),
        "kind": resource.kind,
        "causes": [
            {"reason": cause.reason, "message": cause.message, "field": cause.field}
            for cause in causes
        ],
    }
    return ApiError(
        422, "Invalid", f'{resource.qualified_kind} "{name}" is invalid: {summary}', details
    )


def expired(requested: int, current: int) -> ApiError:
    """``too old resource version: N (M)`` (410 Gone, reason Expired)."""
    return ApiError(410, "Expired", f"too old resource version: {requested} ({current})")


def bad_request(message: str) -> ApiError:
    """A request the server cannot interpret (400)."""
    return ApiError(400, "BadRequest", message)


def injected(code: int) -> ApiError:
    """A failure the test asked for: the server's usual wording for that status code."""
    reason = REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    if code == 429:
        return ApiError(
            429,
            reason,
            "Too many requests, please try again later.",
            {"retryAfterSeconds": 1},
            {"Retry-After": "1"},
        )
    if code == 500:
        return ApiError(
            500,
            reason,
            "Internal error occurred: injected fault",
            {"causes": [{"message": "injected fault"}]},
        )
    return ApiError(code, reason, f"injected fault ({code})")
