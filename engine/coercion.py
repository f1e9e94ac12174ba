"""Turning decoded JSON values into the types the flow function's annotations name.

JSON has no dates, enums, tuples or classes, so the engine converts where the annotation
says what is wanted and the conversion is unambiguous:

- ``int`` from a number with no fractional part (``7.0``: JSON Schema counts it as an
  integer, and JSON libraries decode it as a float); any other number is refused;
- ``float`` from an integer; ``tuple``/``set``/``frozenset`` from an array;
- ``Enum`` subclasses from one of their values (or, failing that, a member's name);
- ``datetime``/``date``/``time`` from ISO 8601 text (``Z`` accepted), ``UUID``, ``Path``
  and ``Decimal`` from text;
- pydantic models (``model_validate``, when pydantic is installed where the flow runs),
  dataclasses and TypedDicts from objects, field by field;
- recursively through ``list[X]``, ``dict[str, X]``, ``tuple[...]``, ``X | None`` and
  unions: a value that already is one of a union's types is converted as that type, else
  as the first type it can become, else passed as decoded.

Everything else is passed as decoded. A value that cannot become what its annotation asks
for (an unknown enum value, a malformed date, a model that does not validate) raises
:class:`CoercionError`, which :mod:`engine.params` reports naming the parameter.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import types
import typing
import uuid
from pathlib import PurePath
from typing import Any

__all__ = ["CoercionError", "coerce"]


class CoercionError(ValueError):
    """A value does not fit its annotation; the message says what was expected."""


def coerce(value: Any, annotation: Any) -> Any:
    """Convert a decoded JSON ``value`` to ``annotation`` where that is unambiguous.

    Raises:
        CoercionError: the annotation asks for a type the value cannot become.
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    type_args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return coerce(value, type_args[0])
    if origin in (typing.Union, types.UnionType):
        return _to_union(value, [arg for arg in type_args if arg is not type(None)])
    if origin is typing.Literal and isinstance(value, float) and value.is_integer():
        # Literal[2] given 2.0: the literal itself, as typed in the annotation.
        return next((arg for arg in type_args if arg == value and _is_int(arg)), value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, float):
        return _to_int(value)
    if isinstance(annotation, type):
        converted = _to_class(value, annotation)
        if converted is not _UNCHANGED:
            return converted
    if isinstance(value, list):
        return _coerce_list(value, annotation, origin, type_args)
    if isinstance(value, dict) and origin is dict and len(type_args) == 2:
        return {key: coerce(item, type_args[1]) for key, item in value.items()}
    return value


_UNCHANGED = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_int(value: float) -> int:
    if not value.is_integer():
        raise CoercionError(f"{value!r} is not an integer")
    return int(value)


def _to_union(value: Any, options: list[Any]) -> Any:
    if value is None or not options:
        return value
    if len(options) == 1:  # X | None
        return coerce(value, options[0])
    # A value that already is one of the types keeps it: 7.0 stays a float for int | float.
    for option in options:
        if _is_instance(value, option):
            return coerce(value, option)
    for option in options:
        try:
            converted = coerce(value, option)
        except CoercionError:
            continue
        if _is_instance(converted, option):
            return converted
    # Fits none of them: passed as decoded, as a value of an unknown annotation is.
    return value


def _is_instance(value: Any, annotation: Any) -> bool:
    """Whether ``value`` already is of the (outer) type ``annotation`` names."""
    cls = typing.get_origin(annotation) or annotation
    if cls is typing.Literal:
        return value in typing.get_args(annotation)
    if typing.is_typeddict(cls):
        return isinstance(value, dict)
    if not isinstance(cls, type):
        return False
    if cls in (int, float) and isinstance(value, bool):
        return False  # True is an int to Python, not to JSON
    return isinstance(value, cls)


_TEXT_TYPES: dict[type, tuple[str, Any]] = {
    datetime.datetime: ("an ISO 8601 date-time", datetime.datetime.fromisoformat),
    datetime.date: ("an ISO 8601 date", datetime.date.fromisoformat),
    datetime.time: ("an ISO 8601 time", datetime.time.fromisoformat),
    uuid.UUID: ("a UUID", uuid.UUID),
    decimal.Decimal: ("a decimal number", decimal.Decimal),
}


def _to_class(value: Any, cls: type) -> Any:
    if typing.is_typeddict(cls):  # no isinstance() for these: check it first
        if not isinstance(value, dict):
            return _UNCHANGED
        hints = _hints(cls)
        return {key: coerce(item, hints.get(key, Any)) for key, item in value.items()}
    if isinstance(value, cls) and not issubclass(cls, enum.Enum):
        return value
    if issubclass(cls, enum.Enum):
        return _to_enum(value, cls)
    for kind, (what, parse) in _TEXT_TYPES.items():
        # datetime is a date subclass: match the exact class asked for.
        if cls is kind:
            return _parse_text(value, what, parse, cls)
    if issubclass(cls, PurePath) and isinstance(value, str):
        return cls(value)
    if isinstance(value, dict):
        if callable(getattr(cls, "model_validate", None)):  # a pydantic model
            return _to_model(value, cls)
        if dataclasses.is_dataclass(cls):
            return _to_dataclass(value, cls)
    return _UNCHANGED


def _to_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        pass
    if isinstance(value, str) and value in cls.__members__:
        return cls.__members__[value]
    allowed = ", ".join(repr(member.value) for member in cls)
    raise CoercionError(f"{value!r} is not a valid {cls.__name__} (one of {allowed})")


def _parse_text(value: Any, what: str, parse: Any, cls: type) -> Any:
    if cls is decimal.Decimal and isinstance(value, int | float) and not isinstance(value, bool):
        return decimal.Decimal(str(value))
    if not isinstance(value, str):
        raise CoercionError(f"{value!r} is not {what} (expected a string)")
    text = value[:-1] + "+00:00" if cls is datetime.datetime and value.endswith("Z") else value
    try:
        return parse(text)
    except (ValueError, decimal.InvalidOperation):
        raise CoercionError(f"{value!r} is not {what}") from None


def _to_model(value: dict[str, Any], cls: type) -> Any:
    try:
        return cls.model_validate(value)  # type: ignore[attr-defined]
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise CoercionError(f"does not fit {cls.__name__}: {detail}") from None


def _to_dataclass(value: dict[str, Any], cls: type) -> Any:
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise CoercionError(
            f"unknown field {unknown[0]!r} for {cls.__name__} (fields: {', '.join(sorted(fields))})"
        )
    values = {key: coerce(item, hints.get(key, Any)) for key, item in value.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise CoercionError(f"does not fit {cls.__name__}: {exc}") from None


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {}


def _coerce_list(value: list[Any], annotation: Any, origin: Any, type_args: tuple[Any, ...]) -> Any:
    container = origin or annotation
    if container is tuple:
        if len(type_args) == 2 and type_args[1] is Ellipsis:
            return tuple(coerce(item, type_args[0]) for item in value)
        if type_args and len(type_args) == len(value):
            return tuple(coerce(item, arg) for item, arg in zip(value, type_args, strict=True))
        return tuple(value)
    if container in (list, set, frozenset):
        items = [coerce(item, type_args[0]) for item in value] if type_args else value
        if container is list:
            return items
        try:
            return container(items)
        except TypeError:  # unhashable items: leave it to the flow
            return value
    return value
