"""The base job template of ``kubernetes`` pools, and rendering a run attempt into a Job.

:func:`render_job` turns a pool's template, the merged job variables and the attempt into a
``batch/v1`` Job plus a per-attempt Secret holding the engine's token. Both are named
:func:`job_name`, which derives from run id and attempt only: submitting the same attempt twice
gets ``409 Conflict`` from Kubernetes and the agent adopts the existing Job, never duplicates it.

The token is never a literal in the Job: the container reads ``FLOWYARD_RUN_TOKEN`` from the
Secret, so ``kubectl get job -o yaml`` and the dry-run output never show it. The agent creates
the Secret, then the Job, then makes the Job the Secret's owner (``ownerReferences``, which
need the Job's uid) so that deleting the Job, or its TTL running out, removes the Secret too.

Everything here is pure (dicts in, dicts out): the control plane imports it to check templates
and to answer the render dry run, so it must not import the Kubernetes client.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent import __version__
from agent.templates import (
    PLACEHOLDER,
    TemplateError,
    apply_values,
    check_job_variables,
    check_template,
    resolve_variables,
)

__all__ = [
    "ATTEMPT_LABEL",
    "CONTAINER_NAME",
    "DEFAULT_IMAGE",
    "DEPLOYMENT_ANNOTATION",
    "DEPLOYMENT_LABEL",
    "ENGINE_ENV",
    "FLOW_ANNOTATION",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "POOL_LABEL",
    "RUN_ID_LABEL",
    "TOKEN_KEY",
    "RenderedJob",
    "check_kubernetes_template",
    "default_template",
    "job_name",
    "label_value",
    "render_job",
]

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
TOKEN_KEY: Final = "token"
"""The key of the engine token in the per-attempt Secret."""
TLS_CA_KEY: Final = "tls-ca.pem"
"""The key of the control plane's CA certificate in the per-attempt Secret, when TLS is on."""
ENGINE_ENV: Final = frozenset(
    {"FLOWYARD_SERVER", "FLOWYARD_RUN_ID", "FLOWYARD_RUN_ATTEMPT", "FLOWYARD_RUN_TOKEN"}
)
"""Variables the engine needs; they are always set by :func:`render_job`, over any user value."""

DEFAULT_IMAGE: Final = f"flowyard/flowyard:{__version__}"
"""The image when no deployment sets one: Flowyard's own image at the release that created the
pool, so that engine and control plane speak the same protocol. It has no flow code or
dependencies of its own, so real deployments set ``image`` (or a ``git``/archive source)."""
DEFAULT_POD_START_TIMEOUT: Final = 300.0

_ALLOWED_CONFIGURATION_KEYS: Final = frozenset(
    {"namespace", "pod_start_timeout_seconds", "env", "labels", "job_manifest"}
)

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
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

_LABEL_VALUE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]+")
_LABEL_VALUE_MAX: Final = 63


@dataclass(frozen=True)
class RenderedJob:
    """What the agent creates for one attempt: the Secret first, then the Job."""

    namespace: str
    name: str
    job: dict[str, Any]
    secret: dict[str, Any]
    pod_start_timeout_seconds: float
    """How long the pod may take to start before the run is CRASHED."""


