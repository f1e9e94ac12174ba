"""Applying deployments and saying what changed, field by field.

``flowyard deploy`` reads the current deployment, sends the new one only when something
differs, and prints ``created``, ``unchanged``, or each changed field with its old and new
value. The comparison is on what the server stored, so a field the server normalizes (a
lowercase sha256, a trailing ``/``) does not show up as a change on every deploy.

What is printed is what this deploy did, as the server tells it: of several deploys of a new
deployment at once, only the one whose call created it says ``created``; the others say
``unchanged``, or ``updated`` with what they changed in what the first one stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

__all__ = ["Applied", "apply_deployment", "changes"]

#: The fields a user declares, in the order changes are printed.
DECLARED_FIELDS = (
    "flow_name",
    "entrypoint",
    "source",
    "pool",
    "queue",
    "parameters_json",
    "parameter_schema_json",
    "job_variables_json",
    "schedules",
    "retries",
    "retry_delay_seconds",
    "concurrency_limit",
    "collision_strategy",
    "tags",
    "description",
    "version",
    "paused",
)
_SHOWN_CHARS = 80


@dataclass(frozen=True)
class Applied:
    """What one deploy did to one deployment."""

    name: str
    created: bool
    changed: list[tuple[str, str, str]]
    """(field, old, new) for each changed field; empty when unchanged."""

    def lines(self) -> list[str]:
        """``name: created`` / ``name: unchanged`` / ``name: updated`` and one line per field."""
        if self.created:
            return [f"{self.name}: created"]
        if not self.changed:
            return [f"{self.name}: unchanged"]
        return [f"{self.name}: updated"] + [
            f"  {field}: {old} → {new}" for field, old, new in self.changed
        ]


def apply_deployment(stub: Any, deployment: types_pb2.Deployment) -> Applied:
    """Create or update ``deployment`` unless the stored one already says the same."""
    existing = _current(stub, deployment.name)
    if existing is not None and not changes(existing, deployment):
        return Applied(deployment.name, False, [])
    response = stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
    if response.created:
        return Applied(deployment.name, True, [])
    # Compared with what the server had just before this call, not with what was read above:
    # another deploy may have created or changed it in between.
    return Applied(deployment.name, False, changes(response.previous, response.deployment))


def _current(stub: Any, name: str) -> types_pb2.Deployment | None:
    try:
        return stub.GetDeployment(pb.GetDeploymentRequest(name=name)).deployment  # type: ignore[no-any-return]
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise


def changes(old: types_pb2.Deployment, new: types_pb2.Deployment) -> list[tuple[str, str, str]]:
    """(field, old, new) for each declared field whose value differs; objects (source,
    parameters, job variables) are compared key by key (``source.git.ref``)."""
    found: list[tuple[str, str, str]] = []
    for field in DECLARED_FIELDS:
        before, after = _value(old, field), _value(new, field)
        if field == "flow_name" and not after:
            continue  # empty means "the function's name": the server fills it in
        name = field.removesuffix("_json")
        if before == after:
            if field == "job_variables_json" and _env_order(before) != _env_order(after):
                # Equal as dicts, yet a different Job: $(VAR) sees only earlier entries.
                shown = [_show(", ".join(_env_order(v))) for v in (before, after)]
                found.append((f"{name}.env (order)", shown[0], shown[1]))
            continue
        if field == "parameter_schema_json":
            found.append((name, "(previous signature)", "(derived from the flow's signature)"))
        elif isinstance(before, dict) and isinstance(after, dict):
            flat_before, flat_after = _flatten(before, name), _flatten(after, name)
            for key in sorted(set(flat_before) | set(flat_after)):
                if flat_before.get(key, _ABSENT) != flat_after.get(key, _ABSENT):
                    found.append(
                        (
                            key,
                            _show(flat_before.get(key, _ABSENT)),
                            _show(flat_after.get(key, _ABSENT)),
                        )
                    )
        else:
            found.append((name, _show(before), _show(after)))
    return found


_ABSENT = object()


def _env_order(variables: Any) -> list[str]:
    env = variables.get("env") if isinstance(variables, dict) else None
    return [str(key) for key in env] if isinstance(env, dict) else []


def _flatten(value: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat.update(_flatten(item, f"{prefix}.{key}"))
        else:
            flat[f"{prefix}.{key}"] = item
    return flat


def _value(deployment: types_pb2.Deployment, field: str) -> Any:
    if field.endswith("_json"):
        text = getattr(deployment, field)
        return (
            json.loads(text) if text.strip() else ({} if field != "parameter_schema_json" else None)
        )
    if field == "source":
        return json_format.MessageToDict(deployment.source, preserving_proto_field_name=True)
    if field == "schedules":
        return [
            json_format.MessageToDict(item, preserving_proto_field_name=True)
            for item in deployment.schedules
        ]
    if field == "collision_strategy":
        value = deployment.collision_strategy
        return types_pb2.CollisionStrategy.Name(value or types_pb2.COLLISION_STRATEGY_ENQUEUE)
    if field == "queue":
        return deployment.queue or "default"
    if field == "tags":
        return list(deployment.tags)
    return getattr(deployment, field)


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(unset)"
    text = repr(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
