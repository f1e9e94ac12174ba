"""The base job template of ``kubernetes`` pools: its default, and what any template must be.

:func:`default_template` is what a pool gets when created without one; its ``variables``
section (JSON Schema) declares every job variable a deployment or run may set, with the
patterns Kubernetes itself enforces, so that a mistake is reported before a Job is created.
:func:`check_kubernetes_template` checks a custom template when the pool is saved.
"""

from __future__ import annotations

from typing import Any, Final

from agent import __version__
from agent.kubernetes.naming import CONTAINER_NAME
from flowyard_common.templates import PLACEHOLDER, TemplateError, check_template

DEFAULT_IMAGE: Final = f"flowyard/flowyard:{__version__}"
"""The image when no deployment sets one: Flowyard's own image at the release that created the
pool, so that engine and control plane speak the same protocol. It has no flow code or
dependencies of its own, so real deployments set ``image`` (or a ``git``/archive source)."""
DEFAULT_POD_START_TIMEOUT: Final = 300.0

_ALLOWED_CONFIGURATION_KEYS: Final = frozenset(
    {"namespace", "pod_start_timeout_seconds", "env", "labels", "job_manifest"}
)

_DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN_PATTERN: Final = (
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# A qualified name with an optional DNS-subdomain prefix: label, annotation and selector keys.
_QUALIFIED_NAME_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_PATTERN: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
_ENV_NAME_PATTERN: Final = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Kubernetes resource quantities ("500m", "1.5", "2Gi", "1e3"); negative amounts make no sense.
_QUANTITY_PATTERN: Final = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def default_template() -> dict[str, Any]:
    """The base job template a ``kubernetes`` pool gets when it is created without one."""
    return {
        "job_configuration": {
            "namespace": "{{ namespace }}",
            "pod_start_timeout_seconds": "{{ pod_start_timeout_seconds }}",
            "env": "{{ env }}",
            "labels": "{{ labels }}",
            "job_manifest": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "namespace": "{{ namespace }}",
                    "labels": "{{ labels }}",
                    "annotations": "{{ annotations }}",
                },
                "spec": {
                    "backoffLimit": "{{ backoff_limit }}",
                    "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
                    "parallelism": 1,
                    "completions": 1,
                    "template": {
                        "metadata": {"annotations": "{{ annotations }}"},
                        "spec": {
                            "restartPolicy": "Never",
                            "serviceAccountName": "{{ service_account_name }}",
                            "imagePullSecrets": "{{ image_pull_secrets }}",
                            "nodeSelector": "{{ node_selector }}",
                            "tolerations": "{{ tolerations }}",
                            "containers": [
                                {
                                    "name": CONTAINER_NAME,
                                    "image": "{{ image }}",
                                    "imagePullPolicy": "{{ image_pull_policy }}",
                                    "resources": {
                                        "requests": {
                                            "cpu": "{{ cpu_request }}",
                                            "memory": "{{ memory_request }}",
                                        },
                                        "limits": {
                                            "cpu": "{{ cpu_limit }}",
                                            "memory": "{{ memory_limit }}",
                                        },
                                    },
                                }
                            ],
                        },
                    },
                },
            },
        },
        "variables": {"type": "object", "properties": _variables()},
    }


