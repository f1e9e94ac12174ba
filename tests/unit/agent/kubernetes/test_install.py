"""The manifests that install an agent in a cluster."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.kubernetes.install import HTTP_PORT, install_manifests, to_yaml

ARGS: dict[str, Any] = {
    "pool": "k8s-pool",
    "namespace": "flowyard",
    "image": "registry.example.com/flowyard-agent:0.1.0",
    "server": "flowyard.example.com:50051",
}

# What the agent does, and nothing else.
ALLOWED = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "events"): {"get", "list", "watch"},
}


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def test_every_manifest_validates() -> None:
    manifests = install_manifests(**ARGS, agent_token="t0ken")
    assert [m["kind"] for m in manifests] == [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
    ]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    # The namespace comes first, so the rest applies on a fresh cluster.
    assert manifests[0]["metadata"]["name"] == "flowyard"
    namespaced = [m for m in manifests[1:] if not m["kind"].startswith("Cluster")]
    assert all(m["metadata"]["namespace"] == "flowyard" for m in namespaced)


def test_the_only_cluster_wide_grant_is_listing_jobs_for_this_agent() -> None:
    kinds = by_kind(install_manifests(**ARGS, name="agent-a", agent_token="t"))
    role, binding = kinds["ClusterRole"], kinds["ClusterRoleBinding"]
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]}]
    # Cluster-scoped names are shared by all installs: two namespaces never collide.
    assert role["metadata"]["name"] == "flowyard-agent-a-list-jobs"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "agent-a", "namespace": "flowyard"}
    ]
    without = install_manifests(**ARGS, name="agent-a", agent_token="t", cluster_list=False)
    assert [m["kind"] for m in without] == [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Secret",
        "Deployment",
    ]


def test_the_namespace_can_be_left_out_and_is_not_removed_with_the_agent() -> None:
    with_namespace = install_manifests(**ARGS, agent_token="t")
    # Removing the agent by its instance label must not delete the namespace and its Jobs.
    assert "app.kubernetes.io/instance" not in with_namespace[0]["metadata"]["labels"]
    assert all("app.kubernetes.io/instance" in m["metadata"]["labels"] for m in with_namespace[1:])
    without = install_manifests(**ARGS, agent_token="t", create_namespace=False)
    assert without == with_namespace[1:]


def test_the_agent_name_survives_pod_replacement() -> None:
    """Not the pod's name: a new pod's agent must take over the runs of the one it replaces."""
    deployment = by_kind(install_manifests(**ARGS, name="agent-a", agent_token="t"))["Deployment"]
    agent = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in agent["env"]}
    assert env["FLOWYARD_AGENT_NAME"] == {
        "name": "FLOWYARD_AGENT_NAME",
        "value": "flowyard/agent-a",
    }
    # Two installs in two namespaces are two agents.
    other = install_manifests(**{**ARGS, "namespace": "team-b"}, name="agent-a", agent_token="t")
    other_env = by_kind(other)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FLOWYARD_AGENT_NAME", "value": "team-b/agent-a"} in other_env


def test_role_grants_only_what_the_agent_uses() -> None:
    role = by_kind(install_manifests(**ARGS, agent_token="t"))["Role"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames tricks
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == ALLOWED
    assert all("*" not in verbs for verbs in granted.values())


def test_binding_ties_the_role_to_the_service_account() -> None:
    kinds = by_kind(install_manifests(**ARGS, name="agent-a", agent_token="t"))
    binding = kinds["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": kinds["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "agent-a", "namespace": "flowyard"}
    ]
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]


def test_deployment() -> None:
    kinds = by_kind(install_manifests(**ARGS, name="agent-a", capacity=25, agent_token="t"))
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    [agent] = pod["containers"]
    assert agent["image"] == ARGS["image"]
    assert agent["args"] == [
        "--pool",
        "k8s-pool",
        "--server",
        "flowyard.example.com:50051",
        "--runtime",
        "kubernetes",
        "--namespace",
        "flowyard",
        "--capacity",
        "25",
    ]
    assert agent["resources"]["requests"] and agent["resources"]["limits"]
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    [port] = agent["ports"]
    assert port == {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    env = {item["name"]: item for item in agent["env"]}
    assert env["FLOWYARD_AGENT_HTTP_PORT"]["value"] == str(HTTP_PORT)
    assert env["FLOWYARD_AGENT_HTTP_HOST"]["value"] == "0.0.0.0"
    assert env["FLOWYARD_SERVER"]["value"] == ARGS["server"]
    assert env["FLOWYARD_POOL"]["value"] == "k8s-pool"
    assert env["FLOWYARD_AGENT_NAME"]["value"] == "flowyard/agent-a"
    secret = kinds["Secret"]
    assert env["FLOWYARD_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}
    }
    assert secret["stringData"] == {"token": "t"}


def test_a_token_or_an_existing_secret_is_required() -> None:
    with pytest.raises(ValueError, match="token"):
        install_manifests(**ARGS)
    with pytest.raises(ValueError, match="token"):
        install_manifests(**ARGS, agent_token="t", token_secret="mine")


def test_an_existing_token_secret_keeps_the_token_out_of_the_manifests() -> None:
    manifests = install_manifests(**ARGS, token_secret="agent-token-from-vault")
    assert [m["kind"] for m in manifests] == [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    ]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    agent = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in agent["env"]}
    assert env["FLOWYARD_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "agent-token-from-vault", "key": "token"}
    }
    with pytest.raises(ValueError, match="Secret name"):
        install_manifests(**ARGS, token_secret="Not_A_Name")


@pytest.mark.parametrize(
    "overrides",
    [
        {"namespace": "Bad_Namespace"},
        {"name": "agent.with.dots"},
        {"name": "a" * 60},
        {"pool": " "},
        {"capacity": 0},
    ],
)
def test_bad_input_is_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as error:
        install_manifests(**{**ARGS, "agent_token": "t", **overrides})
    assert "token" not in str(error.value)


def test_to_yaml_round_trips() -> None:
    manifests = install_manifests(**ARGS, agent_token="t")
    text = to_yaml(manifests)
    assert text.count("\n---\n") == len(manifests) - 1
    assert list(yaml.safe_load_all(text)) == manifests
    assert text.startswith("apiVersion: v1\nkind: Namespace\n")


def test_to_yaml_writes_shared_objects_out() -> None:
    shared = {"app": "x"}
    text = to_yaml([{"a": shared, "b": shared}])
    assert "&" not in text and "*" not in text
    assert yaml.safe_load(text) == {"a": shared, "b": shared}
