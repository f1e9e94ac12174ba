"""The ``ControlPlaneService`` servicer: parse the request, call a use case, build the reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from control_plane.api import convert
from control_plane.api import tokens as token_convert
from control_plane.api.errors import streaming, unary
from control_plane.auth.registry import Tokens
from control_plane.models import LogRecord, Pool
from control_plane.orchestration.agents import AgentRegistry
from control_plane.orchestration.catalog import Catalog, DeploymentSpec
from control_plane.orchestration.following import Following
from control_plane.orchestration.queues import Queues, QueueSpec
from control_plane.orchestration.runs import RunRequest, Runs
from control_plane.orchestration.scheduler import Schedules
from control_plane.orchestration.task_runs import TaskRuns
from control_plane.store import line_messages
from control_plane.store.db import Database
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc as pb_grpc
from flowyard.v1 import types_pb2
from flowyard_common.templates import compact_json

Context = Any  # grpc.aio.ServicerContext, whose generic parameters the stubs do not use

#: Bytes of lines per TailLogs message, far below a default client's 4 MiB receive limit.
TAIL_MESSAGE_BYTES = 1 << 20
#: At least the size of a LogLine's fields other than its texts (run id, numbers, a time),
#: for bounding a message's size without serialising it.
_LINE_FIELDS_BYTES = 96


class ControlPlaneServicer(pb_grpc.ControlPlaneServiceServicer):
    """Pools, deployments, runs and logs for users."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        runs: Runs,
        agents: AgentRegistry,
        queues: Queues,
        schedules: Schedules,
        tokens: Tokens,
        task_runs: TaskRuns,
        following: Following,
    ) -> None:
        self._db = db
        self._following = following
        self._task_runs = task_runs
        self._tokens = tokens
        self._catalog = catalog
        self._runs = runs
        self._agents = agents
        self._queues = queues
        self._schedules = schedules

    async def _pool_to_proto(self, pool: Pool) -> types_pb2.WorkPool:
        connected = await self._agents.count_by_pool([pool.id])
        return convert.pool_to_proto(
            pool, connected.get(pool.id, 0), await self._queues.of_pool(pool.id)
        )

    @unary
    async def CreatePool(
        self, request: pb.CreatePoolRequest, context: Context
    ) -> pb.CreatePoolResponse:
        pool = await self._catalog.create_pool(
            request.name,
            convert.pool_type(request.type),
            request.base_job_template_json,
            request.concurrency_limit,
        )
        return pb.CreatePoolResponse(pool=await self._pool_to_proto(pool))

    @unary
    async def GetPool(self, request: pb.GetPoolRequest, context: Context) -> pb.GetPoolResponse:
        pool = await self._catalog.get_pool(request.name)
        return pb.GetPoolResponse(pool=await self._pool_to_proto(pool))

    @unary
    async def ListPools(
        self, request: pb.ListPoolsRequest, context: Context
    ) -> pb.ListPoolsResponse:
        pools = await self._catalog.list_pools()
        queues = await self._queues.by_pool()
        connected = await self._agents.count_by_pool()
        return pb.ListPoolsResponse(
            pools=[
                convert.pool_to_proto(p, connected.get(p.id, 0), queues.get(p.id, []))
                for p in pools
            ]
        )

    @unary
    async def UpdatePool(
        self, request: pb.UpdatePoolRequest, context: Context
    ) -> pb.UpdatePoolResponse:
        pool = await self._queues.update_pool(
            request.name,
            request.concurrency_limit if request.HasField("concurrency_limit") else None,
            request.paused if request.HasField("paused") else None,
        )
        return pb.UpdatePoolResponse(pool=await self._pool_to_proto(pool))

    @unary
    async def UpsertQueue(
        self, request: pb.UpsertQueueRequest, context: Context
    ) -> pb.UpsertQueueResponse:
        q = request.queue
        pool, created = await self._queues.upsert(
            QueueSpec(request.pool, q.name, q.priority, q.concurrency_limit, q.paused)
        )
        return pb.UpsertQueueResponse(pool=await self._pool_to_proto(pool), created=created)

    @unary
    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        token, record = await self._tokens.create(
            token_convert.token_kind(request.kind),
            request.pool,
            request.description,
            request.ttl_seconds,
        )
        return pb.CreateTokenResponse(token=token, info=token_convert.token_to_proto(record))

    @unary
    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        records = await self._tokens.list()
        return pb.ListTokensResponse(tokens=[token_convert.token_to_proto(r) for r in records])

    @unary
    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Context
    ) -> pb.RevokeTokenResponse:
        record = await self._tokens.revoke(request.id)
        return pb.RevokeTokenResponse(info=token_convert.token_to_proto(record))

    @unary
    async def UpsertDeployment(
        self, request: pb.UpsertDeploymentRequest, context: Context
    ) -> pb.UpsertDeploymentResponse:
        d = request.deployment
        deployment, previous = await self._catalog.upsert_deployment(
            DeploymentSpec(
                name=d.name,
                entrypoint=d.entrypoint,
                source=convert.source_from_proto(d.source),
                pool=d.pool,
                flow_name=d.flow_name,
                parameters_json=d.parameters_json,
                parameter_schema_json=d.parameter_schema_json,
                job_variables_json=d.job_variables_json,
                tags=tuple(d.tags),
                description=d.description,
                version=d.version,
                scheduling=convert.scheduling_from_proto(d),
            )
        )
        return pb.UpsertDeploymentResponse(
            deployment=convert.deployment_to_proto(deployment),
            created=previous is None,
            previous=None if previous is None else convert.deployment_to_proto(previous),
        )

    @unary
    async def GetDeployment(
        self, request: pb.GetDeploymentRequest, context: Context
    ) -> pb.GetDeploymentResponse:
        deployment = await self._catalog.get_deployment(request.name)
        return pb.GetDeploymentResponse(deployment=convert.deployment_to_proto(deployment))

    @unary
    async def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: Context
    ) -> pb.ListDeploymentsResponse:
        deployments = await self._catalog.list_deployments(request.pool)
        return pb.ListDeploymentsResponse(
            deployments=[convert.deployment_to_proto(d) for d in deployments]
        )

    @unary
    async def DeleteDeployment(
        self, request: pb.DeleteDeploymentRequest, context: Context
    ) -> pb.DeleteDeploymentResponse:
        await self._catalog.delete_deployment(request.name)
        return pb.DeleteDeploymentResponse()

    @unary
    async def PauseDeployment(
        self, request: pb.PauseDeploymentRequest, context: Context
    ) -> pb.PauseDeploymentResponse:
        deployment = await self._schedules.pause(
            request.name, request.schedule_name, request.paused
        )
        return pb.PauseDeploymentResponse(deployment=convert.deployment_to_proto(deployment))

    @unary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        deployment, statuses = await self._schedules.list(request.deployment_name, request.upcoming)
        return pb.ListSchedulesResponse(
            schedules=[
                pb.ScheduleStatus(
                    schedule=convert.schedule_to_proto(status.schedule),
                    next_times=[convert.required_timestamp(t) for t in status.next_times],
                    scheduled_runs=[convert.run_to_proto(r) for r in status.runs],
                )
                for status in statuses
            ],
            deployment_paused=deployment.scheduling.paused,
        )

    @unary
    async def RenderDeployment(
        self, request: pb.RenderDeploymentRequest, context: Context
    ) -> pb.RenderDeploymentResponse:
        manifest, variables = await self._catalog.render(
            request.deployment_name, request.job_variables_json
        )
        return pb.RenderDeploymentResponse(
            manifest_json=compact_json(manifest), job_variables_json=compact_json(variables)
        )

    @unary
    async def CreateRun(
        self, request: pb.CreateRunRequest, context: Context
    ) -> pb.CreateRunResponse:
        run, created = await self._runs.create(
            RunRequest(
                deployment_name=request.deployment_name,
                parameters_json=request.parameters_json,
                job_variables_json=request.job_variables_json,
                idempotency_key=request.idempotency_key,
                scheduled_at=(
                    convert.from_timestamp(request.scheduled_time, "scheduled_time")
                    if request.HasField("scheduled_time")
                    else None
                ),
                queue=request.queue,
            )
        )
        return pb.CreateRunResponse(run=convert.run_to_proto(run), created=created)

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        run, history = await self._runs.get(request.run_id)
        counts = await self._task_runs.counts(run.id)
        children = await self._runs.children(run.id)
        return pb.GetRunResponse(
            run=convert.run_to_proto(run),
            history=[convert.state_to_proto(h) for h in history],
            task_run_counts=convert.task_run_counts(counts),
            children=[convert.run_to_proto(child) for child in children],
        )

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        types = [
            convert.state_type(t, f"state_types[{i}]") for i, t in enumerate(request.state_types)
        ]
        runs, token = await self._runs.list(
            request.deployment_name,
            types,
            request.page_size,
            request.page_token,
            request.schedule_name,
            request.run_id_prefix,
        )
        return pb.ListRunsResponse(
            runs=[convert.run_to_proto(r) for r in runs], next_page_token=token
        )

    @unary
    async def ListTaskRuns(
        self, request: pb.ListTaskRunsRequest, context: Context
    ) -> pb.ListTaskRunsResponse:
        records, token = await self._task_runs.list(
            request.run_id, request.task_name, request.page_size, request.page_token
        )
        return pb.ListTaskRunsResponse(
            task_runs=[convert.task_run_to_proto(r) for r in records], next_page_token=token
        )

    @unary
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run = await self._runs.cancel(request.run_id, request.reason)
        return pb.CancelRunResponse(run=convert.run_to_proto(run))

    @streaming
    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        async for change in self._following.changes(request.run_id):
            assert change is not None  # quiet spells are said only when asked for
            run, counts = change
            yield pb.WatchRunResponse(
                run=convert.run_to_proto(run), task_run_counts=convert.task_run_counts(counts)
            )

    @streaming
    async def TailLogs(
        self, request: pb.TailLogsRequest, context: Context
    ) -> AsyncIterator[pb.TailLogsResponse]:
        batches = self._following.lines(
            request.run_id, request.after_attempt, request.after_seq, follow=request.follow
        )
        async for run, lines in batches:
            if not lines:
                yield pb.TailLogsResponse(state=convert.current_state(run))
                continue
            for response in _tail_responses(lines, convert.current_state(run)):
                yield response


