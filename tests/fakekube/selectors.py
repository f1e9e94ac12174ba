"""Label and field selectors, parsed from the ``labelSelector``/``fieldSelector`` query strings.

Faithful: the label selector grammar (``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k``, ``!k``, ``k>1``, ``k<1``, comma-separated and all required), including
that ``!=`` and ``notin`` match objects without the label; 400 BadRequest for a selector that does
not parse. Simplified: field selectors accept any dotted path (``metadata.name``,
``status.phase``, ``spec.nodeName``...) with ``=``, ``==``, ``!=`` instead of the per-kind list of
supported fields the real server enforces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakekube.errors import bad_request

Obj = dict[str, Any]
Requirement = Callable[[dict[str, str]], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_COMPARE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=|>|<)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class Selector:
    """A label selector and a field selector; both empty match everything."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def matches(self, obj: Obj) -> bool:
        """Whether ``obj`` satisfies every label and field requirement."""
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if not all(requirement(labels) for requirement in self.labels):
            return False
        return all(requirement(obj) for requirement in self.fields)

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        """Parse the query strings; 400 BadRequest if either does not parse."""
        labels = tuple(_label_requirement(p) for p in _split(label_selector or ""))
        fields = tuple(_field_requirement(p) for p in _split(field_selector or ""))
        return cls(labels, fields)


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (...)`` sets."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _label_requirement(text: str) -> Requirement:
    if match := _SET.match(text):
        key, operator, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _COMPARE.match(text):
        key, operator, value = match[1], match[2], match[3]
        if operator in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return _numeric(key, operator, value, text)
    if match := _EXISTS.match(text):
        negated, key = match[1] == "!", match[2]
        return lambda labels: (key in labels) != negated
    raise bad_request(f"unable to parse requirement: {text.strip()!r}")


def _numeric(key: str, operator: str, value: str, text: str) -> Requirement:
    try:
        bound = int(value)
    except ValueError:
        raise bad_request(
            f"unable to parse requirement: for 'gt', 'lt' operators, the value "
            f"must be an integer: {text.strip()!r}"
        ) from None

    def compare(labels: dict[str, str]) -> bool:
        try:
            actual = int(labels[key])
        except (KeyError, ValueError):
            return False
        return actual > bound if operator == ">" else actual < bound

    return compare


def _field_requirement(text: str) -> Requirement:
    match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", text)
    if not match:
        raise bad_request(f"invalid selector: {text.strip()!r}; can't understand {text.strip()!r}")
    path, operator, value = match[1].split("."), match[2], match[3]

    def requirement(obj: Obj) -> bool:
        current: Any = obj
        for part in path:
            current = current.get(part) if isinstance(current, dict) else None
        actual = "" if current is None else str(current)
        return (actual == value) == (operator != "!=")

    return requirement
