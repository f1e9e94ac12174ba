"""The manifests that install one agent in a cluster (``flowyard agent install``-style output).

One agent serves one pool in one namespace and creates its runs' Jobs there. It runs as its own
ServiceAccount, bound to a namespaced Role that grants only the verbs the agent uses
(:data:`AGENT_RULES`). The one cluster-wide grant is ``list`` on Jobs (a ClusterRole, left out
with ``cluster_list=False``): at start the agent lists its pool's Jobs in every namespace, so
it watches again the runs a ``namespace`` job variable put elsewhere. Such a namespace needs
the same Role and a RoleBinding there.

The agent's name, its identity towards the control plane, is ``<namespace>/<install name>``
(:func:`agent_name`), written into the Deployment: it survives rollouts, evictions and node
drains, so the agent of a replacement pod takes over the runs its predecessor held. The pod's
name only goes into the instance id the agent makes up for each process.

Pure: dicts out, and YAML text via PyYAML (not the Kubernetes client; ``to_yaml`` is shared
with ``flowyard server install`` and re-exported here).
"""

from __future__ import annotations

from typing import Any, Final

from flowyard_common.manifests import DNS_LABEL, is_secret_name, namespace_manifest, to_yaml

__all__ = [
    "AGENT_RULES",
    "AGENT_UID",
    "CLUSTER_RULES",
    "HTTP_PORT",
    "agent_name",
    "install_manifests",
    "to_yaml",
]

AGENT_UID: Final = 10001
"""The non-root user of the agent image (see ``Dockerfile.agent``)."""

HTTP_PORT: Final = 9700
"""The installed agent's ``/metrics`` and ``/healthz`` port (container port ``http``)."""

AGENT_RULES: Final[tuple[dict[str, Any], ...]] = (
    # Create, watch and clean up run Jobs; patch is for ownership and cancellation.
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "delete", "patch"],
    },
    # Diagnose pods (pending, image pull errors, OOMKilled) and read their log tail.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # The per-attempt Secret holding the engine token; patch sets its owner reference.
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["create", "get", "list", "watch", "delete", "patch"],
    },
    # Scheduling and image-pull failures are reported as events.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
)
"""The Role's rules: exactly the API calls the agent makes, in its own namespace."""

CLUSTER_RULES: Final[tuple[dict[str, Any], ...]] = (
    # One labelled list at start, to find the namespaces its unfinished Jobs are in.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
)
"""The ClusterRole's rules: reading where Jobs are, nothing else across the cluster."""

_TOKEN_SECRET_SUFFIX: Final = "-token"


def agent_name(namespace: str, name: str) -> str:
    """The name the installed agent connects with: one per install, whatever its pod is called."""
    return f"{namespace}/{name}"


