"""Base job templates and job variables, as the control plane checks and renders them.

The template language itself (placeholders, defaults, merging) is shared with the agent
(``flowyard_common.templates``), and Jobs are rendered by the agent's own code
(``agent.kubernetes.manifests``); the control plane uses the same code, so what it accepts at
deploy and run time is exactly what an agent can render. Here those rules meet the API: a broken template or an undeclared job variable is
``InvalidArgument`` naming the field and the key, never silently ignored.
"""

from __future__ import annotations

from typing import Any

from agent.kubernetes import manifests
from agent.models import RunKey
from agent.runtimes import process as process_runtime
from control_plane.errors import InvalidArgument
from control_plane.models import Deployment, JSONObject, Pool, PoolType
from control_plane.orchestration import sources
from flowyard_common import templates as common_templates

#: Run id used in dry runs, where no run exists yet.
DRY_RUN_ID = "0" * 32
#: What the engine's FLOWYARD_SERVER shows in a dry run: each agent sets it.
DRY_RUN_SERVER = "<set by the agent: --engine-server>"
#: What a process pool's dry run shows for what only the agent knows.
DRY_RUN_ENGINE_COMMAND = "<the agent's --engine-command: flowyard-engine by default>"
DRY_RUN_WORK_DIR = "<the agent's --work-dir>"
DRY_RUN_TOKEN = "<the attempt's engine token>"


def default_template(pool_type: PoolType) -> JSONObject:
    """The base job template a pool of this type gets when it is created without one."""
    if pool_type is PoolType.KUBERNETES:
        return manifests.default_template()
    return common_templates.default_process_template()


def check_template(template: JSONObject, pool_type: PoolType) -> JSONObject:
    """A well-formed base job template for this pool type, or InvalidArgument."""
    try:
        if pool_type is PoolType.KUBERNETES:
            manifests.check_kubernetes_template(template)
        else:
            common_templates.check_template(template)
    except common_templates.TemplateError as exc:
        raise InvalidArgument(f"base_job_template_json: {exc}") from None
    return template


def check_job_variables(values: dict[str, Any], template: JSONObject, field: str) -> None:
    """Reject job variables the template does not declare or whose values do not fit."""
    try:
        common_templates.check_job_variables(values, template)
    except common_templates.TemplateError as exc:
        raise InvalidArgument(f"{field}: {exc}") from None


def job_variables_for_run(
    template: JSONObject, deployment: JSONObject, run: JSONObject, field: str
) -> JSONObject:
    """The job variables an attempt runs with: defaults, the deployment's, then the run's."""
    check_job_variables(run, template, field)
    return common_templates.resolve_variables(template, deployment, run)


def render(
    pool: Pool, template: JSONObject, variables: JSONObject, deployment: Deployment
) -> JSONObject:
    """The manifest a run would get, without an engine token (dry run)."""
    try:
        if pool.type is PoolType.KUBERNETES:
            return manifests.render_job(
                template,
                variables,
                run_id=DRY_RUN_ID,
                attempt=1,
                pool=pool.name,
                deployment=deployment.name,
                flow_name=deployment.flow_name,
                server_address=DRY_RUN_SERVER,
                engine_token=None,
                secret_env=sources.secret_env(deployment.source),
            ).job
        return _process_plan(template, variables)
    except common_templates.TemplateError as exc:
        raise InvalidArgument(f"the pool's template cannot be rendered: {exc}") from None


def _process_plan(template: JSONObject, variables: JSONObject) -> JSONObject:
    """What a process agent would run for the attempt: command, directory, environment.

    A process pool's template only renders ``env``; shown alone, it says nothing of what runs.
    The engine's own variables come from the same code the process runtime uses, so the order
    shown (``env`` as given, then the engine's) is the order the engine gets.
    """
    key = RunKey(DRY_RUN_ID, 1)
    environment = process_runtime.engine_env(
        process_runtime.rendered_env(template, variables),
        server=DRY_RUN_SERVER,
        key=key,
        token=DRY_RUN_TOKEN,
    )
    return {
        "process": {
            "command": [DRY_RUN_ENGINE_COMMAND, "execute", key.run_id],
            "working_directory": f"{DRY_RUN_WORK_DIR}/{key.run_id}-{key.attempt}",
            "environment": environment,
            "inherits": "the agent's own environment, without "
            + ", ".join(sorted(process_runtime.AGENT_SECRETS)),
        }
    }
