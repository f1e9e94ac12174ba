"""An ``int`` parameter reaches the flow as an int at any depth, even when sent as ``7.0``.

JSON Schema counts 7.0 as an integer and JSON decoders make it a float, so the engine
converts by the annotation; a number with a fraction is refused naming the parameter.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, TypedDict, Union

import pydantic
import pytest

from engine.coercion import CoercionError, coerce
from engine.errors import ParameterError
from engine.params import bind_parameters


def typed(value: Any) -> Any:
    """``value`` with the type of every part spelled out (7 == 7.0 in Python, not here)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return (type(value).__name__, [typed(item) for item in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, typed(dataclasses.asdict(value)))
    if isinstance(value, pydantic.BaseModel):
        return (type(value).__name__, typed(dict(value)))
    return (type(value).__name__, value)


@dataclasses.dataclass
class Window:
    size: int
    steps: list[int]


class Limits(TypedDict):
    most: int


class Batch(pydantic.BaseModel):
    count: int
    sizes: list[int] = []


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (7.0, int, 7),
        ([1.0, 2], list[int], [1, 2]),
        ([1.0, 2.0], set[int], {1, 2}),
        ([[1.0], [2.0]], list[list[int]], [[1], [2]]),
        ({"a": 3.0}, dict[str, int], {"a": 3}),
        ({"a": [3.0]}, dict[str, list[int]], {"a": [3]}),
        ([1.0, 2.0], tuple[int, float], (1, 2.0)),
        ([1.0, 2.0], tuple[int, ...], (1, 2)),
        (7.0, Optional[int], 7),  # noqa: UP045
        (7.0, int | None, 7),
        ([1.0], list[int] | None, [1]),
        (7.0, int | str, 7),
        (7.0, Union[str, int], 7),  # noqa: UP007
        ("7", int | str, "7"),
        (7.0, int | float, 7.0),  # already a float, which the union accepts
        (7.0, float | int, 7.0),
        ({"size": 2.0, "steps": [1.0]}, Window, Window(2, [1])),
        ({"most": 5.0}, Limits, {"most": 5}),
        ({"count": 2.0, "sizes": [1.0]}, Batch, Batch(count=2, sizes=[1])),
        ([{"size": 1.0, "steps": []}], list[Window], [Window(1, [])]),
        (True, int, True),  # JSON Schema refuses true for an integer; not the engine's call
        (2.0, Literal[2, 3], 2),
        (2.0, Literal[2.0, 3], 2.0),
        (1e20, int, 10**20),
    ],
)
def test_integral_numbers_become_ints_at_every_depth(
    value: Any, annotation: Any, expected: Any
) -> None:
    assert typed(coerce(value, annotation)) == typed(expected)


@pytest.mark.parametrize(
    ("value", "annotation"),
    [
        (7.5, int),
        ([1, 7.5], list[int]),
        ({"a": 0.1}, dict[str, int]),
        ([7.5], tuple[int, ...]),
        (7.5, Optional[int]),  # noqa: UP045
        ({"size": 1.5, "steps": []}, Window),
    ],
)
def test_a_number_with_a_fraction_is_not_an_int(value: Any, annotation: Any) -> None:
    with pytest.raises(CoercionError, match=r"7\.5 is not an integer|0\.1 is not|1\.5 is not"):
        coerce(value, annotation)


def test_the_flow_gets_ints_and_a_fraction_fails_naming_the_parameter() -> None:
    def flow(n: int, items: list[int], window: Window | None = None) -> None: ...

    bound = bind_parameters(
        flow, {"n": 7.0, "items": [1.0, 2], "window": {"size": 3.0, "steps": []}}
    )
    assert typed(bound.kwargs) == typed({"n": 7, "items": [1, 2], "window": Window(3, [])})
    with pytest.raises(ParameterError, match=r"parameter 'n' of flow\(\): 7\.5 is not an integer"):
        bind_parameters(flow, {"n": 7.5, "items": []})
