"""Reading the engine's settings from its environment."""

from __future__ import annotations

import logging

import pytest

from engine.errors import SettingsError
from engine.settings import load_settings

ENV = {
    "FLOWYARD_SERVER": "cp.example:7070",
    "FLOWYARD_RUN_ID": "abc",
    "FLOWYARD_RUN_ATTEMPT": "2",
    "FLOWYARD_RUN_TOKEN": "secret-token",
}


def test_reads_the_environment() -> None:
    settings = load_settings(ENV, "abc")
    assert (settings.server, settings.run_id, settings.attempt, settings.token) == (
        "cp.example:7070",
        "abc",
        2,
        "secret-token",
    )
    assert settings.log_level == logging.INFO
    assert "secret-token" not in repr(settings)


def test_run_id_from_either_place() -> None:
    assert load_settings({**ENV, "FLOWYARD_RUN_ID": ""}, "xyz").run_id == "xyz"
    assert load_settings(ENV, None).run_id == "abc"


def test_run_id_argument_must_match_the_environment() -> None:
    with pytest.raises(SettingsError, match="'other' does not match FLOWYARD_RUN_ID='abc'"):
        load_settings(ENV, "other")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"FLOWYARD_SERVER": ""}, "FLOWYARD_SERVER is not set"),
        ({"FLOWYARD_SERVER": "no-port"}, "'no-port' is not HOST:PORT"),
        ({"FLOWYARD_SERVER": "a:1,b"}, "'b' is not HOST:PORT"),
        ({"FLOWYARD_RUN_ATTEMPT": "two"}, "is not an integer"),
        ({"FLOWYARD_RUN_ATTEMPT": "0"}, "must be 1 or more"),
        ({"FLOWYARD_RUN_TOKEN": ""}, "FLOWYARD_RUN_TOKEN is not set"),
        ({"FLOWYARD_LOG_LEVEL": "LOUD"}, "is not a level"),
    ],
)
def test_bad_values_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({**ENV, **overrides}, None)


@pytest.mark.parametrize(("value", "level"), [("debug", 10), ("WARNING", 30), ("25", 25)])
def test_log_level(value: str, level: int) -> None:
    assert load_settings({**ENV, "FLOWYARD_LOG_LEVEL": value}, None).log_level == level