def job_name(run_id: str, attempt: int) -> str:
    """The name of the Job (and its Secret) for one attempt: ``flowyard-<run id>-<attempt>``.

    Raises:
        ValueError: the result would not be a valid object name (a DNS-1123 label).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    name = f"flowyard-{run_id}-{attempt}"
    if not _DNS_LABEL.fullmatch(name):
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

    On top of :func:`~agent.templates.check_template`: ``job_configuration`` has only the keys
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
    _check_job_shape(configuration.get("job_manifest"), rendered=False)


def render_job(
    template: dict[str, Any],
    job_variables: dict[str, Any],
    *,
    run_id: str,
    attempt: int,
    pool: str,
    deployment: str,
    flow_name: str,
    server_address: str,
    engine_token: str | None,
    environ: Mapping[str, str] | None = None,
    secret_env: Sequence[tuple[str, str, str]] = (),
    tls_ca: str | None = None,
) -> RenderedJob:
    """Render one attempt of a run into its Job and Secret.

    ``job_variables`` are already merged (the deployment's, then the run's); the template's
    defaults are applied here. ``engine_token`` is None for a dry run: the Secret then has no
    data. ``environ`` resolves ``{{ $NAME }}`` placeholders (the agent passes its environment;
    a dry run leaves them as written). ``secret_env`` lists ``(variable, Secret, key)`` for
    values the engine reads from Secrets of the run's namespace (git credentials): they become
    ``secretKeyRef`` env entries, so no credential is ever a literal in the Job. ``tls_ca`` is
    the PEM of the CA the engine trusts for
    the control plane's TLS certificate: it goes into the Secret, and the engine reads it as
    ``FLOWYARD_TLS_CA_PEM``.

    Raises:
        TemplateError: the template or the variables are invalid, or the template does not
            render to a ``batch/v1`` Job with one container.
        ValueError: ``run_id`` or ``attempt`` cannot make a Job name (see :func:`job_name`).
    """
    check_kubernetes_template(template)
    check_job_variables(job_variables, template)
    name = job_name(run_id, attempt)
    values = resolve_variables(template, job_variables)
    # The variable holds Secret names; the pod spec wants objects. The placeholder stays
    # declared under the variable's name and receives the derived value.
    secrets = values.get("image_pull_secrets")
    if isinstance(secrets, list):
        values["image_pull_secrets"] = [_pull_secret(item) for item in secrets]
    configuration = apply_values(template["job_configuration"], values, environ=environ)
    if not isinstance(configuration, dict):
        raise TemplateError("job_configuration must render to an object")

    _check_job_shape(configuration.get("job_manifest"), rendered=True)
    job: dict[str, Any] = configuration["job_manifest"]
    namespace = _namespace(configuration, job)
    labels = {
        **_string_map(configuration.get("labels"), "labels"),
        RUN_ID_LABEL: run_id,
        ATTEMPT_LABEL: str(attempt),
        POOL_LABEL: label_value(pool),
        DEPLOYMENT_LABEL: label_value(deployment),
        MANAGED_BY_LABEL: MANAGED_BY,
    }

    metadata = _object(job, "metadata", "job_manifest.metadata")
    metadata.pop("generateName", None)
    metadata["name"] = name
    metadata["namespace"] = namespace
    metadata["labels"] = {
        **_string_map(metadata.get("labels"), "job_manifest.metadata.labels"),
        **labels,
    }
    metadata["annotations"] = {
        **_string_map(metadata.get("annotations"), "job_manifest.metadata.annotations"),
        DEPLOYMENT_ANNOTATION: deployment,
        FLOW_ANNOTATION: flow_name,
    }

    pod_template = _object(_object(job, "spec", "job_manifest.spec"), "template", "spec.template")
    pod_metadata = _object(pod_template, "metadata", "spec.template.metadata")
    pod_metadata["labels"] = {
        **_string_map(pod_metadata.get("labels"), "spec.template.metadata.labels"),
        **labels,
    }
    pod_spec = _object(pod_template, "spec", "spec.template.spec")
    pod_spec["restartPolicy"] = "Never"
    if isinstance(pod_spec.get("imagePullSecrets"), list):
        pod_spec["imagePullSecrets"] = [_pull_secret(s) for s in pod_spec["imagePullSecrets"]]

    container = pod_spec["containers"][0]
    container["name"] = CONTAINER_NAME
    if not isinstance(container.get("image"), str) or not container["image"]:
        raise TemplateError("the Job's container has no image; set the job variable 'image'")
    _drop_empty_resources(container)
    container["command"] = ["flowyard-engine", "execute", run_id]
    container.pop("args", None)
    container["env"] = _container_env(
        container.get("env"),
        _string_map(configuration.get("env"), "env"),
        engine=[
            *(
                {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for variable, secret, key in secret_env
            ),
            {"name": "FLOWYARD_SERVER", "value": server_address},
            {"name": "FLOWYARD_RUN_ID", "value": run_id},
            {"name": "FLOWYARD_RUN_ATTEMPT", "value": str(attempt)},
            {
                "name": "FLOWYARD_RUN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}},
            },
            *(
                [
                    {
                        "name": "FLOWYARD_TLS_CA_PEM",
                        "valueFrom": {"secretKeyRef": {"name": name, "key": TLS_CA_KEY}},
                    }
                ]
                if tls_ca is not None
                else []
            ),
        ],
    )

    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "type": "Opaque",
    }
    if engine_token is not None:
        secret["data"] = {TOKEN_KEY: base64.b64encode(engine_token.encode()).decode("ascii")}
        if tls_ca is not None:
            secret["data"][TLS_CA_KEY] = base64.b64encode(tls_ca.encode()).decode("ascii")
    return RenderedJob(
        namespace=namespace,
        name=name,
        job=job,
        secret=secret,
        pod_start_timeout_seconds=_pod_start_timeout(configuration),
    )


def _check_job_shape(manifest: Any, *, rendered: bool) -> None:
    """A ``batch/v1`` Job with one container; before rendering, placeholders pass."""
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


def _object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """``parent[key]``, created empty when absent; a TemplateError when it is not an object."""
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise TemplateError(f"{where} must be an object")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    """An object of strings (absent is empty); scalar values are turned into strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TemplateError(f"{where} must render to an object of strings")
    result = {}
    for key, item in value.items():
        if isinstance(item, dict | list) or item is None:
            raise TemplateError(f"{where}.{key} must be a string, not {item!r}")
        result[str(key)] = item if isinstance(item, str) else str(item)
    return result


def _drop_empty_resources(container: dict[str, Any]) -> None:
    """Remove ``requests``/``limits`` whose every quantity was unset, then empty ``resources``."""
    resources = container.get("resources")
    if not isinstance(resources, dict):
        return
    for key in ("requests", "limits"):
        if resources.get(key) == {}:
            del resources[key]
    if not resources:
        del container["resources"]


def _pull_secret(item: Any) -> Any:
    return {"name": item} if isinstance(item, str) else item


def _container_env(
    manifest_env: Any, env: dict[str, str], *, engine: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The container's env list: the template's own entries, then ``env``, then the engine's.

    A later source replaces an entry of the same name, so the engine's variables always win.
    """
    if manifest_env is None:
        manifest_env = []
    if not isinstance(manifest_env, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in manifest_env
    ):
        raise TemplateError("the container's env must be a list of objects with a name")
    entries: dict[str, dict[str, Any]] = {item["name"]: item for item in manifest_env}
    for key, value in env.items():
        entries.pop(key, None)
        entries[key] = {"name": key, "value": value}
    for item in engine:
        entries.pop(item["name"], None)
        entries[item["name"]] = item
    return list(entries.values())


def _namespace(configuration: dict[str, Any], job: dict[str, Any]) -> str:
    namespace = configuration.get("namespace")
    if namespace is None:
        namespace = _path(job, "metadata", "namespace") or "default"
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        raise TemplateError(f"namespace {namespace!r} is not a valid Kubernetes namespace name")
    return namespace


def _pod_start_timeout(configuration: dict[str, Any]) -> float:
    value = configuration.get("pod_start_timeout_seconds", DEFAULT_POD_START_TIMEOUT)
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise TemplateError(
            f"pod_start_timeout_seconds must be a positive number of seconds, not {value!r}"
        )
    return seconds
