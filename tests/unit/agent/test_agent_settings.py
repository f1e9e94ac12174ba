"""Command line and environment parsing for flowyard-agent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.errors import RuntimeNotAvailable
from agent.main import main
from agent.runtimes import ProcessRuntime, make_runtime
from agent.settings import DEFAULT_SERVER, Settings, default_engine_command, parse_settings


def parse(argv: list[str], env: dict[str, str] | None = None, **kwargs: str) -> Settings:
    return parse_settings(argv, env or {}, hostname="host-1", **kwargs)


def test_defaults() -> None:
    settings = parse(["--pool", "p"], executable="/nowhere/bin/python")
    assert settings.agent.pool == "p"
    assert settings.agent.name == "host-1"
    assert settings.agent.capacity == 4
    assert settings.agent.runtime == "process"
    assert settings.connection.server == DEFAULT_SERVER == "127.0.0.1:7700"
    assert settings.process.work_dir is None
    assert settings.process.cancel_grace == 10.0
    assert settings.process.engine_command == ("/nowhere/bin/python", "-m", "engine.main")
    assert settings.log_level == "INFO"


def test_environment_fallbacks() -> None:
    env = {
        "FLOWYARD_POOL": "from-env",
        "FLOWYARD_SERVER": "cp:9000",
        "FLOWYARD_AGENT_NAME": "agent-env",
        "FLOWYARD_AGENT_CAPACITY": "7",
    }
    settings = parse([], env)
    assert settings.agent.pool == "from-env"
    assert settings.connection.server == "cp:9000"
    assert settings.agent.name == "agent-env"
    assert settings.agent.capacity == 7


def test_flags_win_over_environment(tmp_path: Path) -> None:
    env = {
        "FLOWYARD_POOL": "from-env",
        "FLOWYARD_SERVER": "cp:9000",
        "FLOWYARD_AGENT_NAME": "agent-env",
        "FLOWYARD_AGENT_CAPACITY": "7",
    }
    settings = parse(
        [
            "--pool",
            "flag-pool",
            "--server",
            "other:1",
            "--name",
            "agent-flag",
            "--capacity",
            "2",
            "--work-dir",
            str(tmp_path),
            "--engine-command",
            "/opt/my engine --verbose 'two words'",
            "--cancel-grace-seconds",
            "2.5",
            "--log-level",
            "debug",
        ],
        env,
    )
    assert settings.agent.pool == "flag-pool"
    assert settings.connection.server == "other:1"
    assert settings.agent.name == "agent-flag"
    assert settings.agent.capacity == 2
    assert settings.process.work_dir == tmp_path
    assert settings.process.engine_command == ("/opt/my", "engine", "--verbose", "two words")
    assert settings.process.cancel_grace == 2.5
    assert settings.log_level == "DEBUG"


def test_default_engine_command_prefers_the_script_beside_python(tmp_path: Path) -> None:
    python = tmp_path / "python"
    assert default_engine_command(str(python)) == (str(python), "-m", "engine.main")
    (tmp_path / "flowyard-engine").write_text("#!/bin/sh\n")
    assert default_engine_command(str(python)) == (str(tmp_path / "flowyard-engine"),)


def test_settings_are_frozen() -> None:
    settings = parse(["--pool", "p"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.agent.capacity = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "a pool is required"),
        (["--pool", "p", "--capacity", "0"], {}, "--capacity must be a positive integer"),
        (["--pool", "p", "--capacity", "x"], {}, "--capacity must be a positive integer"),
        (["--pool", "p"], {"FLOWYARD_AGENT_CAPACITY": "-1"}, "FLOWYARD_AGENT_CAPACITY"),
        (["--pool", "p", "--cancel-grace-seconds", "-1"], {}, "--cancel-grace-seconds"),
        (["--pool", "p", "--cancel-grace-seconds", "nan"], {}, "--cancel-grace-seconds"),
        (["--pool", "p", "--engine-command", ""], {}, "--engine-command must not be empty"),
        (["--pool", "p", "--engine-command", "'unclosed"], {}, "--engine-command"),
        (["--pool", "p", "--runtime", "docker"], {}, "invalid choice"),
    ],
)
def test_invalid_input_exits_2_with_a_message(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_process_runtime_is_built_from_settings() -> None:
    settings = parse(["--pool", "p", "--server", "cp:1"])
    assert isinstance(make_runtime(settings), ProcessRuntime)


def test_kubernetes_runtime_is_not_available_yet() -> None:
    settings = parse(["--pool", "p", "--runtime", "kubernetes"])
    with pytest.raises(RuntimeNotAvailable, match="not available yet"):
        make_runtime(settings)


def test_main_exits_2_for_the_kubernetes_runtime(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["--pool", "p", "--runtime", "kubernetes", "--server", "127.0.0.1:1"]) == 2
    # Logged to stderr, which pytest may capture through either fixture.
    assert "not available yet" in capsys.readouterr().err + caplog.text
