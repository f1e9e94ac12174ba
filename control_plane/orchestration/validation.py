"""Checks on request input. Each failure is an ``InvalidArgument`` naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from control_plane.errors import InvalidArgument

POOL_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_JSON_BYTES = 1 << 20


def pool_name(value: str, field: str = "name") -> str:
    """A valid pool name, or InvalidArgument."""
    if not POOL_NAME.match(value):
        raise InvalidArgument(
            f"{field}: {value!r} is not a valid pool name: use 1-63 lowercase letters, digits "
            "and '-', starting with a letter"
        )
    return value


def deployment_name(value: str, field: str = "name") -> str:
    """A valid deployment name, or InvalidArgument."""
    if not DEPLOYMENT_NAME.match(value):
        raise InvalidArgument(
            f"{field}: {value!r} is not a valid deployment name: use 1-100 letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return value


def run_id(value: str, field: str = "run_id") -> str:
    """A well-formed run id, or InvalidArgument."""
    if not RUN_ID.match(value):
        raise InvalidArgument(f"{field}: {value!r} is not a run id (32 lowercase hex characters)")
    return value


def json_object(text: str, field: str) -> dict[str, Any]:
    """Parse a JSON object field; empty text is {}."""
    if not text.strip():
        return {}
    if len(text.encode()) > MAX_JSON_BYTES:
        raise InvalidArgument(f"{field}: larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{field}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: must be a JSON object, got {type(value).__name__}")
    return value


def json_schema(schema: dict[str, Any], field: str) -> dict[str, Any]:
    """A valid JSON Schema (draft 2020-12) describing an object, or InvalidArgument."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidArgument(f"{field}: not a valid JSON Schema: {exc.message}") from None
    if schema.get("type", "object") != "object":
        raise InvalidArgument(f'{field}: must describe an object ("type": "object")')
    return schema


def parameters(values: dict[str, Any], schema: dict[str, Any] | None, flow: str) -> None:
    """Check run parameters against a deployment's parameter schema.

    The message names the parameter: an unknown one (with the accepted names), a missing
    required one, or one whose value has the wrong type.
    """
    if not schema:
        return
    properties = schema.get("properties", {})
    accepted = ", ".join(sorted(properties)) or "none"
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(values) - set(properties))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise InvalidArgument(
                f"parameters: unknown parameter {names} for flow {flow!r}; "
                f"accepted parameters: {accepted}"
            )
    missing = [name for name in schema.get("required", []) if name not in values]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise InvalidArgument(f"parameters: missing required parameter {names} for flow {flow!r}")
    errors = sorted(Draft202012Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        where = ".".join(str(part) for part in error.absolute_path) or "(parameters)"
        raise InvalidArgument(f"parameters: {where}: {error.message}")


def partial_parameters(values: dict[str, Any], schema: dict[str, Any] | None, flow: str) -> None:
    """Check default parameters: like ``parameters`` but required ones may be left out."""
    if schema:
        parameters(values, {**schema, "required": []}, flow)