def _variables() -> dict[str, Any]:
    def strings(key_pattern: str, value: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"pattern": key_pattern},
            "additionalProperties": value or {"type": "string"},
        }

    def quantity(title: str, description: str) -> dict[str, Any]:
        return {
            "title": title,
            "description": description,
            "type": "string",
            "pattern": _QUANTITY_PATTERN,
            "examples": ["500m", "2", "512Mi", "4Gi"],
        }

    return {
        "image": {
            "title": "Image",
            "description": (
                "The container image the run executes in; it must contain the flow's code and "
                f"dependencies and Flowyard's engine (`flowyard-engine`). Defaults to "
                f"{DEFAULT_IMAGE}, which has no flow code: deployments normally set it."
            ),
            "type": "string",
            "minLength": 1,
            "default": DEFAULT_IMAGE,
        },
        "image_pull_policy": {
            "title": "Image pull policy",
            "description": "When the kubelet pulls the image.",
            "type": "string",
            "enum": ["IfNotPresent", "Always", "Never"],
            "default": "IfNotPresent",
        },
        "image_pull_secrets": {
            "title": "Image pull secrets",
            "description": (
                "Names of Secrets in the Job's namespace with credentials for the image's registry."
            ),
            "type": "array",
            "items": {"type": "string", "pattern": _DNS_SUBDOMAIN_PATTERN},
        },
        "namespace": {
            "title": "Namespace",
            "description": (
                "The namespace the Job and its Secret are created in. The agent's Role must "
                "allow it there; the install manifests grant only the agent's own namespace."
            ),
            "type": "string",
            "pattern": _DNS_LABEL_PATTERN,
            "default": "default",
        },
        "service_account_name": {
            "title": "Service account",
            "description": "The service account the run's pod runs as (the namespace's "
            "`default` when unset).",
            "type": "string",
            "pattern": _DNS_SUBDOMAIN_PATTERN,
        },
        "env": {
            "title": "Environment variables",
            "description": (
                "Extra environment variables for the engine's container, name to value. Run "
                "values are merged over deployment values name by name. FLOWYARD_SERVER, "
                "FLOWYARD_RUN_ID, FLOWYARD_RUN_ATTEMPT and FLOWYARD_RUN_TOKEN are always set "
                "by Flowyard."
            ),
            **strings(_ENV_NAME_PATTERN),
        },
        "labels": {
            "title": "Labels",
            "description": (
                "Labels for the Job and its pod. Flowyard's own labels (flowyard.io/*, "
                "app.kubernetes.io/managed-by) take precedence."
            ),
            **strings(_QUALIFIED_NAME_PATTERN, {"type": "string", "pattern": _LABEL_VALUE_PATTERN}),
        },
        "annotations": {
            "title": "Annotations",
            "description": "Annotations for the Job and its pod.",
            **strings(_QUALIFIED_NAME_PATTERN),
        },
        "cpu_request": quantity("CPU request", "CPU reserved for the run's container."),
        "cpu_limit": quantity("CPU limit", "The most CPU the run's container may use."),
        "memory_request": quantity("Memory request", "Memory reserved for the run's container."),
        "memory_limit": quantity(
            "Memory limit",
            "The most memory the run's container may use; beyond it the container is "
            "OOMKilled and the run fails.",
        ),
        "node_selector": {
            "title": "Node selector",
            "description": "Node labels the run's pod must be scheduled on.",
            **strings(_QUALIFIED_NAME_PATTERN, {"type": "string", "pattern": _LABEL_VALUE_PATTERN}),
        },
        "tolerations": {
            "title": "Tolerations",
            "description": "Taints the run's pod tolerates (Kubernetes toleration objects).",
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                    "value": {"type": "string"},
                    "effect": {
                        "type": "string",
                        "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                    },
                    "tolerationSeconds": {"type": "integer"},
                },
                "additionalProperties": False,
            },
        },
        "backoff_limit": {
            "title": "Backoff limit",
            "description": (
                "How many times Kubernetes restarts a failed pod within one attempt. Keep 0 and "
                "use the deployment's retries: Flowyard retries runs itself, as new attempts."
            ),
            "type": "integer",
            "minimum": 0,
            "default": 0,
        },
        "finished_job_ttl": {
            "title": "Finished Job TTL",
            "description": (
                "Seconds a finished Job (and its pod and Secret) is kept before Kubernetes "
                "deletes it, even if no agent is left to clean up. Unset keeps it forever."
            ),
            "type": "integer",
            "minimum": 0,
            "default": 86400,
        },
        "pod_start_timeout_seconds": {
            "title": "Pod start timeout",
            "description": (
                "Seconds the run's pod may take to start (scheduling, image pull) before the run "
                "is marked CRASHED."
            ),
            "type": "number",
            "exclusiveMinimum": 0,
            "default": DEFAULT_POD_START_TIMEOUT,
        },
    }


def check_kubernetes_template(template: dict[str, Any]) -> None:
    """Raise :class:`TemplateError` unless ``template`` can work for a ``kubernetes`` pool.

    On top of :func:`~flowyard_common.templates.check_template`: ``job_configuration`` has only the keys
    :func:`render_job` uses, and its ``job_manifest`` is a ``batch/v1`` Job with one container
    and a restart policy of ``Never`` (where those are written literally).
    """
    check_template(template)
    configuration = template["job_configuration"]
    unknown = sorted(set(configuration) - _ALLOWED_CONFIGURATION_KEYS)
    if unknown:
        raise TemplateError(
            f"job_configuration has unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(_ALLOWED_CONFIGURATION_KEYS))}"
        )
    check_job_shape(configuration.get("job_manifest"), rendered=False)


def check_job_shape(manifest: Any, *, rendered: bool) -> None:
    """Raise :class:`TemplateError` unless ``manifest`` is a ``batch/v1`` Job with one container; before rendering, placeholders pass."""
    if not isinstance(manifest, dict):
        raise TemplateError("job_configuration.job_manifest must be a batch/v1 Job object")
    if manifest.get("apiVersion") != "batch/v1" or manifest.get("kind") != "Job":
        raise TemplateError(
            "job_configuration.job_manifest must have apiVersion 'batch/v1' and kind 'Job', "
            f"not {manifest.get('apiVersion')!r} and {manifest.get('kind')!r}"
        )
    pod_spec = _path(manifest, "spec", "template", "spec")
    if not isinstance(pod_spec, dict):
        if rendered or not _is_placeholder(pod_spec):
            raise TemplateError("job_manifest.spec.template.spec must be an object (a pod spec)")
        return
    containers = pod_spec.get("containers")
    if isinstance(containers, list):
        if len(containers) != 1 or not isinstance(containers[0], dict):
            raise TemplateError(
                "job_manifest.spec.template.spec.containers must hold exactly one container "
                f"object, not {len(containers)} item(s); use initContainers for helpers"
            )
    elif rendered or not _is_placeholder(containers):
        raise TemplateError(
            "job_manifest.spec.template.spec.containers must be a list with one container"
        )
    policy = pod_spec.get("restartPolicy")
    if policy is not None and policy != "Never" and (rendered or not _is_placeholder(policy)):
        raise TemplateError(
            f"job_manifest.spec.template.spec.restartPolicy must be 'Never', not {policy!r}: "
            "Flowyard retries failed runs itself, as new attempts"
        )


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and PLACEHOLDER.fullmatch(value) is not None


def _path(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
