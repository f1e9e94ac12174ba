"""CreateRun stores 7, not 7.0, wherever the parameter schema says integer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from control_plane.orchestration.numbers import whole_numbers
from control_plane.orchestration.validation import parameters
from engine.schema import parameter_schema

FLOW = """
from dataclasses import dataclass
from decimal import Decimal
from typing import Optional, TypedDict


@dataclass
class Window:
    size: int
    steps: list[int]


class Limits(TypedDict):
    most: int


def main(
    n: int,
    items: list[int],
    pair: tuple[int, float],
    ratio: float = 1.0,
    opt: Optional[int] = None,
    either: int | float = 0,
    named: dict[str, int] | None = None,
    window: Window | None = None,
    windows: list[Window] = [],
    limits: Limits | None = None,
    amount: Decimal = Decimal(0),
    anything=None,
) -> None: ...
"""


def text(value: Any) -> str:
    """JSON text: 7 and 7.0 differ here, as they do to the flow."""
    return json.dumps(value, sort_keys=True)


def test_integral_floats_become_ints_where_the_signature_says_int(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    schema = parameter_schema(tmp_path, "flow.py:main")
    sent = {
        "n": 7.0,
        "items": [1.0, 2],
        "pair": [1.0, 2.0],
        "ratio": 3.0,
        "opt": 4.0,
        "either": 5.0,
        "named": {"a": 6.0},
        "window": {"size": 2.0, "steps": [1.0]},
        "windows": [{"size": 3.0, "steps": []}],
        "limits": {"most": 9.0},
        "amount": 2.0,
        "anything": 1.0,
    }
    parameters(sent, schema, "main")  # JSON Schema accepts all of them as sent

    assert text(whole_numbers(sent, schema)) == text(
        {
            "n": 7,
            "items": [1, 2],
            "pair": [1, 2.0],
            "ratio": 3.0,
            "opt": 4,
            "either": 5.0,
            "named": {"a": 6},
            "window": {"size": 2, "steps": [1]},
            "windows": [{"size": 3, "steps": []}],
            "limits": {"most": 9},
            "amount": 2.0,
            "anything": 1.0,
        }
    )


def test_references_and_loops_within_the_schema() -> None:
    schema = {
        "type": "object",
        "$defs": {"count": {"type": "integer"}, "loop": {"$ref": "#/$defs/loop"}},
        "properties": {
            "a": {"$ref": "#/$defs/count"},
            "b": {"$ref": "#/$defs/loop"},
            "c": {"allOf": [{"$ref": "#/$defs/count"}]},
        },
    }
    assert text(whole_numbers({"a": 1.0, "b": 2.0, "c": 3.0}, schema)) == text(
        {"a": 1, "b": 2.0, "c": 3}
    )
    assert whole_numbers({"a": 1.0}, None) == {"a": 1.0}
