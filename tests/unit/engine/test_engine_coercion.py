"""The engine hands the flow typed values: enums, dates, models, nested containers."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Optional, TypedDict

import pydantic
import pytest

from engine.coercion import CoercionError, coerce
from engine.errors import ParameterError
from engine.params import bind_parameters


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Item(pydantic.BaseModel):
    sku: str
    qty: int = 1


@dataclasses.dataclass
class Window:
    start: datetime.date
    colours: list[Colour] = dataclasses.field(default_factory=list)


class Row(TypedDict):
    when: datetime.datetime


def test_enums_by_value_or_name() -> None:
    assert coerce("red", Colour) is Colour.RED
    assert coerce("GREEN", Colour) is Colour.GREEN
    assert coerce(2, Level) is Level.HIGH
    with pytest.raises(
        CoercionError, match=r"'purple' is not a valid Colour \(one of 'red', 'green'\)"
    ):
        coerce("purple", Colour)


def test_dates_times_and_text_types() -> None:
    assert coerce("2026-11-24T10:00:00Z", datetime.datetime) == datetime.datetime(
        2026, 11, 24, 10, tzinfo=datetime.UTC
    )
    assert coerce("2026-11-24", datetime.date) == datetime.date(2026, 11, 24)
    assert type(coerce("2026-11-24", datetime.date)) is datetime.date
    assert coerce("10:30", datetime.time) == datetime.time(10, 30)
    value = "12345678-1234-5678-1234-567812345678"
    assert coerce(value, uuid.UUID) == uuid.UUID(value)
    assert coerce("a/b", Path) == Path("a/b")
    assert coerce(1.5, Decimal) == Decimal("1.5")
    with pytest.raises(CoercionError, match=r"'2026-13-01' is not an ISO 8601 date"):
        coerce("2026-13-01", datetime.date)
    with pytest.raises(CoercionError, match=r"expected a string"):
        coerce(5, datetime.datetime)


def test_models_dataclasses_typeddicts_and_nesting() -> None:
    items = coerce([{"sku": "a"}, {"sku": "b", "qty": 3}], list[Item])
    assert items == [Item(sku="a"), Item(sku="b", qty=3)]
    window = coerce({"start": "2026-01-02", "colours": ["red"]}, Window)
    assert window == Window(datetime.date(2026, 1, 2), [Colour.RED])
    row = coerce({"when": "2026-01-02T00:00:00+00:00"}, Row)
    assert isinstance(row["when"], datetime.datetime)
    nested = coerce({"a": [["red", "2026-01-01"]]}, dict[str, list[tuple[Colour, datetime.date]]])
    assert nested == {"a": [(Colour.RED, datetime.date(2026, 1, 1))]}
    assert coerce(None, Optional[Colour]) is None  # noqa: UP045
    assert coerce("red", Colour | None) is Colour.RED
    with pytest.raises(CoercionError, match=r"does not fit Item"):
        coerce({"qty": 1}, Item)
    with pytest.raises(CoercionError, match=r"unknown field 'nope' for Window"):
        coerce({"start": "2026-01-01", "nope": 1}, Window)


def test_a_bad_value_fails_naming_the_parameter() -> None:
    def flow(colour: Colour, when: datetime.date) -> None: ...

    bound = bind_parameters(flow, {"colour": "red", "when": "2026-11-24"})
    assert bound.kwargs == {"colour": Colour.RED, "when": datetime.date(2026, 11, 24)}
    with pytest.raises(ParameterError, match=r"parameter 'colour' of flow\(\): 'blue' is not"):
        bind_parameters(flow, {"colour": "blue", "when": "2026-11-24"})
