"""Checks on request input. Each failure is an ``InvalidArgument`` naming the field.

The one exception is a stored parameter schema that cannot be evaluated (it was accepted
before the checks here existed): running a deployment with it is ``FailedPrecondition``,
since only a new ``UpsertDeployment`` can fix it.

JSON fields are parsed strictly: one object, at most ``MAX_JSON_BYTES``, nested at most
``MAX_JSON_DEPTH`` levels, finite numbers of sane length, no unpaired surrogate escapes, so that
whatever is stored can be written back as standard JSON by any database and any client.
JSON Schemas (a deployment's parameter schema, a pool's job variables) may refer only to their
own parts (``#/...`` and anchors): evaluating them never fetches anything, and a reference that
loops back to itself without descending into the value is refused before it can recurse forever.
Their regular expressions (``pattern``, ``patternProperties``) nest groups at most
``MAX_PATTERN_NESTING`` deep: Python compiles a regular expression recursively, one level of
its stack per group, so a short pattern of nested groups could otherwise exhaust the stack of
the request that compiles it. Values are matched against them in bounded time
(``flowyard_common.schemas``), which is why ``unevaluatedProperties``, whose matching cannot
be bounded, may not be used beside ``patternProperties``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

from control_plane.errors import FailedPrecondition, FlowyardError, InvalidArgument
from flowyard_common import schemas
from flowyard_common.messages import shown as shown  # quoted values, for every check

POOL_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RUN_ID = re.compile(r"[0-9a-f]{32}")
#: A prefix of a run id: shorter ones would match too many runs to be of use.
RUN_ID_PREFIX = re.compile(r"[0-9a-f]{4,32}")
MAX_JSON_BYTES = 1 << 20
#: Deep enough for any Kubernetes manifest or generated schema, shallow enough that
#: recursive code (schema validation, copying, rendering) stays far from the stack limit.
MAX_JSON_DEPTH = 32
MAX_JSON_NUMBER_DIGITS = 100
#: Far deeper than any regular expression written by hand; compiling one costs about two
#: stack frames per level.
MAX_PATTERN_NESTING = 32
#: What to do about a pool whose template cannot be evaluated (pools cannot be changed).
POOL_FIX = "create a pool with a corrected base_job_template_json and move the deployment there"

#: Evaluating a schema never retrieves anything: references resolve within the schema only.
_NO_RETRIEVAL: Registry[Any] = Registry()


def pool_name(value: str, field: str = "name") -> str:
    """A valid pool name, or InvalidArgument."""
    if not POOL_NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field}: {shown(value)} is not a valid pool name: use 1-63 lowercase letters, "
            "digits and '-', starting with a letter"
        )
    return value


def deployment_name(value: str, field: str = "name") -> str:
    """A valid deployment name, or InvalidArgument."""
    if not DEPLOYMENT_NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field}: {shown(value)} is not a valid deployment name: use 1-100 letters, "
            "digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value


def run_id(value: str, field: str = "run_id") -> str:
    """A well-formed run id, or InvalidArgument."""
    if not RUN_ID.fullmatch(value):
        raise InvalidArgument(
            f"{field}: {shown(value)} is not a run id (32 lowercase hex characters)"
        )
    return value


def run_id_prefix(value: str, field: str = "run_id_prefix") -> str:
    """A prefix of a run id (4 to 32 lowercase hex characters), or InvalidArgument."""
    if not RUN_ID_PREFIX.fullmatch(value):
        raise InvalidArgument(
            f"{field}: {shown(value)} is not a prefix of a run id "
            "(4 to 32 lowercase hex characters)"
        )
    return value


def text(value: str, field: str, max_chars: int, *, required: bool = False) -> str:
    """Free text to store: bounded, and without NUL (which PostgreSQL cannot store)."""
    if required and not value.strip():
        raise InvalidArgument(f"{field}: required")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field}: longer than {max_chars} characters ({len(value)})")
    if "\x00" in value:
        raise InvalidArgument(f"{field}: must not contain NUL characters")
    return value


def concurrency_limit(value: int, field: str = "concurrency_limit") -> int:
    """A concurrency limit of a pool, queue or deployment: 0 (unlimited) or more."""
    if value < 0:
        raise InvalidArgument(f"{field}: must be 0 (unlimited) or more, got {value}")
    return value


def json_object(text: str, field: str) -> dict[str, Any]:
    """Parse a JSON object field; empty text is {}."""
    if len(text) > MAX_JSON_BYTES or len(text.encode(errors="replace")) > MAX_JSON_BYTES:
        raise InvalidArgument(f"{field}: larger than {MAX_JSON_BYTES} bytes")
    if not text.strip():
        return {}

    def constant(name: str) -> Any:
        raise InvalidArgument(f"{field}: not valid JSON: {name} is not a JSON number")

    def number(literal: str, kind: Callable[[str], Any]) -> Any:
        if len(literal) > MAX_JSON_NUMBER_DIGITS:
            raise InvalidArgument(
                f"{field}: a number longer than {MAX_JSON_NUMBER_DIGITS} characters"
            )
        value = kind(literal)
        if value in (float("inf"), float("-inf")):
            raise InvalidArgument(f"{field}: the number {literal} is too large")
        return value

    try:
        value = json.loads(
            text,
            parse_constant=constant,
            parse_float=lambda s: number(s, float),
            parse_int=lambda s: number(s, int),
        )
    except RecursionError:
        raise InvalidArgument(f"{field}: nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{field}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: must be a JSON object, got {type(value).__name__}")
    _check_json_value(value, field)
    return value


def _check_json_value(value: Any, field: str) -> None:
    """Depth and strings of a parsed document (iteratively: it may be deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _encodable(item, field)
            continue
        if isinstance(item, dict):
            children: list[Any] = list(item.values())
            for key in item:
                _encodable(key, field)
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgument(f"{field}: nested more than {MAX_JSON_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _encodable(value: str, field: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{field}: the string {shown(value)} contains an unpaired surrogate escape "
            "(\\ud800-\\udfff), which is not valid Unicode"
        ) from None


def json_schema(schema: dict[str, Any], field: str) -> dict[str, Any]:
    """A valid JSON Schema (draft 2020-12) describing an object, or InvalidArgument."""
    schema_patterns(schema, field)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidArgument(f"{field}: not a valid JSON Schema: {exc.message}") from None
    except RecursionError:
        # What schema_patterns cannot foresee; the caller's input, never a server failure.
        raise InvalidArgument(
            f"{field}: the schema is nested too deeply to be checked; simplify it"
        ) from None
    if schema.get("type", "object") != "object":
        raise InvalidArgument(f'{field}: must describe an object ("type": "object")')
    schema_references(schema, field)
    return schema


# -- regular expressions within a schema ---------------------------------------------------------


def schema_patterns(schema: Any, field: str) -> None:
    """Refuse a ``pattern`` or ``patternProperties`` key that nests its groups too deeply.

    Checked before anything compiles them (``check_schema`` does, to validate them).
    """
    if not isinstance(schema, dict):
        return
    stack: list[tuple[str, Any]] = [("", schema)]
    unevaluated = keyed = ""
    while stack:
        where, node = stack.pop()
        if not isinstance(node, dict):
            continue
        patterns = [(f"{where}/pattern", node.get("pattern"))]
        if isinstance(node.get("patternProperties"), dict):
            patterns += [(f"{where}/patternProperties", key) for key in node["patternProperties"]]
            keyed = keyed or f"{where}/patternProperties"
        if "unevaluatedProperties" in node:
            unevaluated = unevaluated or f"{where}/unevaluatedProperties"
        if unevaluated and keyed:
            # That keyword matches patternProperties' keys with Python's ``re``, which a
            # pattern that backtracks holds for as long as it takes (flowyard_common.schemas).
            raise InvalidArgument(
                f"{field}: {unevaluated} cannot be used in a schema with patternProperties "
                f"({keyed}); use additionalProperties beside them instead"
            )
        for at, pattern in patterns:
            if isinstance(pattern, str) and (depth := _nesting(pattern)) > MAX_PATTERN_NESTING:
                raise InvalidArgument(
                    f"{field}: {at}: the regular expression {shown(pattern)} nests groups "
                    f"{depth} deep; at most {MAX_PATTERN_NESTING} levels are allowed"
                )
        stack += [(where + suffix, child) for suffix, child, _ in _subschemas(node)]
        if "contentSchema" in node:
            stack.append((f"{where}/contentSchema", node["contentSchema"]))


def _nesting(pattern: str) -> int:
    """How deep the groups of a regular expression nest (escapes and classes skipped)."""
    depth = deepest = 0
    escaped = False
    class_start = -1  # where the character class being read opened, -1 outside one
    for index, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif class_start >= 0:
            # "]" first in a class ("[]" or "[^]") is a literal, not its end.
            first = index == class_start + 1 or (
                index == class_start + 2 and pattern[class_start + 1] == "^"
            )
            if char == "]" and not first:
                class_start = -1
        elif char == "[":
            class_start = index
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(depth - 1, 0)
    return deepest


# -- references within a schema ---------------------------------------------------------------

# Keywords whose subschemas apply to the value itself, to its parts, or to nothing directly.
_IN_PLACE = ("not", "if", "then", "else")
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAPS = ("dependentSchemas",)
_DESCENDING = (
    "items",
    "contains",
    "additionalProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_DESCENDING_LISTS = ("prefixItems",)
_DESCENDING_MAPS = ("properties", "patternProperties")
_DEFINITIONS = ("$defs", "definitions")
_REFERENCES = ("$ref", "$dynamicRef")


def _subschemas(schema: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """``(pointer suffix, subschema, applies to the same value)`` for each subschema."""
    for key in (*_IN_PLACE, *_DESCENDING):
        if key in schema:
            yield f"/{key}", schema[key], key in _IN_PLACE
    for key in (*_IN_PLACE_LISTS, *_DESCENDING_LISTS):
        items = schema.get(key)
        if isinstance(items, list):
            for index, item in enumerate(items):
                yield f"/{key}/{index}", item, key in _IN_PLACE_LISTS
    for key in (*_IN_PLACE_MAPS, *_DESCENDING_MAPS, *_DEFINITIONS):
        entries = schema.get(key)
        if isinstance(entries, dict):
            for name, item in entries.items():
                escaped = str(name).replace("~", "~0").replace("/", "~1")
                yield f"/{key}/{escaped}", item, key in _IN_PLACE_MAPS


def schema_references(schema: Any, field: str) -> None:
    """Refuse references that would fetch, point nowhere, or loop without consuming the value.

    Only references within the schema are allowed (``#``, ``#/json/pointer``, ``#anchor``),
    and no ``$id`` (which would move their base elsewhere).
    """
    if not isinstance(schema, dict):
        return
    anchors: dict[str, Any] = {}
    found: list[tuple[str, str, Any, dict[str, Any]]] = []
    located: dict[int, str] = {}
    stack: list[tuple[str, Any]] = [("", schema)]
    while stack:
        where, node = stack.pop()
        if not isinstance(node, dict):
            continue
        located[id(node)] = where or "/"
        if "$id" in node:
            raise InvalidArgument(
                f"{field}: {where or '/'}: $id is not supported; refer to other parts of the "
                "schema with '#/...'"
            )
        for keyword in ("$anchor", "$dynamicAnchor"):
            if isinstance(node.get(keyword), str):
                anchors[node[keyword]] = node
        found += [(where, k, node[k], node) for k in _REFERENCES if k in node]
        stack += [(where + suffix, child) for suffix, child, _ in _subschemas(node)]

    targets: dict[int, list[Any]] = {}
    for where, keyword, reference, node in found:
        at = f"{keyword} {shown(reference)} at {where or '/'}"
        if not isinstance(reference, str) or not reference.startswith("#"):
            raise InvalidArgument(
                f"{field}: {at}: only references within the schema ('#/...') are allowed"
            )
        target = _resolve(schema, reference[1:], anchors)
        if target is None:
            raise InvalidArgument(f"{field}: {at} points nowhere in the schema")
        targets.setdefault(id(node), []).append(target)

    def in_place(node: dict[str, Any]) -> list[dict[str, Any]]:
        children = [child for _, child, same in _subschemas(node) if same]
        children += targets.get(id(node), [])
        return [child for child in children if isinstance(child, dict)]

    looping = _on_a_cycle(schema, in_place)
    if looping is not None:
        raise InvalidArgument(
            f"{field}: the references at {located.get(id(looping), '/')} lead back to the same "
            "place without descending into the value, so no value could ever be checked"
        )


def _resolve(root: dict[str, Any], fragment: str, anchors: dict[str, Any]) -> Any:
    fragment = unquote(fragment)
    if not fragment:
        return root
    if not fragment.startswith("/"):
        return anchors.get(fragment)
    node = json_pointer(root, fragment)
    return node if isinstance(node, dict | bool) else None


def json_pointer(root: Any, pointer: str) -> Any:
    """The value at JSON Pointer ``pointer`` (``/a/0/b``, RFC 6901) in ``root``, or None."""
    node: Any = root
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _on_a_cycle(
    root: dict[str, Any], edges: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> dict[str, Any] | None:
    """A schema on a cycle of in-place edges, if there is one (iterative depth-first search)."""
    done: set[int] = set()
    for start in _walk(root):
        if id(start) in done:
            continue
        path: set[int] = {id(start)}
        stack: list[tuple[dict[str, Any], Iterator[dict[str, Any]]]] = [(start, iter(edges(start)))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.discard(id(node))
                done.add(id(node))
            elif id(child) in path:
                return node
            elif id(child) not in done:
                path.add(id(child))
                stack.append((child, iter(edges(child))))
    return None


def _walk(root: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack += [child for _, child, _ in _subschemas(node)]


# -- evaluating schemas -------------------------------------------------------------------------


@contextlib.contextmanager
def evaluating(what: str, error: type[FlowyardError], fix: str = "") -> Iterator[None]:
    """Turn a schema that cannot be evaluated into ``error`` saying which one, why, and how
    to fix it."""
    try:
        yield
    except RecursionError:
        why = "it nests too deeply (references that recurse without end, or deep patterns)"
    except Unresolvable as exc:
        why = f"the reference {shown(exc.ref)} cannot be resolved"
    else:
        return
    raise error(f"{what} cannot be evaluated: {why}" + (f"; {fix}" if fix else ""))


def parameters(values: dict[str, Any], schema: dict[str, Any] | None, flow: str) -> None:
    """Check run parameters against a deployment's parameter schema.

    The message names the parameter: an unknown one (with the accepted names), a missing
    required one, or one whose value has the wrong type.
    """
    with evaluating(
        f"the parameter schema of flow {flow!r}",
        FailedPrecondition,
        "correct the deployment's parameter_schema_json",
    ):
        _parameters(values, schema, flow)


def partial_parameters(values: dict[str, Any], schema: dict[str, Any] | None, flow: str) -> None:
    """Check default parameters: like ``parameters`` but required ones may be left out."""
    if schema:
        with evaluating("deployment.parameter_schema_json", InvalidArgument):
            _parameters(values, {**schema, "required": []}, flow)


def _parameters(values: dict[str, Any], schema: dict[str, Any] | None, flow: str) -> None:
    if not schema:
        return
    properties = schema.get("properties", {})
    accepted = ", ".join(sorted(properties)) or "none"
    if schema.get("additionalProperties") is False and not schema.get("patternProperties"):
        unknown = sorted(set(values) - set(properties))
        if unknown:
            names = ", ".join(shown(name) for name in unknown)
            raise InvalidArgument(
                f"parameters: unknown parameter {names} for flow {flow!r}; "
                f"accepted parameters: {accepted}"
            )
    missing = [name for name in schema.get("required", []) if name not in values]
    if missing:
        names = ", ".join(shown(name) for name in missing)
        raise InvalidArgument(f"parameters: missing required parameter {names} for flow {flow!r}")
    validator = schemas.validator(schema, "parameters", _parameters_validator)
    errors = sorted(schemas.errors(validator, values), key=lambda e: [str(p) for p in e.path])
    if errors:
        error = errors[0]
        where = ".".join(str(part) for part in error.absolute_path) or "(parameters)"
        raise InvalidArgument(f"parameters: {where}: {_problem(error)}")


def _parameters_validator(schema: dict[str, Any]) -> Any:
    return schemas.Validator(
        schema, registry=_NO_RETRIEVAL, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def _problem(error: ValidationError) -> str:
    """jsonschema's message, made specific where it is vague ("not valid under any of the
    given schemas" says nothing about what would have been valid)."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    options = schema.get("anyOf") or schema.get("oneOf")
    if error.validator in ("anyOf", "oneOf") and isinstance(options, list):
        expected = [_expected(option) for option in options if isinstance(option, dict)]
        return f"{shown(error.instance)} is not {' or '.join(expected)}"
    if error.validator == "enum" and isinstance(schema.get("title"), str):
        return f"{error.message} ({schema['title']})"
    return error.message


def _expected(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(shown(value) for value in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = " or ".join(map(str, kind))
    if isinstance(schema.get("format"), str):
        return f"a {schema['format']} {kind or 'value'}"
    if isinstance(schema.get("title"), str):
        return f"a {schema['title']} ({kind or 'value'})"
    if not kind:
        return "a value of another shape"
    return f"{'an' if str(kind)[0] in 'aeiou' else 'a'} {kind}"