def _tail_responses(lines: list[LogRecord], state: types_pb2.RunState) -> list[pb.TailLogsResponse]:
    """``lines`` in TailLogs messages of at most TAIL_MESSAGE_BYTES (a larger line goes
    alone), each with the run's state.

    A line's size is bounded from its texts' lengths (at most 4 bytes a character, 1 for
    ASCII) rather than measured. A batch that arrived whole is parsed into its message from
    its bytes (``WireBatch``), other lines that kept the message they arrived in are copied
    into it together, by the protobuf library, and the rest are built."""
    responses = []
    chunk: list[LogRecord] = []
    size = 0
    for line in lines:
        text = line.text
        line_size = (
            (len(text) if text.isascii() else 4 * len(text))
            + 4 * (len(line.logger) + len(line.task_run) + len(line.subflow_run))
            + _LINE_FIELDS_BYTES
        )
        if chunk and size + line_size > TAIL_MESSAGE_BYTES:
            responses.append(_tail_message(chunk, state))
            chunk, size = [], 0
        chunk.append(line)
        size += line_size
    responses.append(_tail_message(chunk, state))
    return responses


def _tail_message(lines: list[LogRecord], state: types_pb2.RunState) -> pb.TailLogsResponse:
    message = pb.TailLogsResponse(state=state)
    into = message.lines
    kept: list[Any] = []  # messages of lines to copy together, in order
    at, count = 0, len(lines)
    while at < count:
        line = lines[at]
        whole = line.batch
        if whole is not None and line.seq == whole.first:
            # Lines are consecutive seqs of one attempt: if the batch's last line is here
            # too, every line between is the batch's.
            end = at + whole.count
            if end <= count and lines[end - 1].batch is whole:
                if kept:
                    into.extend(kept)
                    kept = []
                message.MergeFromString(whole.data)  # appends the batch's lines
                at = end
                continue
        if line.wire is not None:
            kept.append(line.wire)
        else:
            if kept:
                into.extend(kept)
                kept = []
            line_messages.add_log_line(into, line)
        at += 1
    if kept:
        into.extend(kept)
    return message
