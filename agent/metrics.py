"""The agent's Prometheus metrics, served on ``/metrics`` when ``--http-port`` is set.

A registry of their own, not prometheus_client's global one: the exposition is exactly these,
and a test process that runs several agents does not register anything twice. Each metric is
counted where the agent acts (a Job created, a watch resumed, an API request answered), once
per action: nothing here is on a per-line path.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)

__all__ = [
    "API_ERRORS",
    "API_SECONDS",
    "CONTENT_TYPE",
    "DIAGNOSES",
    "JOBS_SUBMITTED",
    "REGISTRY",
    "RUNS_STARTED",
    "WATCH_RESTARTS",
]

#: The Content-Type of the text exposition ``/metrics`` answers with.
CONTENT_TYPE = CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

# A ``_created`` timestamp beside every counter and histogram would double the exposition,
# and nothing reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

RUNS_STARTED = Counter(
    "flowyard_agent_runs_started",
    "Run attempts whose infrastructure the agent started (or adopted), by runtime.",
    ["runtime"],
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "flowyard_agent_jobs_submitted",
    "Kubernetes Jobs of run attempts: created, or found already there and adopted.",
    ["outcome"],
    registry=REGISTRY,
)
WATCH_RESTARTS = Counter(
    "flowyard_agent_watch_restarts",
    "Kubernetes watches opened again, by resource and why: the stream ended (its server-side "
    "timeout, a dropped connection), it expired (410 Gone: listed again) or failed.",
    ["resource", "reason"],
    registry=REGISTRY,
)
API_SECONDS = Histogram(
    "flowyard_agent_kubernetes_request_seconds",
    "Kubernetes API requests (each try of a retried call), by verb; watches not included.",
    ["verb"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "flowyard_agent_kubernetes_errors",
    "Kubernetes API requests that failed, by verb and HTTP status (0: no answer); 404 of a "
    "read or delete is how a missing object is found, not a fault.",
    ["verb", "code"],
    registry=REGISTRY,
)
DIAGNOSES = Counter(
    "flowyard_agent_pod_diagnoses",
    "What the agent reported about run pods, by kind (PENDING, IMAGE_PULL_ERROR, OOM_KILLED, "
    "FAILED, ...) and Kubernetes reason; each new diagnosis of an attempt once.",
    ["kind", "reason"],
    registry=REGISTRY,
)
