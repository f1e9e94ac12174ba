"""Many followers of one run's lines: each gets every line once and in order, however slowly
it reads."""

import asyncio

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import engine_pb2, types_pb2

from .conftest import Plane, drive_to_running
from .test_metrics import exposition

# More batches than a feed keeps waiting for one follower (feeds.MAX_QUEUED), and large ones:
# a follower whose client stops reading may fall that far behind.
BATCHES = 150
PER_BATCH = 20
TEXT = "x" * 2_000


def batch(start: int) -> engine_pb2.ReportRequest:
    return engine_pb2.ReportRequest(
        log_batch=engine_pb2.LogBatch(
            lines=[
                types_pb2.LogLine(
                    seq=seq, level=20, stream=types_pb2.LOG_STREAM_STDOUT, text=f"{seq} {TEXT}"
                )
                for seq in range(start, start + PER_BATCH)
            ]
        )
    )


async def seqs_of(call: object) -> tuple[list[int], int]:
    seqs: list[int] = []
    state = types_pb2.STATE_TYPE_UNSPECIFIED
    async for message in call:  # type: ignore[attr-defined]
        seqs += [line.seq for line in message.lines]
        assert all(line.text.startswith(f"{line.seq} ") for line in message.lines)
        state = message.state.type
    return seqs, state


async def test_every_follower_gets_every_line_once_even_one_that_stops_reading(
    ready: Plane,
) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    engine.send(batch(1))
    assert (await engine.receive("log_ack")).stored_seq == PER_BATCH
    quick = [
        asyncio.ensure_future(
            seqs_of(ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id, follow=True)))
        )
        for _ in range(4)
    ]
    # Reads its first message, then nothing until the run has ended.
    slow = ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id, follow=True))
    first = await slow.read()
    for start in range(PER_BATCH + 1, BATCHES * PER_BATCH, PER_BATCH):
        engine.send(batch(start))
        assert (await engine.receive("log_ack")).stored_seq == start + PER_BATCH - 1
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-done", type=types_pb2.STATE_TYPE_COMPLETED
            )
        )
    )
    assert (await engine.receive("state_result")).accepted

    every = list(range(1, BATCHES * PER_BATCH + 1))
    for seqs, state in await asyncio.wait_for(asyncio.gather(*quick), 60):
        assert seqs == every and state == types_pb2.STATE_TYPE_COMPLETED
    rest, state = await asyncio.wait_for(seqs_of(slow), 60)
    assert [line.seq for line in first.lines] + rest == every
    assert state == types_pb2.STATE_TYPE_COMPLETED
    await engine.close()
    await agent.close()


async def test_a_follower_reads_the_runs_state_again_only_once_it_changed(ready: Plane) -> None:
    """Batch after batch of a chatty run, a follower sends each batch with the state as it
    last read it, without reading the run again; a change of the state (a cancel) is in the
    next message it sends."""
    agent, engine, run_id, _ = await drive_to_running(ready)
    tail = ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id, follow=True))
    engine.send(batch(1))
    assert (await engine.receive("log_ack")).stored_seq == PER_BATCH
    seen = len((await asyncio.wait_for(tail.read(), 10)).lines)
    while seen < PER_BATCH:
        seen += len((await asyncio.wait_for(tail.read(), 10)).lines)

    async def reads() -> float:
        scraped = await exposition(ready)
        return scraped.value("flowyard_database_seconds_count", operation="read")

    before = await reads()
    batches = 40
    for start in range(PER_BATCH + 1, (batches + 1) * PER_BATCH, PER_BATCH):
        engine.send(batch(start))
        assert (await engine.receive("log_ack")).stored_seq == start + PER_BATCH - 1
        while seen < start + PER_BATCH - 1:
            message = await asyncio.wait_for(tail.read(), 10)
            assert message.state.type == types_pb2.STATE_TYPE_RUNNING
            seen += len(message.lines)
    # Per batch, one read: after sending a batch, the follower looks in the database for
    # lines stored meanwhile by anyone else (the batch itself comes from memory). Reading
    # the run again before each of its two reads would make three. (The margin is for the
    # server's own periodic reads on a slow machine.)
    assert await reads() - before < 2 * batches

    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="enough"))
    await engine.receive("cancel")
    engine.send(batch(seen + 1))
    await engine.receive("log_ack")
    message = await asyncio.wait_for(tail.read(), 10)
    while not message.lines:
        message = await asyncio.wait_for(tail.read(), 10)
    assert message.state.type == types_pb2.STATE_TYPE_CANCELLING
    tail.cancel()
    await engine.close()
    await agent.close()
