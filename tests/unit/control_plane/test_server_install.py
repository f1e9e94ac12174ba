"""The manifests that run the control plane in a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from control_plane.cli.install import (
    DATA_DIR,
    SERVER_UID,
    TERMINATION_GRACE_SECONDS,
    install_manifests,
)
from control_plane.cli.main import cli
from control_plane.config import DEFAULT_HTTP_PORT, DEFAULT_PORT, ServerConfig
from control_plane.orchestration import tokens
from control_plane.store.db import CLOSE_WAIT_SECONDS
from flowyard_common.manifests import to_yaml

ROOT = Path(__file__).resolve().parents[3]
DB_URL = "postgresql://flowyard:s3cret-password@db.example.com:5432/flowyard"
ADMIN_TOKEN = tokens.mint()[0]
ARGS: dict[str, Any] = {"namespace": "flowyard", "image": "registry.example.com/flowyard:0.1.0"}
RBAC = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def server_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def validate(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize(
    "secret",
    [{"db_url": DB_URL, "admin_token": ADMIN_TOKEN}, {"db_url_secret": "flowyard-from-vault"}],
    ids=["db-url", "db-url-secret"],
)
@pytest.mark.parametrize("create_namespace", [True, False])
def test_every_manifest_validates_and_none_grants_api_access(
    secret: dict[str, str], create_namespace: bool
) -> None:
    manifests = install_manifests(**ARGS, **secret, create_namespace=create_namespace)
    validate(manifests)
    kinds = [m["kind"] for m in manifests]
    assert kinds == [
        *(["Namespace"] if create_namespace else []),
        "ServiceAccount",
        *(["Secret"] if "db_url" in secret else []),
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    assert not RBAC & set(kinds)
    assert all(
        m["metadata"]["namespace"] == "flowyard" for m in manifests if m["kind"] != "Namespace"
    )
    # No API token in the pods: the ServiceAccount's and the pod's say so.
    account = by_kind(manifests)["ServiceAccount"]
    assert account["automountServiceAccountToken"] is False
    pod = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False


def test_the_namespace_is_not_removed_with_the_control_plane() -> None:
    manifests = install_manifests(**ARGS, db_url=DB_URL)
    assert "app.kubernetes.io/instance" not in manifests[0]["metadata"]["labels"]
    assert all("app.kubernetes.io/instance" in m["metadata"]["labels"] for m in manifests[1:])
    assert install_manifests(**ARGS, db_url=DB_URL, create_namespace=False) == manifests[1:]


def test_the_secret_feeds_the_server_and_nothing_secret_is_a_literal() -> None:
    manifests = install_manifests(**ARGS, db_url=DB_URL, admin_token=ADMIN_TOKEN)
    secret = by_kind(manifests)["Secret"]
    assert secret["stringData"] == {"db-url": DB_URL, "admin-token": ADMIN_TOKEN}
    env = {item["name"]: item for item in server_container(manifests)["env"]}
    name = secret["metadata"]["name"]
    assert env["FLOWYARD_DB_URL"]["valueFrom"] == {"secretKeyRef": {"name": name, "key": "db-url"}}
    assert env["FLOWYARD_ADMIN_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": name, "key": "admin-token", "optional": True}
    }
    assert env["FLOWYARD_DATA_DIR"] == {"name": "FLOWYARD_DATA_DIR", "value": DATA_DIR}
    deployment = yaml.safe_dump(by_kind(manifests)["Deployment"])
    assert "s3cret-password" not in deployment and ADMIN_TOKEN not in deployment


def test_the_deployments_variables_are_what_server_start_reads() -> None:
    start = cli.commands["server"].commands["start"]  # type: ignore[attr-defined]
    read = {p.envvar for p in start.params}
    env = server_container(install_manifests(**ARGS, db_url=DB_URL))["env"]
    assert {item["name"] for item in env} <= read


def test_an_existing_secret_keeps_every_secret_out_of_the_output() -> None:
    manifests = install_manifests(**ARGS, db_url_secret="flowyard-from-vault")
    assert "Secret" not in by_kind(manifests)
    text = to_yaml(manifests)
    assert "stringData" not in text and "postgresql://" not in text
    env = {item["name"]: item for item in server_container(manifests)["env"]}
    assert env["FLOWYARD_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "flowyard-from-vault",
        "key": "db-url",
    }
    # The existing Secret may hold the first admin token; without it, the server's file.
    assert env["FLOWYARD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "flowyard-from-vault",
        "key": "admin-token",
        "optional": True,
    }
    # A token given beside an existing Secret would be printed: refused.
    with pytest.raises(ValueError, match="put the admin token in it"):
        install_manifests(**ARGS, db_url_secret="flowyard-from-vault", admin_token=ADMIN_TOKEN)


@pytest.mark.parametrize(
    "url", ["sqlite:////var/lib/flowyard/flowyard.db", "sqlite+aiosqlite:///x.db"]
)
def test_several_replicas_on_sqlite_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="several replicas need PostgreSQL"):
        install_manifests(**ARGS, db_url=url, replicas=2)
    # One replica is a trial: allowed.
    single = install_manifests(**ARGS, db_url=url, replicas=1)
    assert by_kind(single)["Deployment"]["spec"]["replicas"] == 1


def test_deployment() -> None:
    manifests = install_manifests(**ARGS, db_url=DB_URL, replicas=3, port=7800)
    deployment = by_kind(manifests)["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    [preferred] = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"] == {
        "labelSelector": {"matchLabels": selector},
        "topologyKey": "kubernetes.io/hostname",
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == SERVER_UID != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    # Long enough for the server's whole graceful stop.
    grace = ServerConfig().shutdown_grace_seconds + CLOSE_WAIT_SECONDS
    assert grace < pod["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS <= grace + 10
    server = server_container(manifests)
    assert server["image"] == ARGS["image"]
    assert server["args"] == ["--port", "7800", "--http-port", str(DEFAULT_HTTP_PORT)]
    assert server["ports"] == [
        {"name": "grpc", "containerPort": 7800, "protocol": "TCP"},
        {"name": "http", "containerPort": DEFAULT_HTTP_PORT, "protocol": "TCP"},
    ]
    assert server["resources"]["requests"] and server["resources"]["limits"]
    assert server["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # Started: the gRPC health service answers (after migrations). Ready: /readyz (503 once
    # stopping). Alive: /healthz.
    assert server["startupProbe"]["grpc"] == {"port": 7800}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULT_HTTP_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    # The data directory is writable under the read-only root filesystem.
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[DATA_DIR]] == {"name": mounts[DATA_DIR], "emptyDir": {}}


def test_service_and_disruption_budget_select_the_servers() -> None:
    manifests = install_manifests(**ARGS, db_url=DB_URL, name="cp", port=7800)
    kinds = by_kind(manifests)
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = kinds["Service"]
    assert service["metadata"]["name"] == "cp"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 7800, "targetPort": "grpc", "protocol": "TCP"},
        {"name": "http", "port": DEFAULT_HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
    ]
    budget = kinds["PodDisruptionBudget"]["spec"]
    # One at a time, and a single replica can still be drained.
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_the_default_port_is_the_servers() -> None:
    manifests = install_manifests(**ARGS, db_url=DB_URL)
    assert by_kind(manifests)["Service"]["spec"]["ports"][0]["port"] == DEFAULT_PORT
    assert server_container(manifests)["args"][:2] == ["--port", str(DEFAULT_PORT)]


def test_the_manifests_match_the_image() -> None:
    """The uid and data directory the pod is given are the image's (Dockerfile)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"\nUSER {SERVER_UID}\n" in dockerfile
    assert f"FLOWYARD_DATA_DIR={DATA_DIR} " in dockerfile


