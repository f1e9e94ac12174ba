"""The manifests that run the control plane in a cluster (``flowyard server install``).

Replicas of one Deployment serve behind one ClusterIP Service and share one PostgreSQL
database. They need no Kubernetes API access at all: their ServiceAccount mounts no API token,
and nothing grants it a Role. Each pod runs the control-plane image (``Dockerfile``) as its
non-root user with a read-only root filesystem; the one place it writes, the data directory,
is an emptyDir. The database URL and the first admin token come from a Secret (keys
:data:`DB_URL_KEY` and :data:`ADMIN_TOKEN_KEY`): one printed with the manifests, or an
existing one, and then nothing secret is printed at all.

Kubernetes asks each pod's standard gRPC health service whether it has started (``grpc``
probe), its ``/readyz`` whether it is ready (database reachable, schema at head; 503 from the
moment it starts stopping) and its ``/healthz`` whether it is alive. The Service carries the
HTTP port too (web UI, JSON API), and the pods the usual annotations by which Prometheus
finds ``/metrics``.
A rollout adds a new pod before it stops an old one, and a PodDisruptionBudget lets a node
drain take one replica at a time.

Pure: dicts out (``flowyard_common.manifests.to_yaml`` prints them).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from control_plane.config import DEFAULT_HTTP_PORT, DEFAULT_PORT, ServerConfig
from control_plane.orchestration import tokens
from control_plane.store.db import CLOSE_WAIT_SECONDS, normalise_url
from control_plane.store.migrate import StoreError
from flowyard_common.manifests import DNS_LABEL, is_secret_name, namespace_manifest

__all__ = [
    "ADMIN_TOKEN_KEY",
    "DATA_DIR",
    "DB_URL_KEY",
    "SERVER_UID",
    "TERMINATION_GRACE_SECONDS",
    "install_manifests",
    "is_sqlite",
]

SERVER_UID: Final = 10001
"""The non-root user of the control-plane image (see ``Dockerfile``)."""

DATA_DIR: Final = "/var/lib/flowyard"
"""The image's data directory (``FLOWYARD_DATA_DIR``), an emptyDir in the pod."""

DB_URL_KEY: Final = "db-url"
"""The Secret's key holding the database URL (``FLOWYARD_DB_URL``)."""

ADMIN_TOKEN_KEY: Final = "admin-token"
"""The Secret's key holding the first admin token (``FLOWYARD_ADMIN_TOKEN``), if any."""

TERMINATION_GRACE_SECONDS: Final = (
    math.ceil(ServerConfig.shutdown_grace_seconds + CLOSE_WAIT_SECONDS) + 5
)
"""SIGTERM to SIGKILL: the server's graceful stop (calls drained for its shutdown grace, then
the database work still in flight waited for), and a margin for its last steps."""

# Service names must also start with a letter (RFC 1035).
_SERVICE_NAME: Final = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_SECRET_SUFFIX: Final = "-credentials"


def is_sqlite(db_url: str) -> bool:
    """Whether ``db_url`` is a SQLite database (a file in one pod, for one replica at most).

    Raises:
        ValueError: ``db_url`` is not a database URL Flowyard can use.
    """
    try:
        return normalise_url(db_url).get_backend_name() == "sqlite"
    except StoreError as error:
        raise ValueError(str(error)) from error


