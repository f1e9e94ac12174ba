"""Every field of Deployment, WorkPool and WorkQueue is stored and read back as sent, and an
apply that changes nothing writes nothing (no moved update_time, no replaced scheduled runs).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.stores import row_where

from .conftest import FLOW, SCHEMA, Plane
from .test_queues_and_limits import eventually

#: Fields the server fills in; every other field is the caller's and must come back as sent.
SERVER_SET = {"id", "create_time", "update_time", "connected_agents"}


def _hourly_anchor() -> Timestamp:
    anchor = Timestamp()
    anchor.FromJsonString("2026-01-01T00:15:00Z")
    return anchor


def deployment_values(plane: Plane) -> dict[str, Any]:
    """A value other than the default for each caller-set field of Deployment."""
    source = plane.data_dir / "src"
    source.mkdir(exist_ok=True)
    (source / "flow.py").write_text(FLOW)
    return {
        "name": "everything",
        "flow_name": "hello-flow",
        "entrypoint": "flow.py:hello",
        "source": types_pb2.Source(local=types_pb2.LocalSource(path=str(source))),
        "pool": "pool-a",
        "parameters_json": '{"count":2,"name":"x"}',
        "parameter_schema_json": json.dumps(SCHEMA, sort_keys=True, separators=(",", ":")),
        "job_variables_json": '{"env":{"A":"1"}}',
        "tags": ["etl", "daily"],
        "description": "Nightly extract",
        "queue": "critical",
        "retries": 3,
        "retry_delay_seconds": 120,
        "schedules": [
            types_pb2.Schedule(
                name="nightly",
                cron=types_pb2.CronSchedule(expression="0 2 * * *", timezone="Europe/Paris"),
                parameters_json='{"name":"night"}',
            ),
            types_pb2.Schedule(
                name="hourly",
                interval=types_pb2.IntervalSchedule(seconds=3600, anchor_time=_hourly_anchor()),
                paused=True,
            ),
        ],
        "concurrency_limit": 1,
        "collision_strategy": types_pb2.COLLISION_STRATEGY_CANCEL_NEW,
        "paused": True,
        "version": "1.5.0",
    }


def build(message_type: type[Message], values: dict[str, Any]) -> Any:
    """A message with every caller-set field given; fails naming a field without a value, so
    that a field added to the contract is added here (and so checked) too."""
    fields = {f.name for f in message_type.DESCRIPTOR.fields} - SERVER_SET
    missing = sorted(fields - set(values))
    assert not missing, f"no test value for {message_type.__name__} field(s) {missing}"
    message = message_type(**values)
    for name in fields:
        field = message_type.DESCRIPTOR.fields_by_name[name]
        default = field.default_value if not field.is_repeated else []
        if field.message_type is None:
            assert getattr(message, name) != default, f"{name}: the test value is the default"
        elif not field.is_repeated:
            assert message.HasField(name), name
    return message


def assert_round_trip(sent: Message, stored: Message) -> None:
    """Each caller-set field of ``sent`` equals the stored one (JSON fields as JSON)."""
    for field in sent.DESCRIPTOR.fields:
        if field.name in SERVER_SET:
            continue
        before, after = getattr(sent, field.name), getattr(stored, field.name)
        if field.name.endswith("_json"):
            before, after = json.loads(before), json.loads(after)
        elif field.is_repeated:
            before, after = list(before), list(after)
        assert before == after, f"{field.name}: sent {before!r}, read back {after!r}"


async def upsert(plane: Plane, deployment: types_pb2.Deployment) -> pb.UpsertDeploymentResponse:
    return await plane.control.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))


async def test_every_field_of_a_deployment_round_trips(ready: Plane) -> None:
    await ready.control.UpsertQueue(
        pb.UpsertQueueRequest(pool="pool-a", queue=types_pb2.WorkQueue(name="critical"))
    )
    sent = build(types_pb2.Deployment, deployment_values(ready))

    answered = (await upsert(ready, sent)).deployment
    got = (await ready.control.GetDeployment(pb.GetDeploymentRequest(name="everything"))).deployment
    listed = (await ready.control.ListDeployments(pb.ListDeploymentsRequest())).deployments

    for stored in (answered, got, *[d for d in listed if d.name == "everything"]):
        assert_round_trip(sent, stored)
        assert stored.id and stored.HasField("create_time") and stored.HasField("update_time")


async def test_an_apply_that_changes_nothing_writes_nothing(ready: Plane) -> None:
    await ready.control.UpsertQueue(
        pb.UpsertQueueRequest(pool="pool-a", queue=types_pb2.WorkQueue(name="critical"))
    )
    sent = build(types_pb2.Deployment, deployment_values(ready))
    first = (await upsert(ready, sent)).deployment
    row = _row(ready, "everything")

    again = await upsert(ready, sent)

    assert not again.created
    assert again.deployment.update_time == first.update_time
    assert _row(ready, "everything") == row
    # A value that is equal in Python but not in JSON (1 → true) is a change.
    sent.parameters_json = '{"count":true,"name":"x"}'
    sent.parameter_schema_json = ""
    changed = (await upsert(ready, sent)).deployment
    assert json.loads(changed.parameters_json) == {"count": True, "name": "x"}


def _row(plane: Plane, name: str) -> tuple[Any, ...]:
    row = row_where(plane.data_dir, plane.db_url, "deployments", "name", name)
    assert row is not None
    return row


HOURLY = types_pb2.Schedule(
    name="often",
    interval=types_pb2.IntervalSchedule(seconds=600),
    parameters_json='{"name": "scheduled"}',
)
NIGHTLY = types_pb2.Schedule(
    name="nightly",
    cron=types_pb2.CronSchedule(expression="0 2 * * *", timezone="UTC"),
    parameters_json='{"name": "night"}',
)


async def _scheduled(plane: Plane, schedule: str) -> dict[str, str]:
    """Idempotency key → run id of the runs ``schedule`` created."""
    response = await plane.control.ListRuns(
        pb.ListRunsRequest(deployment_name="hello", schedule_name=schedule, page_size=500)
    )
    return {r.idempotency_key: r.id for r in response.runs}


async def _at_least(plane: Plane, schedule: str, count: int) -> dict[str, str] | None:
    runs = await _scheduled(plane, schedule)
    return runs if len(runs) >= count else None


async def test_future_scheduled_runs_survive_an_update_that_does_not_touch_them(
    ready: Plane,
) -> None:
    deployment = await ready.deployment()
    deployment.schedules.extend([HOURLY, NIGHTLY])
    deployment.version = "1"
    await upsert(ready, deployment)
    # Every 10 minutes, one hour ahead: at least 6 runs; the nightly one keeps 3.
    often = await eventually(lambda: _at_least(ready, "often", 6), "interval runs")
    nightly = await eventually(lambda: _at_least(ready, "nightly", 3), "nightly runs")

    # Labels, code and limits are read when a run starts: the runs stay, ids and all.
    deployment.version = "2"
    deployment.description = "now with a description"
    deployment.tags.append("etl")
    deployment.concurrency_limit = 5
    await upsert(ready, deployment)
    await ready.app.scheduler.schedule_once()
    assert (await _scheduled(ready, "often")).items() >= often.items()
    assert await _scheduled(ready, "nightly") == nightly

    # Changing one schedule replaces its runs only.
    deployment.schedules[1].cron.expression = "0 3 * * *"
    await upsert(ready, deployment)
    await ready.app.scheduler.schedule_once()
    assert (await _scheduled(ready, "often")).items() >= often.items()
    assert not set(nightly.values()) & set((await _scheduled(ready, "nightly")).values())

    # The deployment's parameters are copied into every run: all of them are replaced.
    deployment.parameters_json = '{"count": 2}'
    await upsert(ready, deployment)
    await ready.app.scheduler.schedule_once()
    assert not set(often.values()) & set((await _scheduled(ready, "often")).values())


async def test_every_field_of_a_pool_and_its_queues_round_trips(plane: Plane) -> None:
    template = {
        "job_configuration": {"env": "{{ env }}"},
        "variables": {
            "type": "object",
            "properties": {"env": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
    }
    create = build(
        pb.CreatePoolRequest,
        {
            "name": "pool-b",
            "type": types_pb2.POOL_TYPE_PROCESS,
            "base_job_template_json": json.dumps(template),
            "concurrency_limit": 7,
        },
    )
    created = (await plane.control.CreatePool(create)).pool
    queue = build(
        types_pb2.WorkQueue,
        {"name": "critical", "priority": 5, "concurrency_limit": 2, "paused": True},
    )
    await plane.control.UpsertQueue(pb.UpsertQueueRequest(pool="pool-b", queue=queue))
    await plane.control.UpdatePool(pb.UpdatePoolRequest(name="pool-b", paused=True))

    got = (await plane.control.GetPool(pb.GetPoolRequest(name="pool-b"))).pool
    listed = [p for p in (await plane.control.ListPools(pb.ListPoolsRequest())).pools]
    expected = types_pb2.WorkPool(
        name="pool-b",
        type=types_pb2.POOL_TYPE_PROCESS,
        base_job_template_json=json.dumps(template),
        concurrency_limit=7,
        paused=True,
        queues=[
            types_pb2.WorkQueue(name="critical", priority=5, concurrency_limit=2, paused=True),
            types_pb2.WorkQueue(name="default", priority=10),
        ],
    )
    # A WorkPool field added to the contract needs a value here, as the requests' fields do.
    build(
        types_pb2.WorkPool, {f.name: getattr(expected, f.name) for f in expected.DESCRIPTOR.fields}
    )
    for stored in (got, *[p for p in listed if p.name == "pool-b"]):
        assert_round_trip(expected, stored)
        assert stored.create_time == created.create_time
