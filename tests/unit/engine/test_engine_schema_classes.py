"""Parameter schemas for enums, dates, models, dataclasses and TypedDicts of the flow's own
file, read without importing it; the control plane's validator then accepts what the engine
can coerce and refuses the rest."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.schema import parameter_schema

FLOW = """
import datetime as dt
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Optional, TypedDict
from uuid import UUID

from pydantic import BaseModel, Field

raise SystemExit("the flow's file must never be imported at deploy time")


class Colour(str, Enum):
    RED = "red"
    GREEN = "green"


class Item(BaseModel):
    sku: str
    qty: int = 1
    tags: list[str] = Field(default_factory=list)


class Order(BaseModel):
    items: list[Item]
    colour: Colour = Colour.RED
    note: Optional[str] = Field(None, description="free text")


class Tree(BaseModel):
    children: list["Tree"] = []


@dataclass
class Window:
    start: dt.date
    days: int = 7
    labels: list[str] = field(default_factory=list)


class Row(TypedDict, total=False):
    id: int
    name: str


def main(
    order: Order,
    colour: Colour,
    when: dt.datetime,
    day: dt.date,
    window: Window,
    row: Row,
    tree: Tree,
    ids: list[UUID],
    mode: Literal["fast", "slow"] = "fast",
    matrix: dict[str, list[tuple[int, float]]] | None = None,
):
    ...
"""


@pytest.fixture
def schema(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    return parameter_schema(tmp_path, "flow.py:main")


def test_classes_of_the_file_become_schemas(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    assert props["colour"] == {"title": "Colour", "enum": ["red", "green"]}
    assert props["when"] == {"type": "string", "format": "date-time"}
    assert props["day"] == {"type": "string", "format": "date"}
    assert props["ids"] == {"type": "array", "items": {"type": "string", "format": "uuid"}}
    item = {
        "title": "Item",
        "type": "object",
        "properties": {
            "sku": {"type": "string"},
            "qty": {"type": "integer", "default": 1},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["sku"],
    }
    assert props["order"] == {
        "title": "Order",
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": item},
            "colour": {"title": "Colour", "enum": ["red", "green"]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["items"],
    }
    assert props["window"]["additionalProperties"] is False
    assert props["window"]["required"] == ["start"]
    assert "required" not in props["row"]  # total=False
    assert set(props["row"]["properties"]) == {"id", "name"}
    # A recursive model stops where it recurs instead of looping.
    assert props["tree"]["properties"]["children"] == {"type": "array", "default": []}
    assert props["matrix"]["anyOf"][0]["additionalProperties"]["items"]["prefixItems"] == [
        {"type": "integer"},
        {"type": "number"},
    ]
    assert schema["required"] == [
        "order",
        "colour",
        "when",
        "day",
        "window",
        "row",
        "tree",
        "ids",
    ]


def test_the_schema_checks_what_users_send(schema: dict[str, Any]) -> None:
    good = {
        "order": {"items": [{"sku": "a", "qty": 2}], "colour": "green"},
        "colour": "red",
        "when": "2026-11-24T10:00:00Z",
        "day": "2026-11-24",
        "window": {"start": "2026-11-01"},
        "row": {"id": 1},
        "tree": {"children": [{"children": []}]},
        "ids": ["12345678-1234-5678-1234-567812345678"],
        "matrix": {"a": [[1, 2.5]]},
    }
    jsonschema.validate(good, schema)
    for bad in (
        {**good, "colour": "purple"},
        {**good, "order": {"items": [{"qty": 2}]}},
        {**good, "window": {"start": "2026-11-01", "extra": 1}},
        {**good, "matrix": {"a": [[1, "x"]]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