def install_manifests(
    *,
    namespace: str,
    image: str,
    name: str = "flowyard",
    replicas: int = 2,
    port: int = DEFAULT_PORT,
    http_port: int = DEFAULT_HTTP_PORT,
    db_url: str = "",
    admin_token: str = "",
    db_url_secret: str = "",
    create_namespace: bool = True,
) -> list[dict[str, Any]]:
    """The objects to apply, in order, to run ``replicas`` control planes named ``name``.

    The Namespace (unless ``create_namespace`` is false: it exists already), a ServiceAccount
    without API access, the Secret ``<name>-credentials`` holding ``db_url`` and
    ``admin_token`` (only with ``db_url``: with ``db_url_secret`` the pods read that existing
    Secret instead, whose admin token key is optional), the ClusterIP Service ``name`` on
    ``port``, the Deployment and its PodDisruptionBudget.

    Raises:
        ValueError: not exactly one of ``db_url`` and ``db_url_secret``; an admin token with
            ``db_url_secret`` (it would be printed) or not shaped like a minted one; a URL
            that is not a database's; SQLite for several replicas; a name Kubernetes would
            refuse; a replica count or port out of range.
    """
    if bool(db_url) == bool(db_url_secret):
        raise ValueError(
            "give the database URL (--db-url) or the name of an existing Secret holding it "
            "(--db-url-secret)"
        )
    if db_url_secret and admin_token:
        raise ValueError(
            f"with an existing Secret, put the admin token in it (key {ADMIN_TOKEN_KEY!r})"
        )
    if admin_token and not tokens.well_formed(admin_token):
        raise ValueError(f"the admin token must read {tokens.GIVEN_SHAPE}")
    if replicas < 1:
        raise ValueError(f"replicas must be 1 or more, got {replicas}")
    if db_url and is_sqlite(db_url) and replicas > 1:
        raise ValueError(
            "several replicas need PostgreSQL (--db-url postgresql://user:password@host/db): "
            "with SQLite each replica would keep a database of its own; use --replicas 1 "
            "for a SQLite trial"
        )
    for label, number in (("port", port), ("http port", http_port)):
        if not 1 <= number <= 65535:
            raise ValueError(f"{label} must be between 1 and 65535, got {number}")
    if http_port == port:
        raise ValueError(f"the HTTP port must differ from the gRPC port ({port})")
    if not DNS_LABEL.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} must be lowercase letters, digits and '-', at most 63 "
            "characters, starting and ending with a letter or digit"
        )
    # The name also prefixes the Secret's name, hence the shorter limit.
    limit = 63 - len(_SECRET_SUFFIX)
    if not _SERVICE_NAME.fullmatch(name) or len(name) > limit:
        raise ValueError(
            f"name {name!r} must be lowercase letters, digits and '-', at most {limit} "
            "characters, starting with a letter and ending with a letter or digit"
        )
    if db_url_secret and not is_secret_name(db_url_secret):
        raise ValueError(f"secret {db_url_secret!r} is not a valid Secret name")
    if not image.strip():
        raise ValueError("image must not be empty")

    labels = {
        "app.kubernetes.io/name": "flowyard-server",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "flowyard",
    }

    def metadata(object_name: str) -> dict[str, Any]:
        return {"name": object_name, "namespace": namespace, "labels": dict(labels)}

    secret_name = db_url_secret or name + _SECRET_SUFFIX
    namespace_object = namespace_manifest(namespace)
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(name),
        # The control plane never calls the Kubernetes API: no token to steal from its pods.
        "automountServiceAccountToken": False,
    }
    credentials = {DB_URL_KEY: db_url}
    if admin_token:
        credentials[ADMIN_TOKEN_KEY] = admin_token
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            **metadata(secret_name),
            "annotations": {
                "flowyard.io/description": (
                    f"The database URL and first admin token of control plane {name}."
                )
            },
        },
        "type": "Opaque",
        "stringData": credentials,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(labels),
            "ports": [
                {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": http_port, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }

    def probe(**timing: int) -> dict[str, Any]:
        # The standard gRPC health service: open without a token, NOT_SERVING once stopping.
        return {"grpc": {"port": port}, "timeoutSeconds": 5, **timing}

    def http_probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 5, **timing}

    def secret_env(variable: str, key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": secret_name, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": variable, "valueFrom": {"secretKeyRef": ref}}

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name),
        "spec": {
            "replicas": replicas,
            # A new pod serves before an old one stops: the Service never runs short.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(http_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    # Service links would put FLOWYARD_PORT=tcp://... and the like (from a
                    # Service named flowyard) among the server's FLOWYARD_* settings.
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": SERVER_UID,
                        "runAsGroup": SERVER_UID,
                        "fsGroup": SERVER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    # Replicas on different nodes where the cluster has room: one node's loss
                    # leaves the others serving.
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": dict(labels)},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "server",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            # After the image's `flowyard server start --host 0.0.0.0`.
                            "args": ["--port", str(port), "--http-port", str(http_port)],
                            "ports": [
                                {"name": "grpc", "containerPort": port, "protocol": "TCP"},
                                {"name": "http", "containerPort": http_port, "protocol": "TCP"},
                            ],
                            "env": [
                                secret_env("FLOWYARD_DB_URL", DB_URL_KEY),
                                # Without it the server writes admin.token to its data dir.
                                secret_env("FLOWYARD_ADMIN_TOKEN", ADMIN_TOKEN_KEY, optional=True),
                                {"name": "FLOWYARD_DATA_DIR", "value": DATA_DIR},
                            ],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"cpu": "2", "memory": "1Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            # Up to two minutes to migrate the schema, or to wait while the
                            # replica that holds the migration lock does, before liveness counts.
                            "startupProbe": probe(periodSeconds=2, failureThreshold=60),
                            "readinessProbe": http_probe(
                                "/readyz", periodSeconds=5, failureThreshold=2
                            ),
                            "livenessProbe": http_probe(
                                "/healthz", periodSeconds=10, failureThreshold=3
                            ),
                            "volumeMounts": [
                                {"name": "data", "mountPath": DATA_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    # The only writable places under the read-only root filesystem.
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    disruption_budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name),
        # One replica at a time may be evicted (a node drain); with a single replica the
        # drain is not blocked, as minAvailable 1 would block it for good.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}},
    }
    manifests: list[dict[str, Any]] = [namespace_object] if create_namespace else []
    manifests.append(service_account)
    if not db_url_secret:
        manifests.append(secret)
    return [*manifests, service, deployment, disruption_budget]
