"""The resource kinds the fake API server knows, and how each one is addressed.

Faithful: URL paths (``/api/v1/...`` for the core group, ``/apis/batch/v1/...`` for Jobs), the
qualified names used in messages (``jobs.batch``, ``Job.batch``, ``pods``, ``Pod``), which kinds
have a ``/status`` subresource, which delete gracefully (pods), which return the deleted object
(pods) rather than a ``Status``, and which orphan their dependents when deleted without a
propagation policy (batch/v1 Jobs, for backwards compatibility). Simplified: namespaces exist
implicitly and there is no discovery document.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One REST resource: ``plural`` in URLs, ``kind`` in objects."""

    plural: str
    kind: str
    group: str
    version: str
    has_status: bool = False
    graceful: bool = False
    returns_deleted: bool = False
    orphans_by_default: bool = False
    has_generation: bool = False

    @property
    def api_version(self) -> str:
        """``batch/v1`` or ``v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``jobs.batch`` or ``pods``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """``Job.batch`` or ``Pod``: how validation errors name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind(self) -> str:
        """``JobList``, ``PodList``..."""
        return f"{self.kind}List"


JOBS = Resource(
    "jobs", "Job", "batch", "v1", has_status=True, orphans_by_default=True, has_generation=True
)
PODS = Resource(
    "pods",
    "Pod",
    "",
    "v1",
    has_status=True,
    graceful=True,
    returns_deleted=True,
    has_generation=True,
)
SECRETS = Resource("secrets", "Secret", "", "v1")
CONFIGMAPS = Resource("configmaps", "ConfigMap", "", "v1")
EVENTS = Resource("events", "Event", "", "v1")

ALL = (JOBS, PODS, SECRETS, CONFIGMAPS, EVENTS)
BY_PATH = {(resource.api_version, resource.plural): resource for resource in ALL}
BY_KIND = {(resource.api_version, resource.kind): resource for resource in ALL}
BY_PLURAL = {resource.plural: resource for resource in ALL}
