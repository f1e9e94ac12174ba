"""JSON Schemas of annotation expressions, read from source with :mod:`ast`.

:func:`annotation_schema` maps one annotation; classes defined in the flow's file (enums,
pydantic models, dataclasses, TypedDicts) are passed in by name and read from their class
bodies, so nothing of the user's is imported. See :mod:`engine.schema` for the table.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

__all__ = ["annotation_schema", "literal_value"]

_SCALARS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "None": {"type": "null"},
    "NoneType": {"type": "null"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "time": {"type": "string", "format": "time"},
    "UUID": {"type": "string", "format": "uuid"},
    "Path": {"type": "string"},
    "PurePath": {"type": "string"},
    "bytes": {"type": "string"},
    "Decimal": {"type": ["number", "string"]},
}
_ARRAYS = {"list", "List", "tuple", "Tuple", "set", "Set", "frozenset", "FrozenSet", "Sequence"}
_OBJECTS = {"dict", "Dict", "Mapping"}
_ENUM_BASES = {"Enum", "StrEnum", "IntEnum", "Flag", "IntFlag"}
_MODEL_BASES = {"BaseModel"}
_TYPED_DICT_BASES = {"TypedDict"}
_NO_FIELD = object()


def literal_value(node: ast.expr) -> tuple[bool, Any]:
    """``(True, value)`` when ``node`` is a literal with a JSON form, else ``(False, None)``."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None
    return _jsonable(value)


