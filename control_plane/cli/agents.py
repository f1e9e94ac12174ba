"""``flowyard agent install``: the manifests of an agent in a cluster, printed for kubectl."""

from __future__ import annotations

from typing import Any

import click

from control_plane.cli import output


@click.group("agent")
def agent_group() -> None:
    """Install agents."""


@agent_group.command("install")
@click.option("--pool", "pool_name", required=True, help="Work pool the agent serves.")
@click.option(
    "--namespace",
    default="flowyard",
    show_default=True,
    help="Namespace of the agent and its Jobs.",
)
@click.option("--image", required=True, help="Agent image (built from Dockerfile.agent).")
@click.option(
    "--server",
    "server_address",
    required=True,
    help="Control plane address as seen from the cluster (host:port).",
)
@click.option(
    "--name",
    default="flowyard-agent",
    show_default=True,
    help="Name of the agent's Kubernetes objects.",
)
@click.option(
    "--capacity",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Runs the agent holds at once.",
)
@click.option(
    "--token",
    "agent_token",
    default="",
    envvar="FLOWYARD_AGENT_TOKEN",
    help="Agent token ('flowyard token create --agent --pool P'), put in the agent's Secret. "
    "Without it or --token-secret, a new agent token of the pool is minted (needs an admin "
    "token and the control plane, like 'flowyard token create').",
)
@click.option(
    "--token-secret",
    default="",
    help="Instead of --token: an existing Secret (key 'token') the agent reads its token from.",
)
@click.option(
    "--create-namespace/--no-create-namespace",
    default=True,
    show_default=True,
    help="Print the Namespace object first (leave it out when the namespace exists).",
)
@click.option(
    "--cluster-list/--no-cluster-list",
    default=True,
    show_default=True,
    help="Print a ClusterRole that lets the agent list its Jobs in every namespace, so after "
    "a restart it finds runs that a 'namespace' job variable put elsewhere. Without it, name "
    "those namespaces with the agent's --watch-namespace.",
)
@click.pass_obj
def agent_install(
    session: Any,
    pool_name: str,
    namespace: str,
    image: str,
    server_address: str,
    name: str,
    capacity: int,
    agent_token: str,
    token_secret: str,
    create_namespace: bool,
    cluster_list: bool,
) -> None:
    """Print the manifests that install an agent in a cluster: pipe them to `kubectl apply -f -`.

    The agent reads its token from a Secret, never from a literal in its Deployment. Without
    --token or --token-secret, a new agent token of the pool is minted for this install.
    """
    from agent.kubernetes.install import agent_name, install_manifests, to_yaml

    if agent_token and token_secret:
        raise click.UsageError("give --token or --token-secret, not both")
    if not agent_token and not token_secret:
        agent_token = _mint(session, pool_name, agent_name(namespace, name))
    try:
        manifests = install_manifests(
            pool=pool_name,
            namespace=namespace,
            image=image,
            server=server_address,
            agent_token=agent_token,
            name=name,
            capacity=capacity,
            token_secret=token_secret,
            create_namespace=create_namespace,
            cluster_list=cluster_list,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    click.echo(to_yaml(manifests), nl=False)


def _mint(session: Any, pool: str, agent: str) -> str:
    """A new agent token of ``pool`` for this install (shown only inside the manifests)."""
    import grpc

    from control_plane.cli.client import describe
    from flowyard.v1 import control_plane_pb2 as pb

    try:
        response = session.stub.CreateToken(
            pb.CreateTokenRequest(
                kind=pb.TOKEN_KIND_AGENT,
                pool=pool,
                description=f"agent {agent} (flowyard agent install)",
            )
        )
    except grpc.RpcError as error:
        # The install's own --server is the address pods dial, not the one used here.
        raise click.ClickException(
            f"cannot mint the agent's token: {describe(error, session.server)}. Run this where "
            "the control plane is reachable with an admin token ('flowyard --server HOST:PORT "
            "agent install ...'), or pass --token or --token-secret"
        ) from error
    # On stderr: stdout is the manifests, piped to kubectl.
    output.errors.print(
        f"Minted agent token {response.info.id} for pool {pool!r}; it is in the Secret below "
        "(revoke it with 'flowyard token revoke ID' when the agent is removed)"
    )
    return str(response.token)
