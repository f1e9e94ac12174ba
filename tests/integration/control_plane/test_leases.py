"""A control plane that restarts gives the agents holding assignments a whole lease.

While it was down, agents could not confirm what they were assigned; at start-up every
running lease is extended (``Dispatcher.regrant_leases``), and an agent's Hello that names the
infrastructure of a still-Assigned attempt makes it Submitted (``AgentReports.adopt``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from control_plane.config import ServerConfig
from control_plane.server import build
from flowyard.v1 import agent_pb2

from .conftest import STOP_TIMEOUT, agent_stream, connect, engine_stream


async def test_after_a_restart_the_agent_has_a_whole_lease_to_say_what_it_started(
    tmp_path: Path,
) -> None:
    # A lease long enough that a loaded machine's restart and first reads fit in it twice
    # over, and short enough that the test's outage can outlast it.
    config = ServerConfig(port=0, data_dir=tmp_path, lease_seconds=4.0, agent_heartbeat_seconds=1.0)
    app = await build(config)
    await app.start()
    plane = connect(app, tmp_path)
    await plane.pool()
    await plane.deployment()
    agent = agent_stream(plane, capacity=1, name="survivor")
    await agent.receive("welcome")
    run = await plane.run()
    assign = await agent.receive("assign")
    # The server goes down before it hears that the agent accepted, and stays down past the
    # lease; the agent starts the engine meanwhile.
    await plane.channel.close()
    await asyncio.wait_for(app.stop(0.5), STOP_TIMEOUT)
    await agent.close()
    await asyncio.sleep(config.lease_seconds + 0.5)  # the outage itself

    again = await build(config)
    await again.start()
    plane = connect(again, tmp_path)
    # Well past the old deadline, and past a dispatch pass: the lease was re-granted.
    await asyncio.sleep(0.5)
    assert (await plane.get(run.id)).run.state.name == "Assigned"
    back = agent_stream(
        plane,
        capacity=0,
        name="survivor",
        observed=[agent_pb2.ObservedRun(run_id=run.id, attempt=1, infrastructure_id="process/h/7")],
    )
    await back.receive("welcome")
    submitted = await plane.wait_named(run.id, "Submitted")
    assert submitted.infrastructure_id == "process/h/7"
    # Past the re-granted lease: submitted runs have none, so it stays the agent's.
    await asyncio.sleep(config.lease_seconds + 0.5)
    current = (await plane.get(run.id)).run
    assert (current.state.name, current.attempt) == ("Submitted", 1)
    engine = engine_stream(plane, run.id, 1, assign.engine_token)
    assert (await engine.receive("opened")).stored_seq == 0
    for stream in (engine, back):
        await stream.close()
    await plane.channel.close()
    await asyncio.wait_for(again.stop(0.5), STOP_TIMEOUT)
