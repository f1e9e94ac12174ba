"""``flowyard agent install`` as the README writes it, against a real control plane.

The printed manifests must be enough on a fresh cluster: the namespace first, and an agent
token the control plane accepts for the pool (minted by the command when none is given).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml

from agent.kubernetes import manifests as job_manifests
from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, script, start_server
from flowyard.v1 import agent_pb2, agent_pb2_grpc, control_plane_pb2_grpc, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
VALUES = {
    "P": "k8s",
    "NS": "flowyard",
    "IMG": "registry.example.com/flowyard-agent:0.1.0",
    "ADDR": "flowyard.example.com:7700",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Child]:
    child = start_server(tmp_path / "server")
    try:
        yield child
    finally:
        child.stop()


def readme_install_line() -> list[str]:
    """The README's `flowyard agent install` command, placeholders filled in."""
    found = re.search(r"`(flowyard agent install --pool P[^`]*)`", (ROOT / "README.md").read_text())
    assert found, "the README no longer shows the install line"
    return [VALUES.get(word, word) for word in shlex.split(found.group(1))]


def flowyard(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script("flowyard"), *args[1:]],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, **env},
    )


def hello(address: str, token: str, pool: str) -> Any:
    """Open an agent session with ``token`` and return the server's first answer."""
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                agent_name="flowyard/flowyard-agent", pool=pool, capacity=1, runtime="kubernetes"
            )
        )
        call = stub.Connect(
            iter([request]), metadata=(("authorization", f"Bearer {token}"),), timeout=DEADLINE
        )
        return next(call)


def test_the_readme_install_line_works_as_written(server: Child) -> None:
    address = server.extra["address"]
    control = control_plane_pb2_grpc.ControlPlaneServiceStub(
        open_channel(address, server.extra["token"])
    )
    for name in ("k8s", "other"):
        control.CreatePool(
            pb.CreatePoolRequest(
                name=name,
                type=types_pb2.POOL_TYPE_KUBERNETES,
                base_job_template_json=json.dumps(job_manifests.default_template()),
            )
        )
    # Where an admin runs it: the CLI reaches the control plane with the admin token.
    result = flowyard(
        readme_install_line(),
        {"FLOWYARD_SERVER": address, "FLOWYARD_TOKEN": server.extra["token"]},
    )
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
    ]
    assert objects[0]["metadata"]["name"] == "flowyard"
    for manifest in objects:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    deployment = objects[-1]["spec"]["template"]["spec"]["containers"][0]
    assert "--server" in deployment["args"] and VALUES["ADDR"] in deployment["args"]

    # The Secret holds a fresh agent token of the pool, and only of the pool.
    token = next(o for o in objects if o["kind"] == "Secret")["stringData"]["token"]
    assert "Minted agent token" in result.stderr and token not in result.stderr
    assert hello(address, token, "k8s").WhichOneof("message") == "welcome"
    with pytest.raises(grpc.RpcError) as refused:
        hello(address, token, "other")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = control.ListTokens(pb.ListTokensRequest()).tokens
    assert any(
        t.description == "agent flowyard/flowyard-agent (flowyard agent install)" for t in listed
    ), listed


def test_minting_without_a_reachable_control_plane_says_what_to_do(tmp_path: Path) -> None:
    result = flowyard(
        readme_install_line(),
        {
            "FLOWYARD_SERVER": f"127.0.0.1:{free_port()}",
            "FLOWYARD_TOKEN": "nothing-listens-there",
        },
    )
    assert result.returncode != 0
    assert "cannot mint the agent's token" in result.stderr, result.stderr
    assert "--token" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing half-printed into kubectl


def test_with_a_token_given_no_control_plane_is_needed_and_the_namespace_can_be_left_out(
    tmp_path: Path,
) -> None:
    env = {"FLOWYARD_SERVER": f"127.0.0.1:{free_port()}"}  # nothing listens: never dialled
    line = readme_install_line()
    given = flowyard([*line, "--token", "t0ken", "--no-create-namespace"], env)
    assert given.returncode == 0, given.stderr
    objects = list(yaml.safe_load_all(given.stdout))
    assert [o["kind"] for o in objects][:1] == ["ServiceAccount"]
    assert next(o for o in objects if o["kind"] == "Secret")["stringData"] == {"token": "t0ken"}
    both = flowyard([*line, "--token", "t", "--token-secret", "mine"], env)
    assert both.returncode == 2 and "not both" in both.stderr, both.stderr
