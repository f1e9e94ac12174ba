"""Tools for throwing hostile requests at a real control plane.

* ``ServerThread`` runs the control plane on its own event loop in a background thread, so that
  hypothesis tests (which are synchronous) can drive it through a blocking gRPC channel and
  one server can serve every example of a test module.
* ``Fuzzer`` sends requests, checks each answer (never INTERNAL or UNKNOWN, never a traceback,
  a rejected request changes no row of the database) and counts what it sent.
* The strategies build protobuf messages of any type from their descriptors: fully random ones,
  and valid ones with one field changed ("near-valid").
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import json
import logging
import operator
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from agent.kubernetes import manifests
from control_plane.config import ServerConfig
from control_plane.server import App, build
from flowyard.v1 import (
    agent_pb2_grpc,
    control_plane_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
)

T = TypeVar("T")

START_TIMEOUT = 30.0
CALL_TIMEOUT = 15.0
#: Codes that mean the server failed, not the request.
SERVER_FAILURES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DATA_LOSS,
        # What a client sees when a status message overflows its trailer limit, or the
        # server's admission control when it is overloaded (never, one call at a time).
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
#: A status message is for a person; longer than this it is a dump.
MAX_DETAILS = 2000
#: Table -> ORDER BY, so that two snapshots of the same rows compare equal. "log_lines" are
#: the lines stored in ``log_batches``, a row per line (``_stored_lines``).
TABLES = {
    "pools": "id",
    "work_queues": "id",
    "deployments": "id",
    "flow_runs": "id",
    "run_states": "id",
    "log_lines": "run_id, attempt, first_seq",
    "task_runs": "run_id, flow_attempt, id",
    "api_tokens": "id",
}

Snapshot = dict[str, list[tuple[Any, ...]]]


# -- the server ------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Collects ERROR records of the server: a swallowed exception is a bug even if the
    client saw a proper status."""

    LOGGERS = ("control_plane", "grpc")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def uninstall(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        """The records logged since the last call, formatted with their tracebacks."""
        taken, self.records = self.records, []
        formatter = logging.Formatter("%(name)s: %(message)s")
        return [formatter.format(record) for record in taken]


async def _idle() -> None:
    await asyncio.Event().wait()


class ServerThread:
    """A control plane serving on port 0 from its own event loop in a daemon thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / "flowyard.db"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fuzzed-control-plane", daemon=True
        )
        self.config = ServerConfig(port=0, data_dir=data_dir)
        self.app: App | None = None
        self.address = ""

    def start(self) -> None:
        self._thread.start()
        self.app = self.run(self._start(self.config), START_TIMEOUT)
        self.address = f"127.0.0.1:{self.app.port}"

    @staticmethod
    async def _start(config: ServerConfig) -> App:
        app = await build(config)
        # The reaper, the scheduler and the engine heartbeat writer change runs as time
        # passes, not because of a request: between two snapshots their work would look like
        # a rejected request's. Requests are what is checked here, so their root tasks idle
        # instead (a root task that ended would stop the server).
        app.reaper.run = _idle  # type: ignore[method-assign]
        app.scheduler.run = _idle  # type: ignore[method-assign]
        app.heartbeats.run = _idle  # type: ignore[method-assign]
        await app.start()
        return app

    @staticmethod
    async def _stop(app: App) -> None:
        await app.stop(0.5)
        # Handlers of calls cut short by the stop may still be unwinding: let them finish
        # before the loop closes under them.
        current = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def run(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def stop(self) -> None:
        if self.app is not None:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                self.run(self._stop(self.app), START_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()


def snapshot(db_path: Path, ignore: frozenset[str] = frozenset()) -> Snapshot:
    """Every row of the tables a request can change; ``ignore`` names ``table.column``s."""
    result: Snapshot = {}
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        for table, order in TABLES.items():
            if table == "log_lines":
                result[table] = _stored_lines(conn, order, ignore)
                continue
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
            columns = [d[0] for d in cursor.description]
            keep = [i for i, c in enumerate(columns) if f"{table}.{c}" not in ignore]
            result[table] = [tuple(row[i] for i in keep) for row in cursor]
    return result


def _stored_lines(
    conn: sqlite3.Connection, order: str, ignore: frozenset[str]
) -> list[tuple[Any, ...]]:
    rows = []
    for (data,) in conn.execute(f"SELECT lines FROM log_batches ORDER BY {order}"):
        for line in engine_pb2.LogBatch.FromString(data).lines:
            fields = {
                "run_id": line.run_id,
                "attempt": line.attempt,
                "seq": line.seq,
                "timestamp": (line.timestamp.seconds, line.timestamp.nanos),
                "level": line.level,
                "stream": line.stream,
                "logger": line.logger,
                "text": line.text,
                "task_run": line.task_run,
                "subflow_run": line.subflow_run,
            }
            rows.append(
                tuple(value for name, value in fields.items() if f"log_lines.{name}" not in ignore)
            )
    return rows


def differences(before: Snapshot, after: Snapshot) -> str:
    """What changed between two snapshots, for an assertion message."""
    lines = []
    for table in TABLES:
        old, new = set(before[table]), set(after[table])
        lines += [f"{table} - {_short(row)}" for row in sorted(old - new, key=repr)]
        lines += [f"{table} + {_short(row)}" for row in sorted(new - old, key=repr)]
    return "\n".join(lines[:20])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:300]}..."


# -- sending and checking --------------------------------------------------------------------


@dataclass
class Tally:
    """How much was sent, and what came back."""

    calls: int = 0
    messages: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    by_rpc: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def count(self, rpc: str, status: str, messages: int) -> None:
        self.calls += 1
        self.messages += messages
        self.statuses[status] += 1
        self.by_rpc[rpc, status] += 1

    def summary(self) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in self.statuses.most_common())
        return f"requests fuzzed: {self.messages} messages in {self.calls} calls ({codes})"

    def breakdown(self) -> str:
        """One line per RPC: how many calls ended in which status."""
        rpcs = sorted({rpc for rpc, _ in self.by_rpc})
        return "\n".join(
            f"{rpc}: "
            + ", ".join(f"{status} {n}" for (r, status), n in self.by_rpc.most_common() if r == rpc)
            for rpc in rpcs
        )


@dataclass
class Fuzzer:
    """Sends requests to the server and checks what it does with them."""

    server: ServerThread
    channel: grpc.Channel
    errors: ErrorLog
    tally: Tally = field(default_factory=Tally)

    def __post_init__(self) -> None:
        self.control = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.engines = engine_pb2_grpc.EngineServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def snapshot(self, ignore: frozenset[str] = frozenset()) -> Snapshot:
        return snapshot(self.server.db_path, ignore)

    def unary(
        self,
        method: Callable[..., Any],
        request: Message,
        *,
        metadata: Sequence[tuple[str, str]] | None = None,
        read_only: bool = False,
    ) -> Any:
        """Call a unary RPC; a rejected call (and any read-only one) must change nothing.

        Returns the response, or None if the call was rejected.
        """
        before = self.snapshot()
        response = None
        try:
            response = method(request, metadata=metadata, timeout=CALL_TIMEOUT)
            self._count(request, "OK", 1)
        except grpc.RpcError as error:
            self._count(request, self._check(error, [request]), 1)
        after = self.snapshot()
        if response is None or read_only:
            assert before == after, (
                f"{'a read' if response is not None else 'a rejected call'} changed the "
                f"database:\n{differences(before, after)}\nrequest: {_short(request)}"
            )
        self.check_log()
        return response

    def stream(
        self,
        method: Callable[..., Any],
        requests: Sequence[Message],
        *,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> tuple[list[Any], grpc.RpcError | None]:
        """Send ``requests`` on a bidi stream, half-close, and read every answer.

        Returns the answers and the error the stream ended with (None if it ended OK).
        """
        answers: list[Any] = []
        error: grpc.RpcError | None = None
        try:
            for answer in method(iter(requests), metadata=metadata, timeout=CALL_TIMEOUT):
                answers.append(answer)
            self._count(requests[0], "OK", len(requests))
        except grpc.RpcError as failed:
            error = failed
            self._count(requests[0], self._check(failed, requests), len(requests))
        self.check_log()
        return answers, error

    def raw(
        self,
        path: str,
        bodies: Sequence[bytes],
        *,
        streaming: bool = False,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Send ``bodies`` as they are (perhaps not protobuf at all) to the method ``path``:
        the first one alone, or all of them on a request stream (``streaming``). A rejected
        call must change nothing."""
        before = self.snapshot()
        rpc = path.rsplit("/", 1)[-1]
        # No serializers: the bytes go out untouched and the answers come back as bytes. On
        # the wire a unary call is a stream of one message each way, so one shape serves all.
        call = (
            self.channel.stream_stream(path)(iter(bodies), metadata=metadata, timeout=CALL_TIMEOUT)
            if streaming
            else self.channel.unary_stream(path)(bodies[0], metadata=metadata, timeout=CALL_TIMEOUT)
        )
        try:
            next(call, None)
            self.tally.count(rpc, "OK", len(bodies))
        except grpc.RpcError as error:
            self.tally.count(rpc, check_status(error, bodies), len(bodies))
            after = self.snapshot()
            assert before == after, f"a rejected body changed the database: {bodies!r}"
        finally:
            call.cancel()
        self.check_log()

    def first_answer(self, method: Callable[..., Any], request: Message) -> Any:
        """Call a server-streaming RPC, take its first answer and hang up; it must change
        nothing. Returns the answer, or None if the call was refused."""
        before = self.snapshot()
        call = method(request, timeout=CALL_TIMEOUT)
        answer = None
        try:
            answer = next(call, None)
            self._count(request, "OK", 1)
        except grpc.RpcError as error:
            self._count(request, self._check(error, [request]), 1)
        finally:
            call.cancel()
        after = self.snapshot()
        assert before == after, f"a read changed the database:\n{differences(before, after)}"
        self.check_log()
        return answer

    def _check(self, error: grpc.RpcError, requests: Sequence[Message]) -> str:
        limit = self.server.config.max_receive_message_bytes
        oversized = any(request.ByteSize() > limit for request in requests)
        return check_status(error, requests[0] if len(requests) == 1 else requests, oversized)

    def check_log(self) -> None:
        logged = self.errors.take()
        assert not logged, "the server logged errors:\n" + "\n".join(logged)

    def serving(self) -> None:
        """The server answers its health check."""
        response = self.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    def _count(self, request: Message, status: str, messages: int) -> None:
        # FooRequest is the request of RPC Foo (buf's DEFAULT naming rules).
        self.tally.count(type(request).__name__.removesuffix("Request"), status, messages)


def check_status(error: grpc.RpcError, request: Any, oversized: bool = False) -> str:
    """Assert that a failed call failed because of its request; returns the code's name.

    RESOURCE_EXHAUSTED is the right answer only to a message over the server's size limit.
    """
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    blamed = code not in SERVER_FAILURES or (
        oversized and code is grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert blamed, f"{code.name}: {details!r}\nrequest: {_short(request)}"
    assert details.strip(), f"{code.name} without a message\nrequest: {_short(request)}"
    assert "Traceback" not in details and 'File "' not in details, details
    assert len(details) <= MAX_DETAILS, f"a {len(details)}-character status message"
    return str(code.name)


# -- strategies ------------------------------------------------------------------------------

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

int32s = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 100, 10_000, 10_001, INT32_MAX, INT32_MIN]),
    st.integers(INT32_MIN, INT32_MAX),
)
int64s = st.one_of(
    st.sampled_from([0, 1, -1, 2, 2**31, 2**53, 2**62, INT64_MAX, INT64_MIN]),
    st.integers(INT64_MIN, INT64_MAX),
)