def _jsonable(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if isinstance(value, dict):
        pairs = {key: _jsonable(item) for key, item in value.items()}
        ok = all(isinstance(key, str) for key in pairs) and all(k for k, _ in pairs.values())
        return ok, {key: item for key, (_, item) in pairs.items()}
    return False, None


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # typing.List, t.Optional, datetime.date
        return node.attr
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    return None


def annotation_schema(
    node: ast.expr, classes: Mapping[str, ast.ClassDef] | None = None
) -> dict[str, Any]:
    """The JSON Schema of one annotation expression (``{}`` when unknown)."""
    return _Reader(classes or {}).schema(node)


class _Reader:
    """Maps annotations, remembering which classes are being expanded (to stop recursion)."""

    def __init__(self, classes: Mapping[str, ast.ClassDef]) -> None:
        self._classes = classes
        self._expanding: set[str] = set()

    def schema(self, node: ast.expr) -> dict[str, Any]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                expression = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return {}
            return self.schema(expression)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return _any_of([self.schema(node.left), self.schema(node.right)])
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        name = _name_of(node)
        if isinstance(node, ast.Name) and node.id in self._classes:
            return self._class(self._classes[node.id])
        if name in _SCALARS:
            return dict(_SCALARS[name])
        if name in _ARRAYS:
            return {"type": "array"}
        if name in _OBJECTS:
            return {"type": "object"}
        return {}

    def _subscript(self, node: ast.Subscript) -> dict[str, Any]:
        base = _name_of(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional" and len(args) == 1:
            return _any_of([self.schema(args[0]), {"type": "null"}])
        if base == "Union":
            return _any_of([self.schema(arg) for arg in args])
        if base == "Annotated" and args:
            return self.schema(args[0])
        if base == "Literal":
            literals = [literal_value(arg) for arg in args]
            if all(ok for ok, _ in literals):
                return {"enum": [value for _, value in literals]}
            return {}
        if base in _ARRAYS:
            schema: dict[str, Any] = {"type": "array"}
            if base in ("tuple", "Tuple") and not (
                len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis
            ):
                # Fixed-length tuple[A, B]: one schema per position.
                schema["prefixItems"] = [self.schema(arg) for arg in args]
                schema["minItems"] = schema["maxItems"] = len(args)
                return schema
            items = self.schema(args[0])
            if items:
                schema["items"] = items
            return schema
        if base in _OBJECTS:
            schema = {"type": "object"}
            if len(args) == 2:
                values = self.schema(args[1])
                if values:
                    schema["additionalProperties"] = values
            return schema
        return {}

    # -- classes of the flow's own file ------------------------------------------------------

    def _class(self, node: ast.ClassDef) -> dict[str, Any]:
        if node.name in self._expanding:
            return {}  # recursive model: any value where it recurs
        bases = {_name_of(base) for base in node.bases}
        self._expanding.add(node.name)
        try:
            if bases & _ENUM_BASES:
                return _enum(node)
            if bases & _TYPED_DICT_BASES:
                total = all(
                    not (
                        k.arg == "total" and isinstance(k.value, ast.Constant) and not k.value.value
                    )
                    for k in node.keywords
                )
                return self._fields(node, required="all" if total else "none", extra=False)
            if bases & _MODEL_BASES or (bases & set(self._classes) and self._is_model(bases)):
                return self._fields(node, required="undefaulted", extra=True)
            if any(
                _name_of(d.func if isinstance(d, ast.Call) else d) == "dataclass"
                for d in node.decorator_list
            ):
                return self._fields(node, required="undefaulted", extra=False)
            return {}
        finally:
            self._expanding.discard(node.name)

    def _is_model(self, bases: set[str | None]) -> bool:
        """Whether one of ``bases`` is a model class of this file (a model's subclass)."""
        for base in bases:
            parent = self._classes.get(base or "")
            if parent is not None and {_name_of(b) for b in parent.bases} & _MODEL_BASES:
                return True
        return False

    def _fields(self, node: ast.ClassDef, *, required: str, extra: bool) -> dict[str, Any]:
        """An object schema of the class's annotated fields.

        ``required`` is "all" or "none" (TypedDict's ``total``), or "undefaulted" (models and
        dataclasses: the fields without a default).
        """
        properties: dict[str, Any] = {}
        names: list[str] = []
        for parent in node.bases:  # fields of a parent model or dataclass of this file come first
            if (
                isinstance(parent, ast.Name)
                and parent.id in self._classes
                and parent.id not in self._expanding
            ):
                inherited = self._class(self._classes[parent.id])
                properties.update(inherited.get("properties", {}))
                names += [r for r in inherited.get("required", []) if r not in names]
        for statement in node.body:
            if not isinstance(statement, ast.AnnAssign) or not isinstance(
                statement.target, ast.Name
            ):
                continue
            if _name_of(statement.annotation) == "ClassVar" or (
                isinstance(statement.annotation, ast.Subscript)
                and _name_of(statement.annotation.value) == "ClassVar"
            ):
                continue
            field = statement.target.id
            prop = self.schema(statement.annotation)
            default = _field_default(statement.value)
            if required == "all" or (required == "undefaulted" and default is _NO_FIELD):
                names.append(field)
            elif isinstance(default, tuple) and default[0]:
                prop = {**prop, "default": default[1]}
            properties[field] = prop
        schema: dict[str, Any] = {"title": node.name, "type": "object", "properties": properties}
        if names:
            schema["required"] = names
        if not extra:
            schema["additionalProperties"] = False
        return schema


def _field_default(value: ast.expr | None) -> object:
    """``_NO_FIELD`` (required), or ``(found, json_value)`` for a default, reading
    ``Field(default=...)`` / ``field(default=...)``; a factory counts as a default."""
    if value is None:
        return _NO_FIELD
    if isinstance(value, ast.Call) and _name_of(value.func) in ("Field", "field"):
        for keyword in value.keywords:
            if keyword.arg == "default":
                return literal_value(keyword.value)
            if keyword.arg == "default_factory":
                return (False, None)
        if value.args and not (
            isinstance(value.args[0], ast.Constant) and value.args[0].value is Ellipsis
        ):
            return literal_value(value.args[0])
        return _NO_FIELD
    return literal_value(value)


def _enum(node: ast.ClassDef) -> dict[str, Any]:
    values = []
    for statement in node.body:
        if isinstance(statement, ast.Assign) and all(
            isinstance(t, ast.Name) and not t.id.startswith("_") for t in statement.targets
        ):
            ok, value = literal_value(statement.value)
            if not ok:
                return {"title": node.name}  # auto() or a computed value: not knowable here
            values.append(value)
    return {"title": node.name, "enum": values}


def _any_of(options: list[dict[str, Any]]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for option in options:
        if option == {}:
            return {}  # "anything" absorbs the union
        members = option["anyOf"] if set(option) == {"anyOf"} else [option]
        for inner in members:
            if inner not in flat:
                flat.append(inner)
    return flat[0] if len(flat) == 1 else {"anyOf": flat}
