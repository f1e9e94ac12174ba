"""The names and labels of what the agent creates in a cluster, and how they derive from a run.

A Job and its Secret are named :func:`job_name`, from run id and attempt only: submitting the
same attempt twice gets ``409 Conflict`` from Kubernetes and the agent adopts the existing Job,
never duplicates it. The labels let the agent find its Jobs and pods again after a restart.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from flowyard_common.manifests import DNS_LABEL

RUN_ID_LABEL: Final = "flowyard.io/run-id"
ATTEMPT_LABEL: Final = "flowyard.io/attempt"
POOL_LABEL: Final = "flowyard.io/pool"
DEPLOYMENT_LABEL: Final = "flowyard.io/deployment"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "flowyard"
"""Every Job and Secret the agent creates carries ``app.kubernetes.io/managed-by: flowyard``."""

# Label values are limited to 63 characters; the exact names go into annotations.
DEPLOYMENT_ANNOTATION: Final = "flowyard.io/deployment"
FLOW_ANNOTATION: Final = "flowyard.io/flow"

CONTAINER_NAME: Final = "flowyard"
"""The name of the Job's one container, whatever the template says: the agent reads its logs
and status by this name."""

_LABEL_VALUE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]+")
_LABEL_VALUE_MAX: Final = 63


def job_name(run_id: str, attempt: int) -> str:
    """The name of the Job (and its Secret) for one attempt: ``flowyard-<run id>-<attempt>``.

    Raises:
        ValueError: the result would not be a valid object name (a DNS-1123 label).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    name = f"flowyard-{run_id}-{attempt}"
    if not DNS_LABEL.fullmatch(name):
        raise ValueError(f"run id {run_id!r} cannot be part of a Kubernetes object name")
    return name


def label_value(value: str) -> str:
    """``value`` as a valid label value: other characters become ``-``, at most 63 characters.

    A value that has to be shortened keeps a hash of the whole, so that two long names that
    share a prefix still get different labels.
    """
    slug = _LABEL_VALUE_CHARS.sub("-", value).strip("-_.")
    if len(slug) > _LABEL_VALUE_MAX:
        digest = hashlib.sha256(value.encode()).hexdigest()[:8]
        slug = f"{slug[: _LABEL_VALUE_MAX - 9].rstrip('-_.')}-{digest}"
    return slug
