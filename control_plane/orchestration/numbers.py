"""Whole numbers where a parameter schema asks for integers: 7, not 7.0.

JSON Schema counts ``7.0`` as an integer, so a run created with ``n=7.0`` for ``n: int``
passes validation; stored as sent, it would reach the flow as a float and show as ``7.0``
everywhere. After validation, ``whole_numbers`` rewrites such values as integers wherever
the schema says integer (and not number), at any depth: properties, additional properties,
array items and tuple positions, through ``$ref`` within the schema and ``anyOf``/``oneOf``/
``allOf``. Values elsewhere are left as sent; the engine converts once more by the flow's
own annotations.
"""

from __future__ import annotations

from typing import Any

from control_plane.orchestration.validation import json_pointer

#: In-place hops ($ref, anyOf...) followed for one value; the schema checks at deploy time
#: refuse reference loops, this bounds a schema stored before they existed.
MAX_HOPS = 32

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def whole_numbers(value: Any, schema: dict[str, Any] | None) -> Any:
    """``value`` with integral floats made ints where ``schema`` says integer."""
    if not schema:
        return value
    return _Walk(schema).value(value, schema, 0)


class _Walk:
    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root

    def value(self, value: Any, schema: Any, hops: int) -> Any:
        if not isinstance(schema, dict) or hops > MAX_HOPS:
            return value
        reference = schema.get("$ref")
        if isinstance(reference, str):
            target = self._resolve(reference)
            if target is not None:
                value = self.value(value, target, hops + 1)
        for option in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
            value = self.value(value, option, hops + 1)
        for keyword in ("anyOf", "oneOf"):
            options = schema.get(keyword)
            if isinstance(options, list):
                value = self._choice(value, options, hops)
        if isinstance(value, float) and _says_integer(schema):
            return int(value) if value.is_integer() else value
        if isinstance(value, dict):
            return self._object(value, schema)
        if isinstance(value, list):
            return self._array(value, schema)
        return value

    def _choice(self, value: Any, options: list[Any], hops: int) -> Any:
        fitting = [o for o in options if isinstance(o, dict) and _fits_type(value, o)]
        if isinstance(value, float):
            # 7.0 under anyOf [integer, number] is a valid number: it stays as sent.
            if any(_says_number(o) for o in fitting):
                return value
            return next(
                (int(value) for o in fitting if _says_integer(o) and value.is_integer()), value
            )
        return self.value(value, fitting[0], hops + 1) if fitting else value

    def _object(self, value: dict[str, Any], schema: dict[str, Any]) -> Any:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties")
        return {key: self.value(item, properties.get(key, extra), 0) for key, item in value.items()}

    def _array(self, value: list[Any], schema: dict[str, Any]) -> Any:
        positions = schema.get("prefixItems")
        positions = positions if isinstance(positions, list) else []
        rest = schema.get("items")
        return [
            self.value(item, positions[index] if index < len(positions) else rest, 0)
            for index, item in enumerate(value)
        ]

    def _resolve(self, reference: str) -> Any:
        if reference == "#":
            return self._root
        if not reference.startswith("#/"):
            return None  # anchors and outside references: nothing to convert by
        return json_pointer(self._root, reference[1:])


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def _says_integer(schema: dict[str, Any]) -> bool:
    types = _types(schema)
    return "integer" in types and "number" not in types


def _says_number(schema: dict[str, Any]) -> bool:
    return "number" in _types(schema)


def _fits_type(value: Any, schema: dict[str, Any]) -> bool:
    types = _types(schema)
    if not types:
        return True
    if isinstance(value, float):
        return bool(types & {"integer", "number"})
    if isinstance(value, int) and not isinstance(value, bool):
        return bool(types & {"integer", "number"})
    if value is None:
        return "null" in types
    return _JSON_TYPES.get(type(value), "") in types
