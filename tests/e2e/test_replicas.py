"""Three control-plane processes on one PostgreSQL database, with a real agent and engines.

The agent and its engines are given every replica's address, in two orders: the agent
streams to replica A, its engines to replica B (the first of their list that answers). Runs
are created, watched and tailed through replica C. In the middle of a burst, B is killed with
SIGKILL and started again, then A: every run must end exactly once, with every line its flow
printed stored once and in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, script, start_agent, start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2
from tests.e2e.conftest import DEADLINE, assert_no_engines_left, wait_for
from tests.stores import conninfo, postgres_database

POOL = "e2e"
RUNS = 100
LINES = 200
CHATTY = f"""
import time


def main(run: int = 0) -> int:
    for line in range({LINES}):
        print(f"run {{run}} line {{line}}", flush=True)
        if line % 20 == 0:
            time.sleep(0.05)
    return run
"""
SLEEPER = """
import time


def main() -> None:
    print("started", flush=True)
    time.sleep(600)
"""


@dataclass
class Replica:
    data_dir: Path
    server: Child
    port: int
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub
    channel: grpc.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    root: Path
    db_url: str
    replicas: list[Replica]
    token: str

    def start(self, index: int, port: int = 0) -> Replica:
        data_dir = self.root / f"replica-{index}"
        data_dir.mkdir(exist_ok=True)
        if index:
            shutil.copy(self.root / "replica-0" / "admin.token", data_dir / "admin.token")
        server = start_server(data_dir, port=port, db_url=self.db_url)
        address = server.extra["address"]
        channel = open_channel(address, server.extra["token"])
        replica = Replica(
            data_dir,
            server,
            int(address.rpartition(":")[2]),
            control_plane_pb2_grpc.ControlPlaneServiceStub(channel),
            channel,
        )
        if index < len(self.replicas):
            self.replicas[index] = replica
        else:
            self.replicas.append(replica)
        return replica

    @property
    def addresses(self) -> str:
        return ",".join(r.address for r in self.replicas)

    def cli(self, replica: Replica, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script("flowyard"), "--server", replica.address, *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env={**os.environ, "FLOWYARD_TOKEN": self.token},
        )

    def deploy(self, replica: Replica, name: str, code: str) -> None:
        source = self.root / "flows" / name
        source.mkdir(parents=True)
        (source / "flow.py").write_text(code)
        result = self.cli(
            replica,
            "deploy",
            "flow.py:main",
            "--name",
            name,
            "--pool",
            POOL,
            "--source",
            str(source),
        )
        assert result.returncode == 0, result.stderr


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # How the agent starts engines (``--engine-start``): a test may ask for another way.
    engine_start = getattr(request, "param", "fork")
    with postgres_database() as url, contextlib.ExitStack() as stack:
        cluster = Cluster(tmp_path, url, [], "")
        first = cluster.start(0)
        cluster.token = first.server.extra["token"]
        for index in (1, 2):
            cluster.start(index)
        agents: list[Child] = []
        # Undone last first: the agents stop before the replicas they stream to.
        stack.callback(lambda: [r.channel.close() for r in cluster.replicas])
        stack.callback(lambda: [r.server.stop() for r in cluster.replicas])
        stack.callback(lambda: [a.stop() for a in agents])
        first.stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS))
        token = first.stub.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=POOL, description="replicas")
        ).token
        # The agent streams to A, its engines to B; each moves on to another when theirs dies.
        a, b, c = (r.address for r in cluster.replicas)
        agent = start_agent(
            f"{a},{b},{c}",
            POOL,
            tmp_path / "agent",
            capacity=4,
            name="agent-1",
            token=token,
            extra_args=["--engine-server", f"{b},{c},{a}", f"--engine-start={engine_start}"],
        )
        agents.append(agent)
        wait_for(
            lambda: first.stub.GetPool(pb.GetPoolRequest(name=POOL)).pool.connected_agents == 1,
            what="the agent to connect",
        )
        yield cluster
    assert_no_engines_left(tmp_path)


def terminal(
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub, run_id: str
) -> types_pb2.FlowRun:
    last = None
    for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=3 * DEADLINE):
        last = message.run
    assert last is not None
    return last


# Its phases wait up to DEADLINE each, and the cluster's PostgreSQL database is dropped at the
# end: the suite-wide hang guard (120 s) is shorter than what a loaded machine may need.
@pytest.mark.timeout(10 * DEADLINE)
@pytest.mark.parametrize("cluster", ["fork", "warm"], indirect=True)
def test_a_burst_survives_the_replicas_its_engines_and_its_agent_stream_to_being_killed(
    cluster: Cluster,
) -> None:
    agents_replica, engines_replica, users_replica = cluster.replicas
    cluster.deploy(users_replica, "chatty", CHATTY)
    run_ids = [
        users_replica.stub.CreateRun(
            pb.CreateRunRequest(deployment_name="chatty", parameters_json=f'{{"run": {n}}}')
        ).run.id
        for n in range(RUNS)
    ]

    def under_way(completed: int) -> Callable[[], bool]:
        # At least ``completed`` runs done, and some running (their engines streaming).
        def check() -> bool:
            states = [
                users_replica.stub.GetRun(pb.GetRunRequest(run_id=r)).run.state.type
                for r in run_ids
            ]
            return (
                states.count(types_pb2.STATE_TYPE_COMPLETED) >= completed
                and states.count(types_pb2.STATE_TYPE_RUNNING) >= 1
            )

        return check

    for index, replica, completed in ((1, engines_replica, 2), (0, agents_replica, RUNS // 3)):
        wait_for(
            under_way(completed), timeout=DEADLINE, what=f"{completed} runs done, some running"
        )
        replica.server.kill()
        cluster.start(index, port=replica.port)

    watching = users_replica
    for number, run_id in enumerate(run_ids):
        run = terminal(watching.stub, run_id)
        assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, (run_id, run.state)
        history = watching.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
        ended = [s for s in history if s.type == types_pb2.STATE_TYPE_COMPLETED]
        assert len(ended) == 1, history
        lines = [
            line
            for message in watching.stub.TailLogs(pb.TailLogsRequest(run_id=run_id))
            for line in message.lines
        ]
        keys = [(line.attempt, line.seq) for line in lines]
        assert keys == sorted(set(keys)), f"run {run_id}: lines out of order or doubled"
        printed = [line.text for line in lines if line.text.startswith(f"run {number} line ")]
        assert printed == [f"run {number} line {n}" for n in range(LINES)], run_id

    # The killed replicas were ended by the others, their agent sessions with them, and the passes
    # it may have held (scheduler, reaper) run on replicas that serve.
    wait_for(
        lambda: _cluster_rows(cluster.db_url) == (2, 0, True),
        timeout=DEADLINE,
        what="the killed replica ended, its session ended and its leases taken over",
    )


def _cluster_rows(db_url: str) -> tuple[int, int, bool]:
    """(replicas ended, live agent sessions on an ended replica, every lease held by a live
    replica)."""
    with psycopg.connect(conninfo(db_url)) as conn:
        ended = conn.execute("SELECT count(*) FROM replicas WHERE ended_at IS NOT NULL").fetchone()
        orphaned = conn.execute(
            "SELECT count(*) FROM agent_sessions s JOIN replicas r ON r.id = s.replica_id "
            "WHERE s.ended_at IS NULL AND r.ended_at IS NOT NULL"
        ).fetchone()
        stale = conn.execute(
            "SELECT count(*) FROM singleton_leases l LEFT JOIN replicas r ON r.id = l.holder "
            "WHERE r.id IS NULL OR r.ended_at IS NOT NULL OR l.expires_at < now()"
        ).fetchone()
        leases = conn.execute("SELECT count(*) FROM singleton_leases").fetchone()
    assert ended and orphaned and stale and leases
    return ended[0], orphaned[0], stale[0] == 0 and leases[0] == 2


def test_a_cancel_made_on_one_replica_reaches_an_engine_streaming_to_another(
    cluster: Cluster,
) -> None:
    agents_replica, _, users_replica = cluster.replicas
    cluster.deploy(users_replica, "sleeper", SLEEPER)
    run_id = users_replica.stub.CreateRun(pb.CreateRunRequest(deployment_name="sleeper")).run.id
    wait_for(
        lambda: any(
            line.text == "started"
            for message in users_replica.stub.TailLogs(pb.TailLogsRequest(run_id=run_id))
            for line in message.lines
        ),
        timeout=DEADLINE,
        what="the flow to start",
    )
    # The agent's credit and heartbeats are known on the first replica only; the third
    # shows them as of the first's last heartbeat: one of the four slots is taken.
    wait_for(
        lambda: _agent_on(users_replica, cluster.token)["free_credit"] == 3,
        timeout=DEADLINE,
        what="the third replica to show the agent's credit taken by the run",
    )
    agent = _agent_on(users_replica, cluster.token)
    assert agent["capacity"] == 4
    assert agent["last_seen_time"] >= agent["connect_time"]
    # Its engine streams to the second replica, its agent to the first; the cancel is made
    # on the third, and the run is watched on the first.
    users_replica.stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="from another replica"))
    run = terminal(agents_replica.stub, run_id)
    assert run.state.type == types_pb2.STATE_TYPE_CANCELLED, run.state


def test_the_replica_an_agent_is_on_is_named_as_its_log_metrics_and_rows_name_it(
    cluster: Cluster,
) -> None:
    # Three replicas on one machine: the machine's name alone would not tell them apart.
    announced = [_announced(replica) for replica in cluster.replicas]
    for replica, (_, host) in zip(cluster.replicas, announced, strict=True):
        assert host == f"{socket.gethostname()}:{replica.port} pid {replica.server.pid}"
    assert len({replica_id for replica_id, _ in announced}) == 3
    with psycopg.connect(conninfo(cluster.db_url)) as conn:
        rows = conn.execute("SELECT id, host FROM replicas WHERE ended_at IS NULL").fetchall()
    assert sorted(rows) == sorted(announced)

    # The agent streams to the first replica; the third shows it there, as the first's log does.
    agents_replica, _, users_replica = cluster.replicas
    agent = _agent_on(users_replica, cluster.token)
    assert (agent["replica"], agent["replica_host"]) == announced[0]
    headers = {"Authorization": f"Bearer {cluster.token}"}
    page = httpx.get(
        f"{users_replica.server.extra['http_url']}pools", headers=headers, timeout=DEADLINE
    )
    assert page.status_code == 200, page.text
    assert announced[0][1] in page.text and announced[0][0] in page.text
    scraped = httpx.get(f"{agents_replica.server.extra['http_url']}metrics", timeout=DEADLINE)
    [info] = [
        sample
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "flowyard_replica_info"
    ]
    assert (info.labels, info.value) == ({"replica": announced[0][0], "host": announced[0][1]}, 1)


def _announced(replica: Replica) -> tuple[str, str]:
    """(id, where it serves) as the replica's start-up log line says."""
    found = re.search(
        r"Flowyard control plane listening on \S+ \(.*\); replica ([0-9a-f]{32}) at (.+)$",
        replica.server.log_path.read_text(),
        re.MULTILINE,
    )
    assert found, replica.server.log_tail()
    return found[1], found[2]


def _agent_on(replica: Replica, token: str) -> dict[str, Any]:
    """The pool's one agent as the replica's JSON API shows it."""
    response = httpx.get(
        f"{replica.server.extra['http_url']}api/v1/pools/{POOL}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=DEADLINE,
    )
    response.raise_for_status()
    [agent] = response.json()["agents"]
    return dict(agent)
