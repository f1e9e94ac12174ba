"""``flowyard server install`` as a user runs it, and the control plane started as its pod is.

No cluster here: the pod's process is the image's entrypoint (``Dockerfile``) with the
Deployment's arguments and environment, its Secret references resolved from the printed Secret
and its emptyDir a fresh directory. It must serve the gRPC health service the probes ask, and
accept the admin token the install made.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, script
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc
from tests.ports import free_port
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
IMAGE = "registry.example.com/flowyard:0.1.0"
RBAC = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def flowyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script("flowyard"), "server", "install", "--image", IMAGE, *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def objects(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    printed = list(yaml.safe_load_all(result.stdout))
    for manifest in printed:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    kinds = [o["kind"] for o in printed]
    assert not RBAC & set(kinds), kinds
    return {o["kind"]: o for o in printed}


def entrypoint() -> list[str]:
    [line] = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("ENTRYPOINT ")
    ]
    command: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
    return command


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[Child, str, dict[str, Any], Path]]:
    """The server as the printed Deployment runs it (one replica on SQLite, no cluster)."""
    port = free_port()
    database = tmp_path / "db" / "flowyard.db"
    printed = objects(
        flowyard("--replicas", "1", "--port", str(port), "--db-url", f"sqlite:///{database}")
    )
    secret = printed["Secret"]
    [container] = printed["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {}
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        env[variable["name"]] = secret["stringData"][ref["key"]]
    empty_dir = tmp_path / "data"  # the emptyDir at FLOWYARD_DATA_DIR
    env["FLOWYARD_DATA_DIR"] = str(empty_dir)
    command = entrypoint()
    log_path = tmp_path / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*script(command[0]), *command[1:], *container["args"]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
    child = Child("control plane", process, log_path)
    try:
        yield child, f"127.0.0.1:{port}", secret, empty_dir
    finally:
        child.stop()


def test_the_pod_serves_its_probes_and_accepts_the_admin_token_of_the_secret(
    pod: tuple[Child, str, dict[str, Any], Path],
) -> None:
    child, address, secret, empty_dir = pod

    def serving() -> bool:
        assert child.alive(), child.log_tail()
        with grpc.insecure_channel(address) as channel:
            # What the kubelet's grpc probe asks: the server's overall health, no token.
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    wait_for(serving, timeout=DEADLINE, what="the health service to say SERVING")
    token = secret["stringData"]["admin-token"]
    control = control_plane_pb2_grpc.ControlPlaneServiceStub(open_channel(address, token))
    listed = control.ListTokens(pb.ListTokensRequest(), timeout=DEADLINE).tokens
    assert [(t.id, t.description) for t in listed] == [
        (token.split(".")[0], "given at first start (FLOWYARD_ADMIN_TOKEN)")
    ]
    # Given the token, the server kept no admin.token file in its emptyDir.
    assert not (empty_dir / "admin.token").exists()
    assert child.stop() == 0, child.log_tail()


def test_printed_with_a_url_the_token_is_in_the_secret_only() -> None:
    result = flowyard("--db-url", "postgresql://flowyard:pw@db.example.com/flowyard")
    printed = objects(result)
    token = printed["Secret"]["stringData"]["admin-token"]
    assert f"Made admin token {token.split('.')[0]}" in result.stderr
    assert token not in result.stderr and "pw@" not in result.stderr
    assert "kubectl -n flowyard get secret flowyard-credentials" in result.stderr
    assert printed["Deployment"]["spec"]["replicas"] == 2


def test_with_an_existing_secret_nothing_secret_is_printed() -> None:
    result = flowyard("--db-url-secret", "flowyard-db", "--no-create-namespace")
    printed = objects(result)
    assert list(printed) == ["ServiceAccount", "Service", "Deployment", "PodDisruptionBudget"]
    assert not any({"data", "stringData"} & set(o) for o in printed.values())
    assert "postgresql" not in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://flowyard:S3cretPW@db.example.com:notaport/x", "the port is not a number"),
        ("postgresql://flowyard@db.example.com/x?password=S3cretPW&sslmod=require", "sslmod"),
        ("postgresql://flowyard:S3cretPW@db.example.com", "names no database"),
        ("sqlite:///", "names no SQLite file"),
    ],
)
def test_a_malformed_db_url_is_refused_naming_the_flag_not_the_password(
    url: str, said: str
) -> None:
    refused = flowyard("--replicas", "1", "--db-url", url)
    assert refused.returncode == 2
    assert refused.stdout == ""  # nothing half-printed into kubectl
    assert "Traceback" not in refused.stderr and "S3cretPW" not in refused.stderr
    [error] = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: --db-url") and said in error, refused.stderr


def test_several_replicas_on_sqlite_are_refused_and_one_is_warned_about() -> None:
    refused = flowyard("--replicas", "2", "--db-url", "sqlite:////var/lib/flowyard/f.db")
    assert refused.returncode == 2
    assert "several replicas need PostgreSQL" in refused.stderr, refused.stderr
    assert refused.stdout == ""  # nothing half-printed into kubectl
    single = flowyard("--replicas", "1", "--db-url", "sqlite:////var/lib/flowyard/f.db")
    objects(single)
    assert "warning: a SQLite database lives in the pod" in single.stderr
    both = flowyard("--db-url", "postgresql://h/db", "--db-url-secret", "s")
    assert both.returncode == 2 and "not both" in both.stderr, both.stderr
    neither = flowyard()
    assert neither.returncode == 2 and "--db-url-secret" in neither.stderr, neither.stderr
