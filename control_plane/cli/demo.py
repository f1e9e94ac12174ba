"""``flowyard demo``: the whole system on one machine, started and cleaned up in one command.

It starts a control plane on a temporary SQLite database and a process agent, deploys an
example (``examples/hello`` unless ``--example`` names another), runs it, follows its logs to
the end, prints the final state, and stops every process it started, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
import grpc

import control_plane
from control_plane.cli import output
from control_plane.cli.client import Client, describe
from control_plane.cli.deploy import build_deployment
from control_plane.cli.processes import Child, StartError, start_agent, start_server
from control_plane.cli.runs import follow_logs
from control_plane.config import ADMIN_TOKEN_FILE
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

POOL = "demo"
AGENT_READY_SECONDS = 30.0
#: Each example's entrypoint in its ``flow.py``.
EXAMPLES = {"hello": "hello", "etl": "etl"}


@click.command()
@click.option("--name", default="world", show_default=True, help="Who the hello flow greets.")
@click.option(
    "--example",
    type=click.Choice(sorted(EXAMPLES)),
    default="hello",
    show_default=True,
    help="Which flow of examples/ to run: hello (a plain function) or etl (tasks and a subflow).",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the control plane and its web UI up after the run, until Ctrl-C.",
)
def demo(name: str, example: str, serve: bool) -> None:
    """Run a flow end to end on a throw-away local control plane and process agent."""
    sys.exit(run_demo(name, example, serve=serve))


def example_dir(example: str = "hello") -> Path:
    """The ``examples/<example>`` directory of the source tree."""
    return Path(control_plane.__file__).resolve().parents[1] / "examples" / example


def run_demo(name: str, example: str = "hello", *, serve: bool = False) -> int:
    """Run the demo; the exit code is 0 when the flow COMPLETED."""
    source = example_dir(example)
    if not (source / "flow.py").exists():
        output.error(f"the demo flow is missing: {source / 'flow.py'}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="flowyard-demo-"))
    children: list[Child] = []
    # Stopped by SIGTERM as by Ctrl-C: the processes it started are stopped with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = False
    try:
        say(f"Starting a control plane (SQLite in {workdir}) ...")
        server = start_server(workdir / "server")
        children.append(server)
        address = server.extra["address"]
        client = Client.connect(address, server.extra["token"])
        client.stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS))
        # The agent gets a token of its own pool, as a deployed agent would.
        agent_token = client.stub.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=POOL, description="demo agent")
        ).token
        say(f"Control plane on {address}; starting a process agent for pool {POOL!r} ...")
        children.append(
            start_agent(address, POOL, workdir / "agent", name="demo-agent", token=agent_token)
        )
        wait_for_agent(client, children[-1])
        deployment = build_deployment(
            f"flow.py:{EXAMPLES[example]}", name=example, pool=POOL, source=source, parameters={}
        )
        client.stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
        parameters = json.dumps({"name": name} if example == "hello" else {})
        created = client.stub.CreateRun(
            pb.CreateRunRequest(deployment_name=example, parameters_json=parameters)
        )
        say(f"Deployed examples/{example}; run {created.run.id} created.")
        say(
            f"Web UI: {server.extra['http_url']}runs/{created.run.id} (log in with the token in "
            f"{workdir / 'server' / ADMIN_TOKEN_FILE}"
            + (")" if serve else "; --serve keeps it up after the run)")
        )
        say("The run's logs:")
        state = follow_logs(client.stub, created.run.id, follow=True)
        output.console.print("Final state:", output.state_text(state))
        ok = state.type == types_pb2.STATE_TYPE_COMPLETED
        client.close()
        if serve:
            say(f"The control plane serves {server.extra['http_url']} until Ctrl-C.")
            with contextlib.suppress(KeyboardInterrupt):
                server.process.wait()
    except StartError as exc:
        output.error(str(exc))
    except grpc.RpcError as error:
        output.error(describe(error, "the demo control plane"))
    finally:
        for child in reversed(children):
            child.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            output.errors.print(f"The demo's logs are kept in {workdir}")
    return 0 if ok else 1


def wait_for_agent(client: Client, agent: Child) -> None:
    """Wait until the agent's session is open (the pool reports it connected)."""
    deadline = time.monotonic() + AGENT_READY_SECONDS
    while time.monotonic() < deadline:
        pool = client.stub.GetPool(pb.GetPoolRequest(name=POOL)).pool
        if pool.connected_agents > 0:
            return
        if not agent.alive():
            raise StartError(f"the agent exited during start-up:\n{agent.log_tail()}")
        time.sleep(0.05)
    raise StartError(
        f"the agent did not connect within {AGENT_READY_SECONDS} s:\n{agent.log_tail()}"
    )


def say(text: str) -> None:
    """A progress line, dimmed, on stderr (stdout carries the flow's logs)."""
    output.errors.print(text, style="dim")