def install_manifests(
    *,
    pool: str,
    namespace: str,
    image: str,
    server: str,
    agent_token: str = "",
    name: str = "flowyard-agent",
    capacity: int = 10,
    token_secret: str = "",
    create_namespace: bool = True,
    cluster_list: bool = True,
) -> list[dict[str, Any]]:
    """The objects to apply, in order, to run agent ``name`` for ``pool`` in ``namespace``.

    The Namespace (unless ``create_namespace`` is false: it exists already), ServiceAccount,
    Role, RoleBinding, the ClusterRole and ClusterRoleBinding that let the agent list Jobs
    across namespaces (unless ``cluster_list`` is false), the Secret with the agent token (key ``token``), and a
    single-replica Deployment that reads the token from that Secret (``FLOWYARD_TOKEN``); the
    token is never a literal in the Deployment. With ``token_secret`` instead of
    ``agent_token``, no Secret is emitted: the Deployment references an existing Secret of
    that name (key ``token``), e.g. one made by ``kubectl create secret``, so the token never
    appears in the manifests at all. The agent serves ``/metrics`` and ``/healthz`` on
    container port ``http`` (:data:`HTTP_PORT`); its probes ask ``/healthz``.

    Raises:
        ValueError: a name that Kubernetes would refuse, a capacity below 1, or not exactly
            one of ``agent_token`` and ``token_secret``.
    """
    if bool(agent_token) == bool(token_secret):
        raise ValueError(
            "give the agent token (--token, from 'flowyard token create --agent --pool "
            f"{pool}') or the name of an existing Secret holding it (--token-secret)"
        )
    for what, value in (("namespace", namespace), ("name", name)):
        # The name also prefixes the token Secret's name, hence the shorter limit.
        limit = 63 - len(_TOKEN_SECRET_SUFFIX) if what == "name" else 63
        if not DNS_LABEL.fullmatch(value) or len(value) > limit:
            raise ValueError(
                f"{what} {value!r} must be lowercase letters, digits and '-', at most "
                f"{limit} characters, starting and ending with a letter or digit"
            )
    for what, value in (("pool", pool), ("image", image), ("server", server)):
        if not value.strip():
            raise ValueError(f"{what} must not be empty")
    if capacity < 1:
        raise ValueError(f"capacity must be 1 or more, got {capacity}")

    labels = {
        "app.kubernetes.io/name": "flowyard-agent",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "flowyard",
    }

    def metadata(object_name: str) -> dict[str, Any]:
        return {"name": object_name, "namespace": namespace, "labels": dict(labels)}

    if token_secret and not is_secret_name(token_secret):
        raise ValueError(f"token secret {token_secret!r} is not a valid Secret name")
    emit_secret = not token_secret
    token_secret = token_secret or name + _TOKEN_SECRET_SUFFIX
    # Removing the agent by its label leaves the namespace, and the Jobs in it, alone.
    namespace_object = namespace_manifest(namespace)
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(name),
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(name),
        "rules": [{key: list(value) for key, value in rule.items()} for rule in AGENT_RULES],
    }
    role_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    # Cluster-scoped names are shared by every install: qualify them with the namespace.
    cluster_name = f"{namespace}-{name}-list-jobs"
    cluster_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": cluster_name, "labels": dict(labels)},
        "rules": [{key: list(value) for key, value in rule.items()} for rule in CLUSTER_RULES],
    }
    cluster_role_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": cluster_name, "labels": dict(labels)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            **metadata(token_secret),
            "annotations": {
                "flowyard.io/description": (
                    "The token agent " + name + " presents to the control plane."
                )
            },
        },
        "type": "Opaque",
        "stringData": {"token": agent_token},
    }

    def probe(**timing: int) -> dict[str, Any]:
        # /healthz answers as ``flowyard-agent --probe`` does, without a process per probe.
        return {"httpGet": {"path": "/healthz", "port": "http"}, "timeoutSeconds": 5, **timing}

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name),
        "spec": {
            "replicas": 1,
            # Never two agents of the same name at once during a rollout: the old pod is gone
            # before the new one starts. (An evicted pod's replacement may start while it
            # drains; the control plane then lets the new agent in once the old one left.)
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    # The convention most Prometheus set-ups discover pods to scrape by.
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": AGENT_UID,
                        "runAsGroup": AGENT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    # Enough for the agent to stop watching and close its stream cleanly.
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "agent",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [
                                "--pool",
                                pool,
                                "--server",
                                server,
                                "--runtime",
                                "kubernetes",
                                "--namespace",
                                namespace,
                                "--capacity",
                                str(capacity),
                            ],
                            "env": [
                                {"name": "FLOWYARD_SERVER", "value": server},
                                {"name": "FLOWYARD_POOL", "value": pool},
                                # Not the pod's name, which changes with every new pod.
                                {
                                    "name": "FLOWYARD_AGENT_NAME",
                                    "value": agent_name(namespace, name),
                                },
                                {
                                    "name": "FLOWYARD_TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": token_secret, "key": "token"}
                                    },
                                },
                                # Reachable by the kubelet's probes and by Prometheus.
                                {"name": "FLOWYARD_AGENT_HTTP_HOST", "value": "0.0.0.0"},
                                {"name": "FLOWYARD_AGENT_HTTP_PORT", "value": str(HTTP_PORT)},
                            ],
                            "ports": [
                                {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}
                            ],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "512Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "readinessProbe": probe(periodSeconds=10),
                            # Generous: restarting does not help while the control plane is
                            # unreachable, and the agent reconnects by itself.
                            "livenessProbe": probe(
                                initialDelaySeconds=30, periodSeconds=30, failureThreshold=4
                            ),
                        }
                    ],
                },
            },
        },
    }
    manifests: list[dict[str, Any]] = [namespace_object] if create_namespace else []
    manifests += [service_account, role, role_binding]
    if cluster_list:
        manifests += [cluster_role, cluster_role_binding]
    if emit_secret:
        manifests.append(secret)
    return [*manifests, deployment]
