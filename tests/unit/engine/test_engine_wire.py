"""Conversions at the protobuf edge."""

from __future__ import annotations

import random
from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from engine.model import LogLine, LogStream, StateType
from engine.storage import LocalSource
from engine.stream import backoff_delay
from engine.wire import (
    log_batch_to_proto,
    proposal_to_proto,
    run_spec_from_proto,
    state_type_from_proto,
    state_type_to_proto,
)
from flowyard.v1 import engine_pb2, types_pb2


def test_state_types_round_trip() -> None:
    for state in StateType:
        assert state_type_from_proto(state_type_to_proto(state)) is state
    assert state_type_to_proto(StateType.CANCELLED) == types_pb2.STATE_TYPE_CANCELLED


def test_run_spec_from_start_run() -> None:
    spec = run_spec_from_proto(
        engine_pb2.StartRunResponse(
            run=types_pb2.FlowRun(id="r", attempt=3, flow_name="f", parameters_json='{"a": 1}'),
            entrypoint="f.py:f",
            source=types_pb2.Source(local=types_pb2.LocalSource(path="/code")),
            heartbeat_interval=Duration(seconds=5),
        )
    )
    assert (spec.run_id, spec.attempt, spec.entrypoint, spec.heartbeat_interval) == (
        "r",
        3,
        "f.py:f",
        5.0,
    )
    assert spec.source == LocalSource(Path("/code"))


def test_a_run_without_source_is_explained() -> None:
    spec = run_spec_from_proto(engine_pb2.StartRunResponse(entrypoint="f.py:f"))
    assert spec.source is None and "no source" in spec.source_problem
    assert spec.heartbeat_interval > 0


def test_log_lines_and_proposals() -> None:
    line = LogLine(7, 1700000000.25, 40, LogStream.STDERR, "", "oops")
    [proto] = log_batch_to_proto([line]).log_batch.lines
    assert (proto.seq, proto.level, proto.stream, proto.text) == (
        7,
        40,
        types_pb2.LOG_STREAM_STDERR,
        "oops",
    )
    assert (proto.timestamp.seconds, proto.timestamp.nanos) == (1700000000, 250_000_000)

    request = proposal_to_proto("t1", StateType.COMPLETED, result_summary="'ok'")
    assert request.propose_state.type == types_pb2.STATE_TYPE_COMPLETED
    assert request.propose_state.result_summary == "'ok'"


def test_backoff_is_full_jitter_and_capped() -> None:
    random.seed(1)
    delays = [backoff_delay(n, 0.2, 10.0) for n in range(1, 30)]
    assert all(0 <= d <= min(10.0, 0.2 * 2 ** (n - 1)) for n, d in enumerate(delays, start=1))
    assert max(delays) <= 10.0