INTERESTING_TEXTS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "pool-a\n",
    "hello\n",
    "\t",
    "-",
    ".",
    "..",
    "/",
    "../../etc/passwd",
    "/tmp\x00/x",
    "😀",
    "\u202e\u0000\ufeff",
    "Ünïcödé",
    "a" * 63,
    "a" * 64,
    "a" * 100,
    "a" * 101,
    "a" * 201,
    "0" * 32,
    "0" * 32 + "\n",
    "F" * 32,
    "0" * 31,
    "'; DROP TABLE pools; --",
    "%s%n%x",
    "{{ env }}",
    "{{ $HOME }}",
    "Bearer ",
    "null",
    "{}",
]

texts = st.one_of(
    st.text(max_size=24),
    st.sampled_from(INTERESTING_TEXTS),
    st.builds(
        operator.mul,
        st.sampled_from(["a", "é", "\x00", "😀", "-", "{"]),
        st.integers(1_000, 200_000),
    ),
)
run_ids = st.one_of(st.from_regex(r"[0-9a-f]{32}", fullmatch=True), texts)


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON object nested ``depth`` deep."""
    return '{"a":' * depth + leaf + "}" * depth


HOSTILE_JSON = [
    "{",
    '{"a":}',
    "[" * 100_000,
    nested(20_000),
    nested(63),
    nested(64),
    nested(65),
    nested(200),
    "1" * 5_000,
    '{"a": ' + "1" * 5_000 + "}",
    "NaN",
    '{"a": NaN}',
    '{"a": Infinity}',
    '{"a": -Infinity}',
    '{"a": 1e400}',
    '{"\\ud800": 1}',
    '{"a": "\\ud800"}',
    '{"a": "\\u0000"}',
    '{"a": 1, "a": 2}',
    "\ufeff{}",
    "{}{}",
    "  {}  ",
    "[]",
    '"text"',
    "null",
    "0",
    '{"a": "' + "x" * (1 << 20) + '"}',
    '{"env": {"A": "' + "x" * 100_000 + '"}}',
]

#: 1.5 KB of nested groups: compiling it overflowed the stack of a request.
DEEP_PATTERN = "(" * 300 + "a" + ")" * 300

#: Request bodies that are not protobuf messages, or not of any Flowyard request type.
HOSTILE_BODIES = [
    b"\xff\xff",  # a field key whose varint never ends
    b"\x0a\x05ab",  # a string field longer than what follows
    b"\x0a\x02\xc3\x28",  # a string field that is not UTF-8
    b"\x0b",  # a group start (deprecated wire type) that never ends
    b"\x0f",  # wire type 7 does not exist
    b"\x08" + b"\x80" * 11,  # a varint longer than 10 bytes
    b"\x00",  # field number 0
    b"",
]

HOSTILE_SCHEMAS = [
    {"$ref": "#"},
    {"type": "object", "$ref": "#"},
    {"type": "object", "allOf": [{"$ref": "#"}]},
    {"type": "object", "properties": {"name": {"$ref": "#"}}},
    {"type": "object", "properties": {"name": {"$ref": "#/nope"}}},
    {"type": "object", "properties": {"name": {"$ref": "file:///etc/passwd"}}},
    {"type": "object", "properties": {"name": {"$ref": "http://127.0.0.1:9/schema.json"}}},
    {
        "type": "object",
        "$id": "http://127.0.0.1:9/",
        "properties": {"name": {"$ref": "other.json"}},
    },
    {
        "type": "object",
        "$defs": {"x": {"$ref": "#/$defs/x"}},
        "properties": {"name": {"$ref": "#/$defs/x"}},
    },
    {"type": "object", "properties": {"name": {"type": "string", "pattern": "("}}},
    # Compiling a regular expression recurses once per nested group.
    {"type": "object", "properties": {"name": {"type": "string", "pattern": DEEP_PATTERN}}},
    {"type": "object", "patternProperties": {DEEP_PATTERN: {"type": "string"}}},
    {"type": "object", "$defs": {"n": {"pattern": DEEP_PATTERN}}, "properties": {}},
    {"type": "object", "properties": {"name": {"type": "string", "minLength": 1e308}}},
    {"type": "object", "properties": {"count": {"type": "number", "multipleOf": 1e-308}}},
    {"type": "object", "properties": {"name": {"type": "string", "format": "date"}}},
    {"type": "object", "$schema": "http://json-schema.org/draft-04/schema#"},
    {"type": "object", "$dynamicRef": "#meta"},
    {"type": "object", "required": "name"},
    {"type": "object", "properties": []},
    {"type": "object", "additionalProperties": False, "required": ["a" * 100]},
    {"type": ["object"]},
    {"type": "string"},
    {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
]


def _process_template(env: Any, **extra: Any) -> dict[str, Any]:
    return {
        "job_configuration": {"env": "{{ env }}"},
        "variables": {"type": "object", "properties": {"env": env}, **extra},
    }


def _kubernetes_template(**replace: Any) -> dict[str, Any]:
    template = manifests.default_template()
    template["job_configuration"]["job_manifest"].update(replace)
    return template


HOSTILE_TEMPLATES: list[Any] = [
    _process_template({"type": "object", "additionalProperties": {"type": "string"}}),
    _process_template({"$ref": "#"}),
    _process_template({"$ref": "#", "default": {}}),
    _process_template({"$ref": "#/properties/env"}),
    _process_template({"$ref": "#/nope"}),
    _process_template({"$ref": "file:///etc/passwd"}),
    _process_template({"$ref": "http://127.0.0.1:9/schema.json"}),
    _process_template(
        {"type": "object", "default": {"A": 1}, "additionalProperties": {"type": "string"}}
    ),
    _process_template({"type": "object", "default": {"A": "1"}}),
    _process_template({"type": "object"}, **{"$ref": "#"}),
    _process_template({"$ref": "other.json"}, **{"$id": "http://127.0.0.1:9/"}),
    _process_template({"anyOf": [{"$ref": "#/properties/env"}]}),
    _process_template({"type": "object", "additionalProperties": {"pattern": DEEP_PATTERN}}),
    _process_template({"type": "object", "patternProperties": {DEEP_PATTERN: {}}}),
    {"job_configuration": {"x": "{{ nope }}"}, "variables": {"type": "object"}},
    {
        "job_configuration": {"env": "{{ env }} {{ $HOME }}"},
        "variables": {"type": "object", "properties": {"env": {}}},
    },
    {"job_configuration": [], "variables": {"type": "object"}},
    {"job_configuration": {}, "variables": {"type": "string"}},
    {"job_configuration": {}, "variables": {"type": "object"}, "extra": 1},
    {"job_configuration": {}},
    manifests.default_template(),
    _kubernetes_template(kind="Pod"),
    _kubernetes_template(spec={"template": {"spec": {"containers": []}}}),
    _kubernetes_template(spec={"template": {"spec": {"containers": ["x"]}}}),
    _kubernetes_template(spec="{{ image }}"),
    _kubernetes_template(metadata={"labels": {"a": 1}}),
]

HOSTILE_JOB_VARIABLES = [
    '{"env": {"A": "1"}}',
    '{"env": {"A": 1}}',
    '{"env.A": "x"}',
    '{"env": "x", "env.A": "y"}',
    '{"env": null}',
    '{"nope": 1}',
    '{"env": {"A": "\\ud800"}}',
    '{"image": "python:3.11", "namespace": "Bad_NS"}',
    '{"image": ""}',
    '{"namespace": "ns", "labels": {"a": "b"}, "annotations": {"x": "' + "y" * 5000 + '"}}',
    '{"labels": {"a": 1}}',
    '{"tolerations": [{"key": "k", "operator": "Exists"}], "node_selector": {"a": "b"}}',
    '{"image_pull_secrets": ["s", "Bad Secret"]}',
    '{"cpu_limit": "1", "memory_limit": "1Gi", "cpu_request": "a lot"}',
    '{"backoff_limit": -1, "finished_job_ttl": 1e300}',
    '{"pod_start_timeout_seconds": 0}',
    '{"service_account_name": "' + "a" * 300 + '"}',
    nested(31),
]

PARAMETERS = [
    '{"name": "x"}',
    '{"name": 1}',
    '{"count": 2}',
    '{"name": "x", "count": "three"}',
    '{"name": {"a": [1, {"b": null}]}}',
    '{"name": "' + "x" * 10_000 + '"}',
    '{"name": ' + nested(30) + "}",
    '{"\\ud800": 1}',
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(
    st.one_of(st.text(max_size=12), st.sampled_from(["name", "count", "env", "env.A", "image"])),
    json_values,
    max_size=5,
)
json_texts = st.one_of(
    json_objects.map(json.dumps),
    json_values.map(json.dumps),
    st.sampled_from(HOSTILE_JSON),
    st.sampled_from(HOSTILE_SCHEMAS).map(json.dumps),
    texts,
)


def timestamps() -> st.SearchStrategy[Timestamp]:
    """Valid, edge and out-of-range timestamps."""
    seconds = st.one_of(
        st.sampled_from(
            [0, -1, 1_700_000_000, 253402300799, 253402300800, -62135596800, -62135596801]
        ),
        int64s,
    )
    nanos = st.one_of(st.just(0), st.sampled_from([-1, 999_999_999, 10**9]), int32s)
    return st.builds(Timestamp, seconds=seconds, nanos=nanos)


def durations() -> st.SearchStrategy[Duration]:
    return st.builds(Duration, seconds=int64s, nanos=int32s)


Hints = Mapping[str, st.SearchStrategy[Any]]


def page_token(text: str) -> str:
    """A ListRuns page token with arbitrary content, in the token's encoding."""
    return base64.urlsafe_b64encode(text.encode()).decode()


