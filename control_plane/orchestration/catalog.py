"""Use cases for work pools and deployments: validate, then store in one unit of work."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from control_plane.models import Deployment, JSONObject, Pool, PoolType, Scheduling
from control_plane.orchestration import (
    clock,
    queues,
    redeploy,
    schedules,
    sources,
    templates,
    validation,
)
from control_plane.store import catalog as repo
from control_plane.store import queues as queues_repo
from control_plane.store import runs as runs_repo
from control_plane.store.db import Database, after_lost_races
from flowyard_common.entrypoints import InvalidEntrypoint, parse_entrypoint

MAX_ENTRYPOINT_CHARS = 1000
MAX_FLOW_NAME_CHARS = 200
MAX_TAGS = 100
MAX_TAG_CHARS = 100
MAX_DESCRIPTION_CHARS = 10_000
MAX_VERSION_CHARS = 200


@dataclass(frozen=True)
class DeploymentSpec:
    """What a caller says about a deployment (everything but ids and times)."""

    name: str
    entrypoint: str
    source: dict[str, Any]
    pool: str
    flow_name: str = ""
    parameters_json: str = ""
    parameter_schema_json: str = ""
    job_variables_json: str = ""
    tags: tuple[str, ...] = ()
    description: str = ""
    version: str = ""
    scheduling: Scheduling = field(default_factory=Scheduling)


class Catalog:
    """Pools and deployments."""

    def __init__(self, db: Database, deployment_changed: Callable[[], None] = lambda: None) -> None:
        self._db = db
        # Wakes the scheduler: a deployment's schedules may have changed.
        self._deployment_changed = deployment_changed

    async def create_pool(
        self, name: str, pool_type: PoolType, template_json: str, concurrency_limit: int
    ) -> Pool:
        """Create a pool; ALREADY_EXISTS if the name is taken."""
        validation.pool_name(name)
        validation.concurrency_limit(concurrency_limit)
        template = validation.json_object(template_json, "base_job_template_json")
        if template:
            validation.schema_references(
                template.get("variables"), "base_job_template_json.variables"
            )
            validation.schema_patterns(
                template.get("variables"), "base_job_template_json.variables"
            )
            with validation.evaluating("base_job_template_json.variables", InvalidArgument):
                template = templates.check_template(template, pool_type)
        else:
            template = templates.default_template(pool_type)
        now = clock.now()
        pool = Pool(
            id=uuid.uuid4().hex,
            name=name,
            type=pool_type,
            base_job_template=template,
            concurrency_limit=concurrency_limit,
            paused=False,
            created_at=now,
            updated_at=now,
        )
        await after_lost_races(lambda: self._insert_pool(pool))
        return pool

    async def _insert_pool(self, pool: Pool) -> None:
        async with self._db.write() as conn:
            if await repo.get_pool(conn, name=pool.name) is not None:
                raise AlreadyExists(f"pool {pool.name!r} already exists")
            await repo.insert_pool(conn, pool)
            await queues_repo.insert_queue(conn, queues.default_queue(pool.id))

    async def get_pool(self, name: str) -> Pool:
        """The pool with this name; NOT_FOUND otherwise."""
        validation.pool_name(name)
        async with self._db.read() as conn:
            pool = await repo.get_pool(conn, name=name)
        if pool is None:
            raise NotFound(f"pool {name!r} not found")
        return pool

    async def list_pools(self) -> list[Pool]:
        """Every pool."""
        async with self._db.read() as conn:
            return await repo.list_pools(conn)

    async def upsert_deployment(self, spec: DeploymentSpec) -> tuple[Deployment, Deployment | None]:
        """Create or replace a deployment; returns it as stored and as it was before this
        call: None when the call created it, the stored one itself when it changed nothing.

        Calls that create the same new name at once all succeed: the name's unique key lets
        one insert through, and each of the others starts again and finds that deployment,
        which it then updates or leaves as it is, as if it had come just after.
        """
        draft = self._checked(spec)
        stored, previous = await after_lost_races(lambda: self._store_deployment(draft))
        if stored is not previous:
            self._deployment_changed()
        return stored, previous

    def _checked(self, spec: DeploymentSpec) -> Deployment:
        """The deployment ``spec`` describes, checked as far as it can be without the
        database (its id, pool and times are filled in when it is stored)."""
        validation.deployment_name(spec.name, "deployment.name")
        validation.text(spec.entrypoint, "deployment.entrypoint", MAX_ENTRYPOINT_CHARS)
        try:
            entrypoint = parse_entrypoint(spec.entrypoint)
        except InvalidEntrypoint as exc:
            raise InvalidArgument(f"deployment.entrypoint: {exc}") from None
        source = sources.check_source(spec.source)
        if not spec.pool:
            raise InvalidArgument("deployment.pool: required")
        validation.pool_name(spec.pool, "deployment.pool")
        flow_name = (
            validation.text(spec.flow_name, "deployment.flow_name", MAX_FLOW_NAME_CHARS)
            or entrypoint.function
        )
        schema_obj = validation.json_object(
            spec.parameter_schema_json, "deployment.parameter_schema_json"
        )
        schema = (
            validation.json_schema(schema_obj, "deployment.parameter_schema_json")
            if schema_obj
            else None
        )
        parameters = validation.json_object(spec.parameters_json, "deployment.parameters_json")
        validation.partial_parameters(parameters, schema, flow_name)
        job_variables = validation.json_object(
            spec.job_variables_json, "deployment.job_variables_json"
        )
        if len(spec.tags) > MAX_TAGS:
            raise InvalidArgument(f"deployment.tags: at most {MAX_TAGS} tags ({len(spec.tags)})")
        for index, tag in enumerate(spec.tags):
            validation.text(tag, f"deployment.tags[{index}]", MAX_TAG_CHARS, required=True)
        validation.text(spec.description, "deployment.description", MAX_DESCRIPTION_CHARS)
        validation.text(spec.version, "deployment.version", MAX_VERSION_CHARS)
        schedules.check(spec.scheduling)
        schedules.check_parameters(spec.scheduling, parameters, schema, flow_name)
        now = clock.now()
        return Deployment(
            id="",
            name=spec.name,
            flow_name=flow_name,
            entrypoint=spec.entrypoint,
            source=source,
            pool_id="",
            pool_name=spec.pool,
            parameters=parameters,
            parameter_schema=schema,
            job_variables=job_variables,
            tags=list(spec.tags),
            description=spec.description,
            created_at=now,
            updated_at=now,
            scheduling=spec.scheduling,
            version=spec.version,
        )

    async def _store_deployment(self, draft: Deployment) -> tuple[Deployment, Deployment | None]:
        """One unit of work of ``upsert_deployment``: insert, update or leave as it is."""
        now = clock.now()
        async with self._db.write() as conn:
            pool = await repo.get_pool(conn, name=draft.pool_name)
            if pool is None:
                raise NotFound(
                    f"pool {draft.pool_name!r} not found: "
                    f"create it first with 'flowyard pool create {draft.pool_name}'"
                )
            with validation.evaluating(
                f"the job variables schema of pool {pool.name!r}",
                FailedPrecondition,
                validation.POOL_FIX,
            ):
                templates.check_job_variables(
                    draft.job_variables, pool.base_job_template, "deployment.job_variables_json"
                )
            queue = await queues.resolve(conn, pool, draft.scheduling.queue, "deployment.queue")
            existing = await repo.get_deployment(conn, name=draft.name)
            deployment = dataclasses.replace(
                draft,
                id=existing.id if existing else uuid.uuid4().hex,
                pool_id=pool.id,
                pool_name=pool.name,
                created_at=existing.created_at if existing else now,
                updated_at=now,
            )
            if existing is None:
                await repo.insert_deployment(conn, deployment, queue.id)
            elif redeploy.same(existing, deployment):
                # Applying a project file again must not look like a change to anyone
                # watching update_time, nor disturb the runs its schedules created.
                return existing, existing
            else:
                await repo.update_deployment(conn, deployment, queue.id)
                stale = redeploy.stale_schedules(existing, deployment)
                # The scheduler creates them again from the new definition.
                for schedule in [None] if stale is None else sorted(stale):
                    await runs_repo.delete_future_scheduled(conn, deployment.id, now, schedule)
        return deployment, existing

    async def get_deployment(self, name: str) -> Deployment:
        """The deployment with this name; NOT_FOUND otherwise."""
        validation.deployment_name(name)
        async with self._db.read() as conn:
            deployment = await repo.get_deployment(conn, name=name)
        if deployment is None:
            raise NotFound(f"deployment {name!r} not found")
        return deployment

    async def list_deployments(self, pool: str) -> list[Deployment]:
        """Deployments, optionally of one pool."""
        async with self._db.read() as conn:
            pool_id = None
            if pool:
                found = await repo.get_pool(conn, name=validation.pool_name(pool, "pool"))
                if found is None:
                    raise NotFound(f"pool {pool!r} not found")
                pool_id = found.id
            return await repo.list_deployments(conn, pool_id=pool_id)

    async def render(self, name: str, job_variables_json: str) -> tuple[JSONObject, JSONObject]:
        """Dry run: the manifest a run of the deployment would get, and its job variables."""
        deployment = await self.get_deployment(name)
        overrides = validation.json_object(job_variables_json, "job_variables_json")
        async with self._db.read() as conn:
            pool = await repo.get_pool(conn, id=deployment.pool_id)
        assert pool is not None  # a deployment's pool cannot be deleted under it
        template = pool.base_job_template
        with validation.evaluating(
            f"the job variables schema of pool {pool.name!r}",
            FailedPrecondition,
            validation.POOL_FIX,
        ):
            variables = templates.job_variables_for_run(
                template, deployment.job_variables, overrides, "job_variables_json"
            )
            return templates.render(pool, template, variables, deployment), variables

    async def delete_deployment(self, name: str) -> None:
        """Delete a deployment and its finished runs; FAILED_PRECONDITION while runs are active."""
        validation.deployment_name(name)
        async with self._db.write() as conn:
            deployment = await repo.get_deployment(conn, name=name)
            if deployment is None:
                raise NotFound(f"deployment {name!r} not found")
            # Runs its schedules created ahead of time go with it; started ones block.
            await runs_repo.delete_future_scheduled(conn, deployment.id, clock.now())
            unfinished = await runs_repo.count_unfinished(conn, deployment.id)
            if unfinished:
                raise FailedPrecondition(
                    f"deployment {name!r} has {unfinished} unfinished run(s): cancel them first"
                )
            await runs_repo.delete_runs_of_deployment(conn, deployment.id)
            await repo.delete_deployment(conn, deployment.id)
