"""The project file, ``flowyard.yaml``: deployments declared next to the code.

The file is checked against :data:`PROJECT_SCHEMA` (JSON Schema) before anything is sent, so a
mistyped key is reported with the file, the deployment and the key. Each entry becomes a
``flowyard.v1.Deployment`` carrying every field the user wrote; a local ``source.path`` is
relative to the file. The parameter schema is derived from the code on this machine (never
by importing it): from the local path, or for git and archive sources from the local checkout
when the entrypoint's file is there (the usual case: the file sits in the repository).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from engine.errors import EngineError
from engine.schema import parameter_schema
from flowyard.v1 import types_pb2
from flowyard_common.entrypoints import EntrypointKind, parse_entrypoint

__all__ = ["PROJECT_SCHEMA", "Declared", "ProjectError", "load_project", "with_schema"]

DEFAULT_FILE = "flowyard.yaml"

_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
_REL_PATH = {"type": "string", "minLength": 1}


def _strict(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


_CREDENTIALS = _strict(
    {
        "username": _STRING,
        "token_env": _STRING,
        "token_secret": _strict({"name": _STRING, "key": _STRING}, ["name", "key"]),
    }
)
_SOURCE = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "local": _strict({"path": _REL_PATH}, ["path"]),
        "git": _strict(
            {
                "url": _STRING,
                "ref": _STRING,
                "subdirectory": _STRING,
                "shallow": {"type": "boolean"},
                "credentials": _CREDENTIALS,
            },
            ["url"],
        ),
        "archive": _strict({"url": _STRING, "sha256": _STRING, "subdirectory": _STRING}, ["url"]),
    },
    "additionalProperties": False,
}
_SCHEDULE = _strict(
    {
        "name": _STRING,
        "cron": _STRING,
        "timezone": _STRING,
        "interval": {"type": "integer", "minimum": 1},
        "anchor_time": {"type": "string", "format": "date-time"},
        "paused": {"type": "boolean"},
        "parameters": _OBJECT,
    }
)
_SCHEDULE["oneOf"] = [{"required": ["cron"]}, {"required": ["interval"]}]

PROJECT_SCHEMA: dict[str, Any] = _strict(
    {
        "deployments": {
            "type": "array",
            "minItems": 1,
            "items": _strict(
                {
                    "name": _STRING,
                    "entrypoint": _STRING,
                    "flow_name": _STRING,
                    "source": _SOURCE,
                    "pool": _STRING,
                    "queue": _STRING,
                    "parameters": _OBJECT,
                    "job_variables": _OBJECT,
                    "schedules": {"type": "array", "items": _SCHEDULE},
                    "retries": {"type": "integer", "minimum": 0},
                    "retry_delay_seconds": {"type": "integer", "minimum": 0},
                    "concurrency_limit": {"type": "integer", "minimum": 0},
                    "collision_strategy": {"enum": ["enqueue", "cancel_new"]},
                    "tags": {"type": "array", "items": _STRING},
                    "description": _STRING,
                    "version": _STRING,
                    "paused": {"type": "boolean"},
                },
                ["name", "entrypoint", "pool"],
            ),
        }
    },
    ["deployments"],
)
"""What ``flowyard.yaml`` may contain (JSON Schema draft 2020-12)."""

_COLLISIONS = {
    "enqueue": types_pb2.COLLISION_STRATEGY_ENQUEUE,
    "cancel_new": types_pb2.COLLISION_STRATEGY_CANCEL_NEW,
}


class ProjectError(click.ClickException):
    """The project file cannot be used; the message names the file, deployment and key."""


@dataclass(frozen=True)
class Declared:
    """One deployment as the file declares it, and where to find its code on this machine."""

    deployment: types_pb2.Deployment
    local_code: Path | None
    """The directory the entrypoint is relative to, if it exists here (for the schema)."""


def load_project(path: Path, only: str = "") -> list[Declared]:
    """Read and check ``path``; the deployments it declares (only ``only``, if given).

    Raises:
        ProjectError: the file is missing, not YAML, does not fit the schema, or names no
            deployment called ``only``.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProjectError(
            f"{path}: no such file (write a {DEFAULT_FILE}, pass --file, or give an entrypoint)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ProjectError(f"{path}: not valid YAML: {exc}") from None
    errors = sorted(
        Draft202012Validator(
            PROJECT_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
        ).iter_errors(document),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        raise ProjectError(_describe(path, document, errors[0]))
    entries: list[dict[str, Any]] = document["deployments"]
    names = [entry["name"] for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ProjectError(f"{path}: deployment {duplicates[0]!r} is declared more than once")
    if only and only not in names:
        raise ProjectError(f"{path}: no deployment named {only!r} (declared: {', '.join(names)})")
    base = path.resolve().parent
    return [_declared(entry, base) for entry in entries if not only or entry["name"] == only]


def _describe(path: Path, document: Any, error: ValidationError) -> str:
    where = list(error.absolute_path)
    prefix = str(path)
    if len(where) >= 2 and where[0] == "deployments" and isinstance(where[1], int):
        entry = document["deployments"][where[1]]
        name = entry.get("name") if isinstance(entry, dict) else None
        prefix += (
            f": deployment {name!r}" if isinstance(name, str) else f": deployments[{where[1]}]"
        )
        where = where[2:]
    key = ".".join(str(part) for part in where)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        at = f" in {key}" if key else ""
        return f"{prefix}: unknown key {unknown[0]!r}{at} (allowed: {', '.join(allowed)})"
    if error.validator == "required":
        at = f" in {key}" if key else ""
        return f"{prefix}: {error.message}{at}"
    if error.validator in ("minProperties", "maxProperties") and key.endswith("source"):
        return f"{prefix}: {key}: give exactly one of local, git or archive"
    if error.validator == "oneOf" and "schedules" in key:
        return f"{prefix}: {key}: give either cron or interval"
    return f"{prefix}: {key or 'file'}: {error.message}"


def _declared(entry: dict[str, Any], base: Path) -> Declared:
    source_doc = entry.get("source") or {"local": {"path": "."}}
    local_code: Path | None
    if "local" in source_doc:
        directory = (base / source_doc["local"]["path"]).resolve()
        source = types_pb2.Source(local=types_pb2.LocalSource(path=str(directory)))
        local_code = directory
    else:
        source = json_format.ParseDict(source_doc, types_pb2.Source())
        subdirectory = next(iter(source_doc.values())).get("subdirectory", "")
        root = _repository_root(base) if "git" in source_doc else base
        local_code = root / subdirectory if subdirectory else root
    deployment = types_pb2.Deployment(
        name=entry["name"],
        entrypoint=entry["entrypoint"],
        flow_name=entry.get("flow_name", ""),
        source=source,
        pool=entry["pool"],
        queue=entry.get("queue", ""),
        parameters_json=json.dumps(entry.get("parameters", {})),
        job_variables_json=json.dumps(entry.get("job_variables", {})),
        schedules=[_schedule(item) for item in entry.get("schedules", [])],
        retries=entry.get("retries", 0),
        retry_delay_seconds=entry.get("retry_delay_seconds", 0),
        concurrency_limit=entry.get("concurrency_limit", 0),
        collision_strategy=_COLLISIONS.get(
            entry.get("collision_strategy", ""), types_pb2.COLLISION_STRATEGY_UNSPECIFIED
        ),
        tags=entry.get("tags", []),
        description=entry.get("description", ""),
        version=entry.get("version", ""),
        paused=entry.get("paused", False),
    )
    return Declared(deployment, local_code)


def _schedule(item: dict[str, Any]) -> types_pb2.Schedule:
    schedule = types_pb2.Schedule(
        name=item.get("name", ""),
        paused=item.get("paused", False),
        parameters_json=json.dumps(item["parameters"]) if "parameters" in item else "",
    )
    if "cron" in item:
        schedule.cron.CopyFrom(
            types_pb2.CronSchedule(expression=item["cron"], timezone=item.get("timezone", ""))
        )
    else:
        interval = types_pb2.IntervalSchedule(seconds=item["interval"])
        if "anchor_time" in item:
            anchor = Timestamp()
            anchor.FromDatetime(
                datetime.fromisoformat(item["anchor_time"].replace("Z", "+00:00")).astimezone(UTC)
            )
            interval.anchor_time.CopyFrom(anchor)
        schedule.interval.CopyFrom(interval)
    return schedule


def _repository_root(directory: Path) -> Path:
    """The top of the git checkout holding ``directory`` (``directory`` itself if none)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return directory
    top = done.stdout.strip()
    return Path(top) if done.returncode == 0 and top else directory


def with_schema(declared: Declared) -> tuple[types_pb2.Deployment, str]:
    """The deployment with its parameter schema, and a note when none could be derived.

    A local source must hold the entrypoint (its absence is an error now, not at run time);
    for git and archive sources a missing local copy only means no schema.

    Raises:
        click.ClickException: the entrypoint is malformed, or a local source lacks it or
            has a syntax error there.
    """
    deployment = types_pb2.Deployment()
    deployment.CopyFrom(declared.deployment)
    is_local = deployment.source.WhichOneof("kind") == "local"
    directory = declared.local_code
    try:
        entrypoint = parse_entrypoint(deployment.entrypoint)
    except (EngineError, ValueError) as exc:
        raise click.ClickException(f"deployment {deployment.name!r}: {exc}") from None
    if (
        not is_local
        and entrypoint.kind is EntrypointKind.FILE
        and (directory is None or not (directory / entrypoint.target).is_file())
    ):
        return deployment, (
            f"no parameter schema: {entrypoint.target} is not in a local checkout "
            f"({directory}); runs' parameters are checked by the flow's signature only"
        )
    if directory is None:
        return deployment, "no parameter schema: the code is not on this machine"
    try:
        schema = parameter_schema(directory, deployment.entrypoint)
    except (EngineError, ValueError) as exc:
        if is_local:
            raise click.ClickException(f"deployment {deployment.name!r}: {exc}") from None
        return deployment, f"no parameter schema: {exc}"
    deployment.parameter_schema_json = json.dumps(schema)
    return deployment, ""
