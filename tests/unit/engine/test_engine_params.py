"""Binding JSON parameters to flow signatures."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from engine.errors import ParameterError
from engine.params import BoundCall, bind_parameters, coerce


def flow(n: int, name: str = "world", *, ratio: float = 1.0) -> None:
    """A flow with required, defaulted and keyword-only parameters."""


def test_binds_by_name() -> None:
    bound = bind_parameters(flow, {"n": 3, "ratio": 2})
    assert bound == BoundCall("flow", (), {"n": 3, "ratio": 2.0})
    assert isinstance(bound.kwargs["ratio"], float)


def test_missing_required_parameter_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(ParameterError) as caught:
        bind_parameters(flow, {"name": "x"})
    assert str(caught.value) == (
        "missing required parameter 'n' for flow(); accepted parameters: n, name, ratio"
    )


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ParameterError) as caught:
        bind_parameters(flow, {"n": 1, "colour": "red", "size": 2})
    assert str(caught.value) == (
        "unknown parameters 'colour', 'size' for flow(); accepted parameters: n, name, ratio"
    )


def test_no_parameters_accepted() -> None:
    def bare() -> None: ...

    with pytest.raises(ParameterError, match="it accepts no parameters"):
        bind_parameters(bare, {"x": 1})


def test_kwargs_accepts_extras() -> None:
    def open_flow(a: int, **extra: Any) -> None: ...

    bound = bind_parameters(open_flow, {"a": 1, "b": 2})
    assert bound.kwargs == {"a": 1, "b": 2}


def test_positional_only_parameters_are_passed_positionally() -> None:
    def positional(a: float, /, b: int) -> None: ...

    bound = bind_parameters(positional, {"a": 1, "b": 2})
    assert bound.args == (1.0,) and bound.kwargs == {"b": 2}


def test_describe_shows_the_call_with_short_reprs() -> None:
    bound = BoundCall("hello", (1,), {"name": "world", "blob": "x" * 500})
    text = bound.describe()
    assert text.startswith("hello(1, name='world', blob='xxx")
    assert len(text) < 250 and "…" in text


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (3, float, 3.0),
        (True, float, True),  # bool is not silently a number
        ([1, 2], tuple, (1, 2)),
        ([1, 2], tuple[float, ...], (1.0, 2.0)),
        ([1, "a"], tuple[float, str], (1.0, "a")),
        ([1, 2], list[float], [1.0, 2.0]),
        ([1, 1], set[int], {1}),
        ({"a": 1}, dict[str, float], {"a": 1.0}),
        (2, Optional[float], 2.0),  # noqa: UP045 - the typing spelling must work too
        (2, float | None, 2.0),
        (None, float | None, None),
        (2, int | str, 2),
        ("2", int, "2"),  # no parsing of strings: ambiguous
        ([[1]], list[list[float]], [[1.0]]),
    ],
)
def test_coercion(value: Any, annotation: Any, expected: Any) -> None:
    result = coerce(value, annotation)
    assert result == expected
    assert type(result) is type(expected)


def test_string_annotations_are_resolved_for_coercion() -> None:
    # This module uses `from __future__ import annotations`: hints are strings until resolved.
    def stringy(x: float, xs: tuple[int, ...]) -> None: ...

    bound = bind_parameters(stringy, {"x": 1, "xs": [1, 2]})
    assert bound.kwargs == {"x": 1.0, "xs": (1, 2)}
