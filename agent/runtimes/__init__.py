"""Runtimes: where the agent creates run infrastructure.

``process`` runs each attempt as a local engine process; ``kubernetes`` as a Kubernetes Job.
Both sit behind the same :class:`~agent.runtimes.base.Runtime` interface.
"""

from __future__ import annotations

from agent.runtimes.base import EventCallback, Runtime
from agent.runtimes.kubernetes import KubernetesRuntime
from agent.runtimes.process import ProcessRuntime
from agent.settings import Settings

__all__ = ["EventCallback", "KubernetesRuntime", "ProcessRuntime", "Runtime", "make_runtime"]


def make_runtime(settings: Settings) -> Runtime:
    """The runtime ``settings.agent.runtime`` names."""
    if settings.agent.runtime == KubernetesRuntime.name:
        return KubernetesRuntime(settings.kubernetes, pool=settings.agent.pool)
    return ProcessRuntime(
        settings.process,
        # --engine-server defaults to --server; it differs when the agent itself uses the
        # mutual-TLS agent port, which engines (without client certificates) cannot.
        server=settings.kubernetes.engine_server,
        tls_ca=settings.connection.tls.ca,
    )
