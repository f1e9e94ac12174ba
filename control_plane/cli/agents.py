"""``flowyard agent install``: the manifests of an agent in a cluster, printed for kubectl."""

from __future__ import annotations

import click


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
    help="Agent token ('flowyard token create --agent --pool P'), put in the agent's Secret.",
)
@click.option(
    "--token-secret",
    default="",
    help="Instead of --token: an existing Secret (key 'token') the agent reads its token from.",
)
def agent_install(
    pool_name: str,
    namespace: str,
    image: str,
    server_address: str,
    name: str,
    capacity: int,
    agent_token: str,
    token_secret: str,
) -> None:
    """Print the manifests that install an agent in a cluster: pipe them to `kubectl apply -f -`.

    The agent reads its token from a Secret, never from a literal in its Deployment.
    """
    from agent.kubernetes.install import install_manifests, to_yaml

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
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    click.echo(to_yaml(manifests), nl=False)
