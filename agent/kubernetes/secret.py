"""The per-attempt Secret: the engine's token (and the control plane's CA) out of the Job.

The token is never a literal in the Job: the container reads ``FLOWYARD_RUN_TOKEN`` from the
Secret, so ``kubectl get job -o yaml`` and the dry-run output never show it. The Secret has the
Job's name; the agent creates it first and then makes the Job its owner, so that deleting the
Job, or its TTL running out, removes the Secret too.
"""

from __future__ import annotations

import base64
from typing import Any, Final

TOKEN_KEY: Final = "token"
"""The key of the engine token in the per-attempt Secret."""
TLS_CA_KEY: Final = "tls-ca.pem"
"""The key of the control plane's CA certificate in the per-attempt Secret, when TLS is on."""


def engine_secret(
    name: str,
    namespace: str,
    labels: dict[str, str],
    *,
    engine_token: str | None,
    tls_ca: str | None,
) -> dict[str, Any]:
    """The Secret of one attempt; without ``engine_token`` (a dry run) it has no data."""
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "type": "Opaque",
    }
    if engine_token is not None:
        secret["data"] = {TOKEN_KEY: _base64(engine_token)}
        if tls_ca is not None:
            secret["data"][TLS_CA_KEY] = _base64(tls_ca)
    return secret


def token_env(name: str, *, tls_ca: bool) -> list[dict[str, Any]]:
    """The container's env entries that read the token (and the CA) from Secret ``name``."""
    entries: list[dict[str, Any]] = [
        {
            "name": "FLOWYARD_RUN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}},
        }
    ]
    if tls_ca:
        entries.append(
            {
                "name": "FLOWYARD_TLS_CA_PEM",
                "valueFrom": {"secretKeyRef": {"name": name, "key": TLS_CA_KEY}},
            }
        )
    return entries


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")
