"""Base job templates and the job variables checked against them.

A base job template is ``{"job_configuration": {...}, "variables": <JSON Schema>}``. Job
variables given by a deployment or a run must be declared by the schema: an undeclared key is
rejected with the allowed keys, never silently ignored, and values must satisfy the schema.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from jsonschema import Draft202012Validator

from control_plane.errors import InvalidArgument
from control_plane.models import PoolType
from control_plane.orchestration import validation

PLACEHOLDER = re.compile(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}")

_ENV_VARIABLE = {
    "title": "Environment variables",
    "description": "Extra environment variables for the engine process or container.",
    "type": "object",
    "additionalProperties": {"type": "string"},
}

_PROCESS_TEMPLATE: dict[str, Any] = {
    "job_configuration": {"env": "{{ env }}"},
    "variables": {"type": "object", "properties": {"env": _ENV_VARIABLE}},
}

_KUBERNETES_TEMPLATE: dict[str, Any] = {
    "job_configuration": {
        "image": "{{ image }}",
        "namespace": "{{ namespace }}",
        "env": "{{ env }}",
    },
    "variables": {
        "type": "object",
        "properties": {
            "image": {"title": "Image", "type": "string"},
            "namespace": {"title": "Namespace", "type": "string", "default": "default"},
            "env": _ENV_VARIABLE,
        },
    },
}


def default_template(pool_type: PoolType) -> dict[str, Any]:
    """The base job template a pool of this type gets when it is created without one."""
    template = _PROCESS_TEMPLATE if pool_type is PoolType.PROCESS else _KUBERNETES_TEMPLATE
    return copy.deepcopy(template)


def check_template(template: dict[str, Any]) -> dict[str, Any]:
    """A well-formed base job template, or InvalidArgument saying what is wrong."""
    field = "base_job_template_json"
    unexpected = sorted(set(template) - {"job_configuration", "variables"})
    if unexpected or "job_configuration" not in template or "variables" not in template:
        raise InvalidArgument(
            f"{field}: must be an object with exactly the keys 'job_configuration' and 'variables'"
        )
    if not isinstance(template["job_configuration"], dict):
        raise InvalidArgument(f"{field}: 'job_configuration' must be an object")
    variables = template["variables"]
    if not isinstance(variables, dict):
        raise InvalidArgument(f"{field}: 'variables' must be a JSON Schema object")
    validation.json_schema(variables, f"{field}.variables")
    declared = set(variables.get("properties", {}))
    used = set(_placeholders(template["job_configuration"]))
    undeclared = sorted(name for name in used - declared if not name.startswith("$"))
    if undeclared:
        raise InvalidArgument(
            f"{field}: placeholder(s) {', '.join(undeclared)} used in job_configuration but "
            "not declared in variables.properties"
        )
    return template


def check_job_variables(values: dict[str, Any], template: dict[str, Any], field: str) -> None:
    """Reject job variables the pool's template does not declare or whose values do not fit."""
    schema = template.get("variables", {})
    properties = schema.get("properties", {})
    unknown = sorted(set(values) - set(properties))
    if unknown:
        allowed = ", ".join(sorted(properties)) or "none"
        raise InvalidArgument(
            f"{field}: unknown job variable {', '.join(repr(k) for k in unknown)}; "
            f"the pool's template declares: {allowed}"
        )
    errors = sorted(
        Draft202012Validator({**schema, "required": []}).iter_errors(values),
        key=lambda e: list(e.path),
    )
    if errors:
        error = errors[0]
        where = ".".join(str(part) for part in error.absolute_path)
        raise InvalidArgument(f"{field}: job variable {where}: {error.message}")


def _placeholders(value: Any) -> list[str]:
    if isinstance(value, str):
        return PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [name for item in value.values() for name in _placeholders(item)]
    if isinstance(value, list):
        return [name for item in value for name in _placeholders(item)]
    return []
