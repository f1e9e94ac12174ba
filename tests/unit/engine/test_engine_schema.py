"""Parameter schemas derived from source with ast, validated with jsonschema."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.errors import EntrypointImportError, EntrypointNotFound, InvalidEntrypoint
from engine.schema import parameter_schema


def schema_of(tmp_path: Path, code: str, entrypoint: str = "flow.py:main") -> dict[str, Any]:
    (tmp_path / "flow.py").write_text(textwrap.dedent(code))
    return parameter_schema(tmp_path, entrypoint)


def test_scalars_defaults_and_required(tmp_path: Path) -> None:
    schema = schema_of(
        tmp_path,
        """
        def main(n: int, ratio: float = 0.5, *, name: str = "world", dry_run: bool = False, x=None):
            '''Never run.'''
            raise SystemExit("imported!")
        """,
    )
    assert schema == {
        "title": "main",
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "ratio": {"type": "number", "default": 0.5},
            "name": {"type": "string", "default": "world"},
            "dry_run": {"type": "boolean", "default": False},
            "x": {"default": None},
        },
        "required": ["n"],
        "additionalProperties": False,
    }


def test_containers_unions_and_literals(tmp_path: Path) -> None:
    schema = schema_of(
        tmp_path,
        """
        from typing import Dict, List, Literal, Optional, Union
        import typing

        async def main(
            a: list[int],
            b: List[str],
            c: dict[str, float],
            d: Dict,
            e: int | None,
            f: Optional[str],
            g: Literal["fast", "slow"] = "fast",
            h: Union[int, str] = 1,
            i: tuple[int, ...] = (1, 2),
            j: "list[bool]" = [],
            k: typing.Optional[list] = None,
            l: SomeClass = None,
            m: tuple[int, str] = (1, "a"),
            **extra,
        ):
            pass
        """,
    )
    props = schema["properties"]
    assert props["a"] == {"type": "array", "items": {"type": "integer"}}
    assert props["b"] == {"type": "array", "items": {"type": "string"}}
    assert props["c"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["d"] == {"type": "object"}
    assert props["e"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["f"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert props["g"] == {"enum": ["fast", "slow"], "default": "fast"}
    assert props["h"] == {"anyOf": [{"type": "integer"}, {"type": "string"}], "default": 1}
    assert props["i"] == {"type": "array", "items": {"type": "integer"}, "default": [1, 2]}
    assert props["j"] == {"type": "array", "items": {"type": "boolean"}, "default": []}
    assert props["k"] == {"anyOf": [{"type": "array"}, {"type": "null"}], "default": None}
    assert props["l"] == {"default": None}
    assert props["m"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert schema["required"] == ["a", "b", "c", "d", "e", "f"]
    assert schema["additionalProperties"] is True


def test_non_literal_defaults_are_left_out(tmp_path: Path) -> None:
    schema = schema_of(tmp_path, "import os\ndef main(p: str = os.getcwd()):\n    pass\n")
    assert schema["properties"]["p"] == {"type": "string"}
    assert schema["required"] == []


def test_the_schema_validates_parameters(tmp_path: Path) -> None:
    schema = schema_of(
        tmp_path,
        "def main(n: int, mode: 'Literal[\"a\", \"b\"]' = 'a', tags: list[str] = []): pass\n",
    )
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"n": 1, "mode": "b", "tags": ["x"]}))
    errors = {e.message for e in validator.iter_errors({"mode": "c", "extra": 1})}
    assert "'n' is a required property" in errors
    assert any("'c' is not one of" in message for message in errors)
    assert any("'extra' was unexpected" in message for message in errors)


def test_module_entrypoints(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "flows.py").write_text("def run(x: int): pass\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("def run(y: str): pass\n")

    assert parameter_schema(tmp_path, "pkg.flows:run")["properties"] == {"x": {"type": "integer"}}
    assert parameter_schema(tmp_path, "pkg.sub:run")["properties"] == {"y": {"type": "string"}}


def test_last_definition_wins_and_guarded_definitions_count(tmp_path: Path) -> None:
    code = """
    def main(a: int): pass
    try:
        import fast
    except ImportError:
        def main(b: str): pass
    """
    assert schema_of(tmp_path, code)["properties"] == {"b": {"type": "string"}}


def test_a_re_exported_function_accepts_any_object(tmp_path: Path) -> None:
    schema = schema_of(tmp_path, "from .impl import main\n")
    assert schema == {"title": "main", "type": "object", "additionalProperties": True}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EntrypointNotFound, match=r"file 'nope\.py' not found in source directory"):
        parameter_schema(tmp_path, "nope.py:main")


def test_missing_module(tmp_path: Path) -> None:
    with pytest.raises(EntrypointNotFound, match=r"looked for pkg/mod\.py and pkg/mod/__init__"):
        parameter_schema(tmp_path, "pkg.mod:main")


def test_missing_function(tmp_path: Path) -> None:
    with pytest.raises(EntrypointNotFound, match=r"function 'main' not found in file 'flow\.py'"):
        schema_of(tmp_path, "def other(): pass\n")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(EntrypointImportError) as caught:
        schema_of(tmp_path, "def main(:\n    pass\n")
    assert str(caught.value).startswith(f"syntax error in {tmp_path / 'flow.py'}:1: ")


def test_malformed_entrypoint(tmp_path: Path) -> None:
    with pytest.raises(InvalidEntrypoint):
        parameter_schema(tmp_path, "flow.py")