#: Field names whose values deserve more than random text.
DEFAULT_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "run_id": run_ids,
    "name": st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), texts),
    "pool": st.one_of(st.sampled_from(["pool-a", "kube", "no-such-pool"]), texts),
    "deployment_name": st.one_of(st.sampled_from(["hello", "kube-hello", "nope"]), texts),
    "entrypoint": st.one_of(
        st.sampled_from(
            ["flow.py:hello", "pkg.mod:fn", "flow.py", "/abs.py:f", "../x.py:f", "a.py:class"]
        ),
        texts,
    ),
    "path": st.one_of(st.sampled_from(["/opt/code", "relative", "/"]), texts),
    "page_token": st.one_of(
        st.sampled_from(
            [
                # A time without a zone, an id too short, no separator, not base64.
                page_token("2020-01-01T00:00:00|" + "0" * 32),
                page_token("2020-01-01T00:00:00+00:00|" + "0" * 31),
                page_token("9999-12-31T23:59:59+00:00|" + "f" * 32),
                page_token("0001-01-01T00:00:00+00:00|" + "0" * 32),
                page_token("2020-01-01T00:00:00+00:00"),
                page_token("x|y|z"),
                "!!!",
                "==",
                "\u00e9",
            ]
        ),
        texts,
    ),
}


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def field_values(field_: FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy[Any]:
    """Random values for one (non-repeated) occurrence of a field."""
    hint = hints.get(field_.name)
    if field_.type == FieldDescriptor.TYPE_MESSAGE:
        if field_.message_type.full_name == "google.protobuf.Timestamp":
            return timestamps()
        if field_.message_type.full_name == "google.protobuf.Duration":
            return durations()
        cls = _message_class(field_.message_type)
        if depth >= 3:
            return st.just(cls())
        return random_messages(cls, hints, depth + 1)
    if field_.type == FieldDescriptor.TYPE_STRING:
        base = json_texts if field_.name.endswith("_json") else texts
        return st.one_of(hint, base) if hint is not None else base
    if field_.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field_.type == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field_.enum_type.values]
        strategy = st.one_of(st.sampled_from(known), int32s)
        return st.one_of(hint, strategy) if hint is not None else strategy
    if field_.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.one_of(hint, int64s) if hint is not None else int64s
    if field_.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return st.one_of(hint, int32s) if hint is not None else int32s
    raise NotImplementedError(f"no strategy for {field_.full_name}")


