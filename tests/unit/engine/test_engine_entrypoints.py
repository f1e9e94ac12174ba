"""Entrypoint parsing: the rules the control plane also applies at deploy time."""

from __future__ import annotations

import pytest

from engine.entrypoints import Entrypoint, EntrypointKind, InvalidEntrypoint, parse_entrypoint
from engine.errors import FlowSetupError
from flowyard_common import entrypoints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flows/hello.py:hello", Entrypoint(EntrypointKind.FILE, "flows/hello.py", "hello")),
        ("hello.py:main", Entrypoint(EntrypointKind.FILE, "hello.py", "main")),
        ("./flows/etl.py:run", Entrypoint(EntrypointKind.FILE, "flows/etl.py", "run")),
        ("  a/b.py : fn ", Entrypoint(EntrypointKind.FILE, "a/b.py", "fn")),
        ("pkg.module:fn", Entrypoint(EntrypointKind.MODULE, "pkg.module", "fn")),
        ("single:fn", Entrypoint(EntrypointKind.MODULE, "single", "fn")),
        (
            "my-flows/x_1.py:_private",
            Entrypoint(EntrypointKind.FILE, "my-flows/x_1.py", "_private"),
        ),
    ],
)
def test_valid_entrypoints(text: str, expected: Entrypoint) -> None:
    assert parse_entrypoint(text) == expected


def test_str_round_trips_and_module_parts() -> None:
    entrypoint = parse_entrypoint("pkg.sub.module:fn")
    assert str(entrypoint) == "pkg.sub.module:fn"
    assert entrypoint.module_parts == ("pkg", "sub", "module")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the entrypoint is empty"),
        ("flows/hello.py", "has no ':function' part"),
        (":fn", "names no file or module"),
        ("flows/hello.py:", "'' is not a valid Python function name"),
        ("flows/hello.py:not-a-name", "'not-a-name' is not a valid Python function name"),
        ("flows/hello.py:class", "'class' is not a valid Python function name"),
        ("/abs/hello.py:fn", "must be relative to the source directory"),
        ("../outside.py:fn", "must stay inside the source directory"),
        ("flows/hello.txt:fn", "'flows/hello.txt' is not a .py file"),
        ("flows\\hello.py:fn", "use '/' as the path separator"),
        ("pkg..module:fn", "'' is not a valid identifier"),
        ("pkg.2module:fn", "'2module' is not a valid identifier"),
    ],
)
def test_invalid_entrypoints_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidEntrypoint) as caught:
        parse_entrypoint(text)
    assert message in str(caught.value)


def test_invalid_entrypoint_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no ':function' part"):
        parse_entrypoint("nope")


def test_the_engine_fails_a_malformed_entrypoint_as_a_setup_error() -> None:
    # The parsing is shared with the control plane; its error is the engine's own here.
    with pytest.raises(InvalidEntrypoint) as caught:
        parse_entrypoint("nope")
    assert isinstance(caught.value, FlowSetupError)
    assert isinstance(caught.value, entrypoints.InvalidEntrypoint)
    assert str(caught.value) == str(_shared_error("nope"))


def _shared_error(text: str) -> entrypoints.InvalidEntrypoint:
    with pytest.raises(entrypoints.InvalidEntrypoint) as caught:
        entrypoints.parse_entrypoint(text)
    return caught.value
