"""Rendering a run attempt into its Job and Secret, from a ``kubernetes`` pool's template.

:func:`render_job` turns a pool's template, the merged job variables and the attempt into a
``batch/v1`` Job plus a per-attempt Secret holding the engine's token. The parts live by
concept: names and labels in :mod:`agent.kubernetes.naming`, the Secret in
:mod:`agent.kubernetes.secret`, the default template and its checks in
:mod:`agent.kubernetes.template`; this module re-exports what callers use.

Everything here is pure (dicts in, dicts out): the control plane imports it to check templates
and to answer the render dry run, so it must not import the Kubernetes client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.kubernetes.naming import (
    ATTEMPT_LABEL,
    CONTAINER_NAME,
    DEPLOYMENT_ANNOTATION,
    DEPLOYMENT_LABEL,
    FLOW_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POOL_LABEL,
    RUN_ID_LABEL,
    job_name,
    label_value,
)
from agent.kubernetes.secret import TOKEN_KEY, engine_secret, token_env
from agent.kubernetes.template import (
    DEFAULT_IMAGE,
    DEFAULT_POD_START_TIMEOUT,
    check_job_shape,
    check_kubernetes_template,
    default_template,
)
from flowyard_common.manifests import DNS_LABEL
from flowyard_common.templates import (
    TemplateError,
    apply_values,
    check_job_variables,
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

ENGINE_ENV: Final = frozenset(
    {"FLOWYARD_SERVER", "FLOWYARD_RUN_ID", "FLOWYARD_RUN_ATTEMPT", "FLOWYARD_RUN_TOKEN"}
)
"""Variables the engine needs; they are always set by :func:`render_job`, over any user value."""


@dataclass(frozen=True)
class RenderedJob:
    """What the agent creates for one attempt: the Secret first, then the Job."""

    namespace: str
    name: str
    job: dict[str, Any]
    secret: dict[str, Any]
    pod_start_timeout_seconds: float
    """How long the pod may take to start before the run is CRASHED."""


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

    check_job_shape(configuration.get("job_manifest"), rendered=True)
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
            *token_env(name, tls_ca=tls_ca is not None),
        ],
    )

    return RenderedJob(
        namespace=namespace,
        name=name,
        job=job,
        secret=engine_secret(name, namespace, labels, engine_token=engine_token, tls_ca=tls_ca),
        pod_start_timeout_seconds=_pod_start_timeout(configuration),
    )


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
        metadata = job.get("metadata")
        namespace = (metadata.get("namespace") if isinstance(metadata, dict) else None) or "default"
    if not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace):
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
