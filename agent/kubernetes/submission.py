"""Turning an assignment into Kubernetes objects: render, then Secret, Job, owner reference.

Order: the Secret with the engine token first, then the Job, then the Job becomes the Secret's
owner (``ownerReferences`` needs the Job's uid), so deleting the Job, or its TTL running out,
removes the Secret too. Secret first because a pod whose Secret is missing sits in
CreateContainerConfigError until the kubelet retries, which would add seconds to every start.
The price is a Secret without an owner if the agent dies between the creates; the next
submission of the same attempt gets 409 for it and takes it over, refreshing the token.

The submission is done, and ``Submitted`` reported, once the Job exists: two round trips. The
owner reference (``own_secret``) is the runtime's next step, made while the Job's pod is
scheduled; nothing about the run waits for it.

Job names derive from run id and attempt, so a second submission of an attempt gets 409 for the
Job: the existing Job is adopted, never duplicated.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.errors import KubernetesError, SubmitError
from agent.kubernetes.client import KubeClient, Resource
from agent.kubernetes.manifests import RenderedJob, render_job
from agent.kubernetes.objects import POD_START_TIMEOUT_ANNOTATION, deleting, uid
from agent.models import Assignment
from agent.settings import KubernetesSettings
from flowyard_common.templates import TemplateError

__all__ = ["Created", "create_objects", "own_secret", "render"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Created:
    """The attempt's Job as the API returned it; ``adopted`` if it existed already."""

    job: dict[str, Any]
    adopted: bool


def render(
    assignment: Assignment,
    *,
    pool: str,
    settings: KubernetesSettings,
    environ: Mapping[str, str],
) -> RenderedJob:
    """The attempt's Job and Secret; :class:`~agent.errors.SubmitError` if they cannot be."""
    key = assignment.key
    try:
        template = json.loads(assignment.base_job_template_json or "null")
        variables = json.loads(assignment.job_variables_json or "{}")
    except ValueError as error:
        raise SubmitError(
            f"the assignment's template or job variables are not JSON: {error}"
        ) from error
    if not isinstance(template, dict) or not isinstance(variables, dict):
        raise SubmitError("the pool's base job template and job variables must be objects")
    try:
        rendered = render_job(
            template,
            with_agent_namespace(template, variables, settings.namespace),
            run_id=key.run_id,
            attempt=key.attempt,
            pool=pool,
            deployment=assignment.deployment_name,
            flow_name=assignment.flow_name,
            server_address=settings.engine_server,
            engine_token=assignment.engine_token,
            environ=environ,
            secret_env=[
                (item.name, item.secret_name, item.secret_key) for item in assignment.secret_env
            ],
            tls_ca=settings.engine_tls_ca,
        )
    except TemplateError as error:
        raise SubmitError(f"cannot render the run's Job: {error}") from error
    except ValueError as error:
        raise SubmitError(f"cannot name the run's Job: {error}") from error
    job = copy.deepcopy(rendered.job)
    annotations = job.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[POD_START_TIMEOUT_ANNOTATION] = f"{rendered.pod_start_timeout_seconds:g}"
    return replace(rendered, job=job)


def with_agent_namespace(
    template: Mapping[str, Any], variables: dict[str, Any], namespace: str
) -> dict[str, Any]:
    """A ``namespace`` variable left at its schema default means the agent's own namespace.

    The agent's Role is granted in its namespace; a deployment that wants another one says so.
    """
    schema = template.get("variables")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    declared = properties.get("namespace") if isinstance(properties, dict) else None
    if not isinstance(declared, dict):
        return variables
    if variables.get("namespace") in (None, declared.get("default")):
        return {**variables, "namespace": namespace}
    return variables


async def create_objects(client: KubeClient, rendered: RenderedJob) -> Created:
    """Create the Secret and the Job (adopting an existing Job); ``own_secret`` links them.

    Raises :class:`~agent.errors.SubmitError` when Kubernetes refuses; a Secret created for a
    Job that could not be created is deleted again.
    """
    namespace, name = rendered.namespace, rendered.name
    secret_created = False
    try:
        secret_created = await _put_secret(client, rendered)
        try:
            created = Created(await client.create(Resource.JOBS, namespace, rendered.job), False)
        except KubernetesError as error:
            if error.status != 409:
                raise
            existing = await client.read(Resource.JOBS, namespace, name)
            if existing is None or deleting(existing):
                raise KubernetesError(
                    409, "Conflict", f"the Job {name} of this attempt is being deleted"
                ) from error
            created = Created(existing, True)
    except KubernetesError as error:
        if secret_created:
            await _delete_secret(client, rendered)
        raise SubmitError(_refusal(error, rendered)) from error
    return created


async def _put_secret(client: KubeClient, rendered: RenderedJob) -> bool:
    """Create the token Secret, or refresh its token if it exists; whether it was created."""
    try:
        await client.create(Resource.SECRETS, rendered.namespace, rendered.secret)
    except KubernetesError as error:
        if error.status != 409:
            raise
        # Left by an earlier submission of this attempt: the Assign's token is the current one.
        await client.patch(
            Resource.SECRETS,
            rendered.namespace,
            rendered.name,
            {"data": rendered.secret.get("data") or {}},
        )
        return False
    return True


async def own_secret(client: KubeClient, rendered: RenderedJob, job: Mapping[str, Any]) -> None:
    """Make the Job the Secret's owner, so deleting the Job deletes the Secret (a failure is
    logged: the run is not harmed, the Secret only outlives its Job)."""
    job_uid = uid(job)
    if job_uid is None:
        return
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": rendered.name,
        "uid": job_uid,
        "controller": False,
        "blockOwnerDeletion": True,
    }
    try:
        await client.patch(
            Resource.SECRETS,
            rendered.namespace,
            rendered.name,
            {"metadata": {"ownerReferences": [owner]}},
        )
    except KubernetesError as error:
        # The run is not harmed; the Secret outlives the Job until someone deletes it.
        logger.warning(
            "cannot make Job %s/%s the owner of its Secret: %s",
            rendered.namespace,
            rendered.name,
            error,
        )


async def _delete_secret(client: KubeClient, rendered: RenderedJob) -> None:
    try:
        await client.delete(Resource.SECRETS, rendered.namespace, rendered.name)
    except KubernetesError as error:
        logger.error("cannot delete Secret %s/%s: %s", rendered.namespace, rendered.name, error)


def _refusal(error: KubernetesError, rendered: RenderedJob) -> str:
    """Why the Job could not be created, for the person reading the run's state."""
    where = f"Job {rendered.namespace}/{rendered.name}"
    if error.status in (401, 403):
        return f"the agent may not create {where}: {error.message or error.reason}"
    if error.status == 0:
        return f"cannot reach the Kubernetes API to create {where}: {error.message}"
    detail = f"{error.reason}: {error.message}" if error.message else error.reason
    return f"Kubernetes refused {where}: {detail}"
