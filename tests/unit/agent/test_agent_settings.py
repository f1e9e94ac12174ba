"""Command line and environment parsing for flowyard-agent."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from agent.errors import ConfigurationError
from agent.main import main
from agent.running import make_runtime
from agent.runtimes.kubernetes import KubernetesRuntime
from agent.runtimes.process import ProcessRuntime
from agent.settings import (
    DEFAULT_HEALTH_FILE,
    DEFAULT_SERVER,
    HealthSettings,
    HttpSettings,
    Probe,
    Settings,
    default_engine_command,
    parse_command,
    parse_settings,
)


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


def test_engines_are_forked_by_default_and_warm_or_cold_on_request() -> None:
    default = parse(["--pool", "p"]).process
    assert default.fork_engines and default.warm_engines == 0
    warm = parse(["--pool", "p", "--engine-start", "warm"]).process
    assert not warm.fork_engines and warm.warm_engines == 2
    cold = parse(["--pool", "p", "--engine-start", "cold"]).process
    assert not cold.fork_engines and cold.warm_engines == 0
    assert not parse(["--pool", "p"], {"FLOWYARD_ENGINE_START": "cold"}).process.fork_engines
    # A size of warm engines asks for them; zero asks for cold starts.
    sized = parse(["--pool", "p", "--warm-engines", "1"]).process
    assert not sized.fork_engines and sized.warm_engines == 1
    assert not parse(["--pool", "p", "--warm-engines", "0"]).process.fork_engines
    # A custom engine starts cold unless told it can do better.
    custom = ["--pool", "p", "--engine-command", "my-engine"]
    assert not parse(custom).process.fork_engines
    assert parse([*custom, "--engine-start", "fork"]).process.fork_engines


def test_warm_engines_default_to_two_at_most_capacity_and_to_none_for_a_custom_engine() -> None:
    warm = ["--engine-start", "warm"]
    assert parse(["--pool", "p", *warm]).process.warm_engines == 2
    assert parse(["--pool", "p", "--capacity", "1", *warm]).process.warm_engines == 1
    assert (
        parse(["--pool", "p", "--warm-engines", "9", "--capacity", "5"]).process.warm_engines == 5
    )
    assert parse(["--pool", "p", "--warm-engines", "0"]).process.warm_engines == 0
    assert parse(["--pool", "p"], {"FLOWYARD_WARM_ENGINES": "3"}).process.warm_engines == 3
    custom = ["--pool", "p", "--engine-command", "my-engine"]
    assert parse([*custom, *warm]).process.warm_engines == 0
    assert parse([*custom, "--warm-engines", "1"]).process.warm_engines == 1


def test_queues_limit_the_agent_to_some_queues_of_its_pool() -> None:
    assert parse(["--pool", "p"]).agent.queues == ()
    settings = parse(["--pool", "p", "--queue", "urgent", "--queue", "gpu"])
    assert settings.agent.queues == ("urgent", "gpu")


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
        (["--pool", "p", "--warm-engines", "-1"], {}, "--warm-engines must be 0 or a positive"),
        (["--pool", "p"], {"FLOWYARD_WARM_ENGINES": "two"}, "FLOWYARD_WARM_ENGINES must be"),
        (["--pool", "p", "--engine-start", "spawn"], {}, "invalid choice"),
        (["--pool", "p"], {"FLOWYARD_ENGINE_START": "hot"}, "FLOWYARD_ENGINE_START must be"),
        (["--pool", "p", "--http-port", "70000"], {}, "--http-port must be a port number"),
        (["--pool", "p"], {"FLOWYARD_AGENT_HTTP_PORT": "x"}, "FLOWYARD_AGENT_HTTP_PORT must be"),
    ],
)
def test_invalid_input_exits_2_with_a_message(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_http_listener_is_off_unless_a_port_is_given() -> None:
    assert parse(["--pool", "p"]).http == HttpSettings(host="127.0.0.1", port=0)
    from_env = parse(
        ["--pool", "p"], {"FLOWYARD_AGENT_HTTP_PORT": "9700", "FLOWYARD_AGENT_HTTP_HOST": "0.0.0.0"}
    )
    assert from_env.http == HttpSettings(host="0.0.0.0", port=9700)
    flags = parse(
        ["--pool", "p", "--http-port", "9701", "--http-host", "::1"],
        {"FLOWYARD_AGENT_HTTP_PORT": "9700"},
    )
    assert flags.http == HttpSettings(host="::1", port=9701)


def test_process_runtime_is_built_from_settings() -> None:
    settings = parse(["--pool", "p", "--server", "cp:1"])
    assert isinstance(make_runtime(settings), ProcessRuntime)


def test_kubernetes_defaults() -> None:
    settings = parse(["--pool", "p", "--server", "cp:1", "--runtime", "kubernetes"])
    assert settings.agent.runtime == "kubernetes"
    assert settings.kubernetes.kubeconfig is None
    assert settings.kubernetes.namespace == "default"
    # Engines dial the same address as the agent unless told otherwise.
    assert settings.kubernetes.engine_server == "cp:1"
    assert settings.health.file == DEFAULT_HEALTH_FILE
    assert settings.health.max_age == 90.0


def test_kubernetes_flags_and_environment() -> None:
    env = {
        "KUBECONFIG": "/env/kubeconfig",
        "FLOWYARD_NAMESPACE": "from-env",
        "FLOWYARD_ENGINE_SERVER": "env-cp:2",
        "FLOWYARD_AGENT_HEALTH_FILE": "/run/agent.health",
    }
    settings = parse(["--pool", "p", "--runtime", "kubernetes"], env)
    assert settings.kubernetes.kubeconfig == "/env/kubeconfig"
    assert settings.kubernetes.namespace == "from-env"
    assert settings.kubernetes.engine_server == "env-cp:2"
    assert settings.health.file == Path("/run/agent.health")
    settings = parse(
        [
            "--pool",
            "p",
            "--runtime",
            "kubernetes",
            "--kubeconfig",
            "/flag/kubeconfig",
            "--namespace",
            "flows",
            "--engine-server",
            "cp.flowyard.svc:7700",
        ],
        env,
    )
    assert settings.kubernetes.kubeconfig == "/flag/kubeconfig"
    assert settings.kubernetes.namespace == "flows"
    assert settings.kubernetes.engine_server == "cp.flowyard.svc:7700"


@pytest.mark.parametrize("namespace", ["Flows", "-x", "a_b", "x" * 64])
def test_invalid_namespace_exits_2(namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--pool", "p", "--namespace", namespace])
    assert exited.value.code == 2
    assert "--namespace" in capsys.readouterr().err


def test_watch_namespaces_from_flags_or_environment() -> None:
    base = ["--pool", "p", "--runtime", "kubernetes", "--namespace", "flows"]
    env = {"FLOWYARD_WATCH_NAMESPACES": "team-a, team-b,,flows"}
    # The agent's own namespace is watched anyway; duplicates and blanks are dropped.
    assert parse(base, env).kubernetes.watch_namespaces == ("team-a", "team-b")
    flags = [*base, "--watch-namespace", "team-c", "--watch-namespace", "team-c"]
    assert parse(flags, env).kubernetes.watch_namespaces == ("team-c",)
    assert parse(base).kubernetes.watch_namespaces == ()


def test_an_invalid_watch_namespace_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--pool", "p", "--watch-namespace", "Team_A"])
    assert exited.value.code == 2
    assert "--watch-namespace must be a Kubernetes namespace name, got 'Team_A'" in (
        capsys.readouterr().err
    )


def test_kubernetes_runtime_is_built_from_settings() -> None:
    settings = parse(["--pool", "p", "--runtime", "kubernetes"])
    assert isinstance(make_runtime(settings), KubernetesRuntime)


def test_probe_needs_no_pool(tmp_path: Path) -> None:
    command = parse_command(["--probe"], {"FLOWYARD_AGENT_HEALTH_FILE": str(tmp_path / "h")})
    assert command == Probe(HealthSettings(file=tmp_path / "h", max_age=90.0))


def test_probe_exit_status_follows_the_health_file_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = tmp_path / "agent.health"
    monkeypatch.setenv("FLOWYARD_AGENT_HEALTH_FILE", str(health))
    assert main(["--probe"]) == 1  # never touched
    health.touch()
    assert main(["--probe"]) == 0
    old = time.time() - 91
    os.utime(health, (old, old))
    assert main(["--probe"]) == 1


async def test_kubernetes_runtime_without_any_configuration_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outside a cluster, with no kubeconfig: a clear error, not a traceback.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = parse(["--pool", "p", "--runtime", "kubernetes"])
    runtime = make_runtime(settings)
    with pytest.raises(ConfigurationError, match="in-cluster"):
        await runtime.start(lambda event: None)


def test_main_exits_2_for_an_unreadable_kubeconfig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing-kubeconfig"
    argv = ["--pool", "p", "--runtime", "kubernetes", "--kubeconfig", str(missing)]
    assert main([*argv, "--server", "127.0.0.1:1"]) == 2
    # Logged to stderr, which pytest may capture through either fixture.
    assert "cannot load the Kubernetes configuration" in capsys.readouterr().err + caplog.text


def test_token_and_tls_from_flags_and_environment(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "agent.crt", "agent.key"))
    for path in (ca, cert, key):
        path.write_text(f"pem of {path.name}")
    settings = parse(
        ["--pool", "p", "--server", "cp.example:7700", "--token", "abc.def", "--tls-ca", str(ca)],
        {"FLOWYARD_TLS_CERT": str(cert), "FLOWYARD_TLS_KEY": str(key)},
    )
    assert settings.connection.token == "abc.def"
    assert (settings.connection.tls.ca, settings.connection.tls.cert) == (ca, cert)
    assert settings.connection.tls.key == key
    assert settings.kubernetes.engine_tls_ca == "pem of ca.pem"
    assert "abc.def" not in repr(settings)
    from_env = parse(["--pool", "p"], {"FLOWYARD_TOKEN": "env.token"})
    assert from_env.connection.token == "env.token"


def test_a_local_admin_token_file_is_used_for_a_loopback_server_only(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("local.admin\n")
    env = {"FLOWYARD_DATA_DIR": str(tmp_path)}
    assert parse(["--pool", "p"], env).connection.token == "local.admin"
    remote = parse(["--pool", "p", "--server", "cp.example:7700"], env)
    assert remote.connection.token == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "{f}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{f}", "--tls-key", "{f}"], "--tls-cert needs --tls-ca"),
        (["--tls-ca", "/no/such/ca.pem"], "no such file"),
    ],
)
def test_incomplete_tls_exits_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "f.pem"
    existing.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        parse(["--pool", "p", *[a.format(f=existing) for a in argv]])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_each_process_is_its_own_instance_named_after_its_host() -> None:
    """The name is shared by every process of one agent; the instance id tells them apart."""
    first, second = parse(["--pool", "p", "--name", "a"]), parse(["--pool", "p", "--name", "a"])
    assert first.agent.name == second.agent.name == "a"
    assert first.agent.instance_id.startswith("host-1-")
    assert first.agent.instance_id != second.agent.instance_id