def _assign(message: Message, field_: FieldDescriptor, value: Any) -> None:
    if field_.is_repeated:
        target = getattr(message, field_.name)
        del target[:]
        target.extend(value)
    elif field_.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, field_.name).CopyFrom(value)
    else:
        setattr(message, field_.name, value)


def _occurrences(field_: FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy[Any]:
    values = field_values(field_, hints, depth)
    if field_.is_repeated:
        return st.lists(values, max_size=4)
    return values


@st.composite
def random_messages(
    draw: st.DrawFn, cls: type[Message], hints: Hints = DEFAULT_HINTS, depth: int = 0
) -> Message:
    """A message of ``cls`` with a random subset of its fields set to random values.

    Of each oneof, at most one member is set, each as likely as the others.
    """
    message = cls()
    chosen: list[FieldDescriptor] = []
    for oneof in cls.DESCRIPTOR.oneofs:
        member = draw(st.sampled_from([None, *oneof.fields]))
        if member is not None:
            chosen.append(member)
    for field_ in cls.DESCRIPTOR.fields:
        if field_.containing_oneof is None and draw(st.booleans()):
            chosen.append(field_)
    for field_ in chosen:
        _assign(message, field_, draw(_occurrences(field_, hints, depth)))
    return message


def _field_paths(descriptor: Descriptor, depth: int = 0) -> Iterator[tuple[str, ...]]:
    for field_ in descriptor.fields:
        yield (field_.name,)
        if (
            field_.type == FieldDescriptor.TYPE_MESSAGE
            and not field_.is_repeated
            and not field_.message_type.full_name.startswith("google.protobuf.")
            and depth < 3
        ):
            for path in _field_paths(field_.message_type, depth + 1):
                yield (field_.name, *path)


@st.composite
def near_valid(draw: st.DrawFn, valid: Message, hints: Hints = DEFAULT_HINTS) -> Message:
    """``valid`` with one field, at any depth, changed to a random value or cleared."""
    message = type(valid)()
    message.CopyFrom(valid)
    paths = list(_field_paths(message.DESCRIPTOR))
    if not paths:
        return message
    path = draw(st.sampled_from(paths))
    container = message
    for name in path[:-1]:
        container = getattr(container, name)
    field_ = container.DESCRIPTOR.fields_by_name[path[-1]]
    if draw(st.integers(0, 5)) == 0:
        container.ClearField(field_.name)
    else:
        _assign(container, field_, draw(_occurrences(field_, hints, len(path))))
    return message


def requests(
    cls: type[Message], valid: Iterable[Message], hints: Hints = DEFAULT_HINTS
) -> st.SearchStrategy[Message]:
    """Random requests of ``cls``, and near-valid ones derived from ``valid``."""
    valid = list(valid)
    strategies: list[st.SearchStrategy[Message]] = [random_messages(cls, hints)]
    if valid:
        strategies.append(st.sampled_from(valid).flatmap(lambda v: near_valid(v, hints)))
        strategies.append(st.sampled_from(valid))
    return st.one_of(strategies)


def bearer_metadata(tokens: Sequence[str]) -> st.SearchStrategy[list[tuple[str, str]] | None]:
    """Authorization metadata: missing, malformed, someone else's, or right."""
    printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
    values = st.one_of(
        st.sampled_from([f"Bearer {t}" for t in tokens] or ["Bearer x"]),
        printable.map(lambda t: f"Bearer {t}"),
        st.sampled_from(["Bearer", "Bearer ", "Bearer  ", "bearer x", "Basic dXNlcjpwYXNz"]),
        printable,
    )
    return st.one_of(st.none(), values.map(lambda v: [("authorization", v)]))
