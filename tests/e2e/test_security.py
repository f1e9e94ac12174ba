"""Tokens and TLS end to end: real control plane, agent and engine processes.

Certificates come from a CA made for each test (``tests.pki``); nothing secret is committed.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from control_plane.cli.processes import Child, script, start_agent, start_server
from tests.pki import Authority

from .conftest import POOL, System, running_system, wait_for

FLOW = """
import os

def main(name: str = "world") -> str:
    print(f"hello {name}")
    # The agent's own credentials never reach flow code.
    print("agent secrets visible:", any(k in os.environ for k in ("FLOWYARD_TOKEN", "FLOWYARD_TLS_KEY")))
    return name
"""


def run_to_completion(system: System, deployment: str = "hello") -> None:
    """Deploy FLOW, run it with the CLI and check it COMPLETED."""
    system.deploy(deployment, FLOW)
    result = system.cli("run", deployment, "--param", "name=secure", "--watch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello secure" in result.stdout
    assert "agent secrets visible: False" in result.stdout
    assert result.stdout.rstrip().endswith("COMPLETED")


def refused(agent: Child) -> str:
    """Wait for an agent the server refused to exit with status 2; returns its log."""
    wait_for(lambda: not agent.alive(), what="the refused agent to exit")
    assert agent.process.returncode == 2, agent.log_tail()
    return agent.log_tail()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script("flowyard"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_admin_token_file_is_private_kept_across_restarts_and_found_by_the_cli(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    try:
        token_file = data_dir / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        first = token_file.read_text()
        address = server.extra["address"]
        # The local CLI finds the token by itself, in the default data directory.
        env = {"FLOWYARD_DATA_DIR": str(data_dir), "FLOWYARD_TOKEN": ""}
        assert cli("--server", address, "pool", "ls", env=env).returncode == 0
        # Elsewhere, without a token, it is told what to do.
        nothing = {"FLOWYARD_DATA_DIR": str(tmp_path / "empty"), "FLOWYARD_TOKEN": ""}
        result = cli("--server", address, "pool", "ls", env=nothing)
        assert result.returncode == 1
        assert "(UNAUTHENTICATED)" in result.stderr and "FLOWYARD_TOKEN" in result.stderr
    finally:
        server.stop()
    server = start_server(data_dir)
    try:
        assert (data_dir / "admin.token").read_text() == first
        assert server.extra["token"] == first.strip()
        result = cli(
            "--server", server.extra["address"], "--token", first.strip(), "pool", "ls", env={}
        )
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()


def test_agent_tokens_from_the_cli_run_flows_until_revoked(system: System) -> None:
    created = system.cli("token", "create", "--agent", "--pool", POOL, "--description", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    token_id = token.split(".")[0]
    assert token_id in created.stderr
    agent = system.start_agent(name="tokened", token=token)
    run_to_completion(system)

    listed = system.cli("token", "ls")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert "agent" in row and POOL in row and "ci" in row and token not in listed.stdout

    # An agent token of the pool may not administer anything.
    denied = system.cli("pool", "ls", token=token)
    assert denied.returncode == 1 and "(PERMISSION_DENIED)" in denied.stderr

    revoked = system.cli("token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in refused(agent).lower()
    # Restarted with the same token, it is refused at once.
    again = start_agent(system.address, POOL, system.root / "again", name="again", token=token)
    system.agents.append(again)
    assert "revoked" in refused(again).lower()


def test_an_agent_token_of_another_pool_is_refused(system: System) -> None:
    assert system.cli("pool", "create", "other").returncode == 0
    other = system.cli("token", "create", "--agent", "--pool", "other").stdout.strip()
    agent = start_agent(system.address, POOL, system.root / "wrong", name="wrong", token=other)
    system.agents.append(agent)
    log = refused(agent)
    assert "PERMISSION_DENIED" in log and "'other'" in log


def test_tls_end_to_end_and_a_client_without_the_ca_is_told_why(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    issued = ca.server()
    server_args = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
    with running_system(tmp_path / "sys", server_args=server_args, tls_ca=ca.cert) as system:
        # The agent and the engines it starts trust the CA (the agent hands it on).
        system.start_agent()
        run_to_completion(system)
        # Without the CA, or with another one, the CLI cannot connect and says what to pass.
        env = {"FLOWYARD_TOKEN": system.admin_token, "FLOWYARD_TLS_CA": ""}
        plain = cli("--server", system.address, "pool", "ls", env=env)
        assert plain.returncode == 1 and "--tls-ca" in plain.stderr, plain.stderr
        stranger = Authority(tmp_path / "other", name="Other CA")
        wrong = cli(
            "--server", system.address, "--tls-ca", str(stranger.cert), "pool", "ls", env=env
        )
        assert wrong.returncode == 1 and "--tls-ca" in wrong.stderr, wrong.stderr


def test_mutual_tls_agents_need_a_client_certificate(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    agents_ca = Authority(tmp_path / "agents-pki", name="Agents CA")
    issued = ca.server()
    agent_cert = agents_ca.client("agent-1")
    server_args = [
        "--tls-cert", str(issued.cert),
        "--tls-key", str(issued.key),
        "--tls-client-ca", str(agents_ca.cert),
        "--agent-port", "0",
        "--require-agent-cert",
    ]  # fmt: skip
    with running_system(tmp_path / "sys", server_args=server_args, tls_ca=ca.cert) as system:
        agent_address = system.server.extra["agent_address"]
        # With its client certificate, on the agent port; engines dial the main port.
        system.agents.append(
            start_agent(
                agent_address,
                POOL,
                system.root / "mtls",
                name="mtls",
                token=system.agent_token,
                extra_args=[
                    "--tls-ca",
                    str(ca.cert),
                    "--tls-cert",
                    str(agent_cert.cert),
                    "--tls-key",
                    str(agent_cert.key),
                    "--engine-server",
                    system.address,
                ],
            )
        )
        wait_for(lambda: system.pool().connected_agents == 1, what="the mTLS agent")
        run_to_completion(system)
        # A valid agent token without a client certificate (the main port) is refused.
        plain = start_agent(
            system.address,
            POOL,
            system.root / "no-cert",
            name="no-cert",
            token=system.agent_token,
            extra_args=["--tls-ca", str(ca.cert)],
        )
        system.agents.append(plain)
        log = refused(plain)
        assert "UNAUTHENTICATED" in log and "client certificate" in log
        assert system.pool().connected_agents == 1
