"""Base job templates: check them, check job variables against them, and render them.

A work pool's base job template is ``{"job_configuration": {...}, "variables": <JSON Schema>}``,
Prefect's shape, so that a template written for Prefect needs few changes. ``variables``
declares what deployments and runs may set (with defaults); ``job_configuration`` is what a
runtime receives once every ``{{ name }}`` placeholder in it has been replaced:

* a string that is exactly one placeholder is replaced by the *typed* value (an object stays
  an object, a number a number); when the variable has no value the key is removed from its
  parent object, or the item from its list, so that unset fields simply vanish;
* a placeholder inside a longer string, or several in one string, is replaced by ``str()`` of
  the value, or by ``""`` when the variable has no value;
* ``{{ $NAME }}`` refers to the environment of whoever renders (the agent), not to a variable.

"No value" means absent or ``None``. Flowyard is stricter than Prefect: a job variable that the
schema does not declare is an error naming the declared ones, never silently ignored; values
are validated against the schema; defaults must satisfy their own schema.

This module is pure (dicts in, dicts out) so that the control plane can validate and dry-run
templates with exactly the code the agent renders them with. Every problem is a
:class:`TemplateError` whose message names the offending key and is meant for a person.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from jsonschema import Draft202012Validator, SchemaError, ValidationError

from flowyard_common import schemas

__all__ = [
    "PLACEHOLDER",
    "TemplateError",
    "apply_values",
    "check_job_variables",
    "check_template",
    "default_process_template",
    "expand_dot_keys",
    "placeholders",
    "resolve_variables",
]

PLACEHOLDER: Final = re.compile(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}")
"""``{{ name }}``; group 1 is the name. Names starting with ``$`` are environment references."""

# The one variable whose layers are merged key by key rather than replaced, as in Prefect:
# a run adding one environment variable should not drop the deployment's. Other object
# variables (labels, node selectors, ...) are replaced whole, so a later layer can remove an
# entry an earlier one set.
_DEEP_MERGED: Final = frozenset({"env"})

_TEMPLATE_KEYS: Final = ("job_configuration", "variables")


class TemplateError(ValueError):
    """A base job template or job variables that cannot work; the message names the key."""


class _Missing:
    """The result of a whole-value placeholder whose variable has no value."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