@pytest.mark.parametrize(
    ("overrides", "word"),
    [
        ({}, "--db-url"),
        ({"db_url": DB_URL, "db_url_secret": "s"}, "--db-url"),
        ({"db_url": "mysql://u@h/db"}, "unsupported database"),
        ({"db_url": "not a url"}, "not a database URL"),
        ({"db_url": DB_URL, "admin_token": "weak.token"}, "admin token must read"),
        ({"db_url": DB_URL, "namespace": "Bad_Namespace"}, "namespace"),
        ({"db_url": DB_URL, "name": "9starts-with-a-digit"}, "name"),
        ({"db_url": DB_URL, "name": "a" * 52}, "name"),
        ({"db_url_secret": "Not_A_Name"}, "Secret name"),
        ({"db_url": DB_URL, "replicas": 0}, "replicas"),
        ({"db_url": DB_URL, "port": 0}, "port"),
        ({"db_url": DB_URL, "http_port": 70000}, "http port"),
        ({"db_url": DB_URL, "http_port": DEFAULT_PORT}, "must differ"),
        ({"db_url": DB_URL, "image": " "}, "image"),
    ],
)
def test_bad_input_is_rejected(overrides: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word) as error:
        install_manifests(**{**ARGS, **overrides})
    assert "s3cret-password" not in str(error.value)