def check_template(template: dict[str, Any]) -> None:
    """Raise :class:`TemplateError` unless ``template`` is a well-formed base job template.

    Exactly the keys ``job_configuration`` (an object) and ``variables`` (a JSON Schema of
    ``"type": "object"``); each default satisfies its property's schema; every placeholder in
    ``job_configuration`` is declared in ``variables.properties``, except ``$`` references.
    """
    if not isinstance(template, dict):
        raise TemplateError("a base job template must be a JSON object")
    # Checked once per distinct template: an agent renders every run of its pool from the
    # same one, and checking a JSON Schema against its metaschema costs milliseconds.
    _check_template_text(json.dumps(template, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _check_template_text(text: str) -> None:
    template = json.loads(text)
    keys = set(template)
    if keys != set(_TEMPLATE_KEYS):
        problems = []
        if missing := sorted(set(_TEMPLATE_KEYS) - keys):
            problems.append(f"missing {', '.join(repr(k) for k in missing)}")
        if extra := sorted(str(k) for k in keys - set(_TEMPLATE_KEYS)):
            problems.append(f"unexpected {', '.join(repr(k) for k in extra)}")
        raise TemplateError(
            "a base job template must have exactly the keys 'job_configuration' and "
            f"'variables' ({'; '.join(problems)})"
        )
    if not isinstance(template["job_configuration"], dict):
        raise TemplateError("job_configuration must be a JSON object")
    schema = template["variables"]
    if not isinstance(schema, dict):
        raise TemplateError("variables must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "".join(f"[{part!r}]" for part in error.absolute_path)
        raise TemplateError(
            f"variables{where} is not a valid JSON Schema: {error.message}"
        ) from None
    if schema.get("type") != "object":
        raise TemplateError('variables must have "type": "object"')
    properties = _properties(schema)
    for name, prop in properties.items():
        if isinstance(prop, dict) and prop.get("default") is not None:
            invalid = _first_error(schemas.Validator(prop), prop["default"])
            if invalid is not None:
                where = "".join(f"[{part!r}]" for part in invalid.absolute_path)
                raise TemplateError(
                    f"variables.properties.{name}.default{where}: {invalid.message}"
                )
    used = placeholders(template["job_configuration"])
    undeclared = sorted({n for n in used if not n.startswith("$")} - set(properties))
    if undeclared:
        raise TemplateError(
            f"placeholder(s) {', '.join(undeclared)} used in job_configuration but not "
            "declared in variables.properties"
        )


def compact_json(value: Any) -> str:
    """Compact JSON text for a JSON field, keys in the order they were given.

    Never sorted: the order of a job template's ``env`` object becomes the order of the
    container's ``env`` list, and Kubernetes expands ``$(VAR)`` only from earlier entries.
    """
    return json.dumps(value, separators=(",", ":"))


def check_job_variables(values: dict[str, Any], template: dict[str, Any]) -> None:
    """Raise :class:`TemplateError` unless ``values`` fit the template's ``variables``.

    Every key must be declared (a dot key such as ``"env.FOO"`` counts as its first part and is
    expanded before validation); the values must satisfy the schema, ``required`` aside, since
    a deployment or a run sets only some variables.
    """
    if not isinstance(values, dict):
        raise TemplateError("job variables must be a JSON object")
    schema = template.get("variables")
    if not isinstance(schema, dict):
        raise TemplateError("the pool's template has no variables schema")
    properties = _properties(schema)
    unknown = sorted(str(key) for key in values if _top_key(str(key), properties) is None)
    if unknown:
        declared = ", ".join(sorted(properties)) or "nothing"
        noun = "job variable" if len(unknown) == 1 else "job variables"
        raise TemplateError(
            f"unknown {noun} {', '.join(repr(k) for k in unknown)}; "
            f"the pool's template declares: {declared}"
        )
    expanded = expand_dot_keys(values, properties)
    # A None value means "no value", which is always allowed: it unsets the variable.
    present = {key: value for key, value in expanded.items() if value is not None}
    error = _first_error(schemas.validator(schema, "optional", _optional_validator), present)
    if error is not None:
        path = [str(part) for part in error.absolute_path]
        where = ".".join(path) if path else "(all)"
        raise TemplateError(f"job variable {where}: {error.message}")


def _optional_validator(schema: dict[str, Any]) -> Any:
    # Deployments and runs set some variables only: nothing is required of them.
    return schemas.Validator({**schema, "required": []})


def resolve_variables(template: dict[str, Any], *layers: dict[str, Any]) -> dict[str, Any]:
    """The variables a job is rendered with: the schema's defaults, then each layer in order.

    Layers are usually the deployment's job variables, then the run's. A later layer replaces
    a variable, except ``env``, which is merged name by name (like Prefect). A ``None`` value
    unsets the variable (its default included). Dot keys are expanded first. The inputs are
    never modified and the result shares no objects with them.
    """
    schema = template.get("variables")
    properties = _properties(schema) if isinstance(schema, dict) else {}
    resolved: dict[str, Any] = {
        name: copy.deepcopy(prop["default"])
        for name, prop in properties.items()
        if isinstance(prop, dict) and prop.get("default") is not None
    }
    for layer in layers:
        for key, value in expand_dot_keys(layer, properties).items():
            if value is None:
                resolved.pop(key, None)
            elif (
                key in _DEEP_MERGED
                and isinstance(value, dict)
                and isinstance(resolved.get(key), dict)
            ):
                resolved[key] = {**resolved[key], **copy.deepcopy(value)}
            else:
                resolved[key] = copy.deepcopy(value)
    return resolved


def apply_values(
    job_configuration: Any, values: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
) -> Any:
    """Render ``job_configuration`` with ``values`` by the placeholder rules of this module.

    ``{{ $NAME }}`` is looked up in ``environ`` (no value when absent there); when ``environ``
    is None, as in a dry run, such placeholders are left as written. Returns a new structure
    and never modifies its arguments; a top-level value that renders to "no value" gives None.
    """
    rendered = _render(job_configuration, values, environ)
    return None if rendered is _MISSING else rendered


def default_process_template() -> dict[str, Any]:
    """The base job template of a ``process`` pool: only extra environment variables."""
    return {
        "job_configuration": {"env": "{{ env }}"},
        "variables": {
            "type": "object",
            "properties": {
                "env": {
                    "title": "Environment variables",
                    "description": (
                        "Extra environment variables for the engine process, name to value. "
                        "Run values are merged over deployment values name by name."
                    ),
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                }
            },
        },
    }


def placeholders(value: Any) -> list[str]:
    """The names of every placeholder in the string values of ``value``, in document order."""
    if isinstance(value, str):
        return PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [name for item in value.values() for name in placeholders(item)]
    if isinstance(value, list):
        return [name for item in value for name in placeholders(item)]
    return []


def expand_dot_keys(values: Mapping[str, Any], properties: Mapping[str, Any]) -> dict[str, Any]:
    """``{"env.FOO": "1"}`` → ``{"env": {"FOO": "1"}}``, merged with a plain ``env`` if given.

    A key that ``properties`` declares as it is stays as it is; otherwise it splits at its
    first dot only, so ``"node_selector.kubernetes.io/arch"`` sets the key
    ``kubernetes.io/arch``. Keys that match nothing are kept for the caller to reject.
    """
    expanded: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        top = _top_key(key, properties)
        if top is None or top == key:
            expanded[key] = copy.deepcopy(value)
        else:
            nested.setdefault(top, {})[key[len(top) + 1 :]] = copy.deepcopy(value)
    for top, entries in nested.items():
        base = expanded.get(top)
        if base is None:
            expanded[top] = entries
        elif isinstance(base, dict):
            expanded[top] = {**base, **entries}
        else:
            first = next(iter(entries))
            raise TemplateError(
                f"job variable '{top}.{first}' sets a key of {top}, but {top} is also given "
                "as a value that is not an object"
            )
    return expanded


def _top_key(key: str, properties: Mapping[str, Any]) -> str | None:
    """The declared variable that ``key`` sets (itself, or the part before its first dot)."""
    if key in properties:
        return key
    head, dot, _ = key.partition(".")
    if dot and head in properties:
        return head
    return None


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    return properties if isinstance(properties, dict) else {}


def _first_error(validator: Any, instance: Any) -> ValidationError | None:
    """The first error in path order, so that messages do not depend on dict ordering."""
    errors = sorted(
        schemas.errors(validator, instance), key=lambda e: [str(p) for p in e.absolute_path]
    )
    return errors[0] if errors else None


def _render(value: Any, values: Mapping[str, Any], environ: Mapping[str, str] | None) -> Any:
    if isinstance(value, str):
        return _render_string(value, values, environ)
    if isinstance(value, dict):
        rendered_dict = {}
        for key, item in value.items():
            rendered = _render(item, values, environ)
            if rendered is not _MISSING:
                rendered_dict[key] = rendered
        return rendered_dict
    if isinstance(value, list):
        rendered_list = [_render(item, values, environ) for item in value]
        return [item for item in rendered_list if item is not _MISSING]
    return copy.deepcopy(value)


def _render_string(text: str, values: Mapping[str, Any], environ: Mapping[str, str] | None) -> Any:
    whole = PLACEHOLDER.fullmatch(text)
    if whole is not None:
        name = whole.group(1)
        if name.startswith("$") and environ is None:
            return text
        value = _lookup(name, values, environ)
        return _MISSING if value is None else copy.deepcopy(value)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("$") and environ is None:
            return match.group(0)
        value = _lookup(name, values, environ)
        return "" if value is None else str(value)

    return PLACEHOLDER.sub(substitute, text)


def _lookup(name: str, values: Mapping[str, Any], environ: Mapping[str, str] | None) -> Any:
    if name.startswith("$"):
        return None if environ is None else environ.get(name[1:])
    return values.get(name)
