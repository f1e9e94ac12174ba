"""Git and archive sources over gRPC: stored as given, refused with a message a person can act
on, credentials turned into Secret-backed env vars for the agent, the revision recorded."""

import json

import grpc
import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import engine_pb2, types_pb2

from .conftest import Plane, agent_stream, engine_stream

S = types_pb2.StateType


def git_source(**fields: object) -> types_pb2.Source:
    values: dict[str, object] = {"url": "https://git.example.com/org/repo.git", **fields}
    return types_pb2.Source(git=types_pb2.GitSource(**values))  # type: ignore[arg-type]


def archive_source(**fields: object) -> types_pb2.Source:
    values: dict[str, object] = {"url": "https://files.example.com/code.tar.gz", **fields}
    return types_pb2.Source(archive=types_pb2.ArchiveSource(**values))  # type: ignore[arg-type]


def upsert(source: types_pb2.Source, name: str = "d") -> pb.UpsertDeploymentRequest:
    return pb.UpsertDeploymentRequest(
        deployment=types_pb2.Deployment(
            name=name, entrypoint="flows/etl.py:main", pool="pool-a", source=source
        )
    )


def count_deployments(plane: Plane) -> int:
    return plane.count_rows("deployments")


CREDENTIALS = types_pb2.GitCredentials(
    username="x-access-token",
    token_env="REPO_TOKEN",
    token_secret=types_pb2.SecretKeyRef(name="git-creds", key="token"),
)


async def test_git_source_round_trips_and_assign_carries_the_secret(plane: Plane) -> None:
    await plane.pool()
    source = git_source(ref="v1.2.0", subdirectory="flows/", shallow=True, credentials=CREDENTIALS)
    await plane.control.UpsertDeployment(upsert(source))
    stored = (await plane.control.GetDeployment(pb.GetDeploymentRequest(name="d"))).deployment
    git = stored.source.git
    assert (git.url, git.ref, git.subdirectory, git.shallow) == (
        "https://git.example.com/org/repo.git",
        "v1.2.0",
        "flows",
        True,
    )
    assert git.credentials == CREDENTIALS

    agent = agent_stream(plane)
    await agent.receive("welcome")
    run = (await plane.control.CreateRun(pb.CreateRunRequest(deployment_name="d"))).run
    assign = await agent.receive("assign")
    assert [(e.name, e.secret_name, e.secret_key) for e in assign.secret_env] == [
        ("REPO_TOKEN", "git-creds", "token")
    ]
    # The engine is told where the code is, and its revision is stored with RUNNING.
    token = (("authorization", f"Bearer {assign.engine_token}"),)
    started = await plane.engines.StartRun(
        engine_pb2.StartRunRequest(run_id=run.id, attempt=1), metadata=token
    )
    assert started.source.git.credentials.token_env == "REPO_TOKEN"
    engine = engine_stream(plane, run.id, 1, assign.engine_token)
    await engine.receive("opened")
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t1", type=S.STATE_TYPE_RUNNING, source_revision="a" * 40
            )
        )
    )
    assert (await engine.receive("state_result")).accepted
    got = await plane.control.GetRun(pb.GetRunRequest(run_id=run.id))
    assert got.run.source_revision == "a" * 40
    await engine.close()
    await agent.close()


async def test_secret_without_env_name_gets_the_default_variable(plane: Plane) -> None:
    await plane.pool()
    credentials = types_pb2.GitCredentials(
        token_secret=types_pb2.SecretKeyRef(name="git-creds", key="token")
    )
    await plane.control.UpsertDeployment(upsert(git_source(credentials=credentials)))
    stored = (await plane.control.GetDeployment(pb.GetDeploymentRequest(name="d"))).deployment
    assert stored.source.git.credentials.token_env == "FLOWYARD_GIT_TOKEN"


async def test_archive_source_round_trips(plane: Plane) -> None:
    await plane.pool()
    source = archive_source(sha256="AB" * 32, subdirectory="src")
    await plane.control.UpsertDeployment(upsert(source))
    stored = (await plane.control.GetDeployment(pb.GetDeploymentRequest(name="d"))).deployment
    assert stored.source.archive.sha256 == "ab" * 32  # stored lowercase
    assert stored.source.archive.subdirectory == "src"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (types_pb2.Source(), "deployment.source: required"),
        (git_source(url=""), "deployment.source.git.url: required"),
        (git_source(url="ftp://h.example/r.git"), "scheme 'ftp' is not supported"),
        (git_source(url="not a url"), "must not contain spaces"),
        (git_source(url="repo"), "is not a clone URL"),
        (git_source(url="https:///r.git"), "has no host"),
        (
            git_source(url="https://me:hunter2@h.example/r.git"),
            "embeds a password, which would be stored and shown in plain text: remove it from "
            "the URL and give it through credentials.token_env or credentials.token_secret",
        ),
        (git_source(ref="feature..x"), "is not a valid branch, tag or commit"),
        (git_source(ref="-rf"), "starts with '-'"),
        (git_source(ref="a b"), "contains a space"),
        (git_source(subdirectory="../up"), "must be a relative path inside the code"),
        (git_source(subdirectory="/abs"), "must be a relative path inside the code"),
        (
            git_source(url="git@h.example:org/r.git", credentials=CREDENTIALS),
            "tokens are sent over HTTPS only",
        ),
        (
            git_source(credentials=types_pb2.GitCredentials(username="u")),
            "set token_env",
        ),
        (
            git_source(credentials=types_pb2.GitCredentials(token_env="1BAD")),
            "is not an environment variable name",
        ),
        (
            git_source(credentials=types_pb2.GitCredentials(token_env="FLOWYARD_RUN_TOKEN")),
            "is reserved for the engine",
        ),
        (
            git_source(
                credentials=types_pb2.GitCredentials(
                    token_secret=types_pb2.SecretKeyRef(name="Bad_Name", key="token")
                )
            ),
            "is not a Kubernetes Secret name",
        ),
        (
            git_source(
                credentials=types_pb2.GitCredentials(
                    token_secret=types_pb2.SecretKeyRef(name="ok", key="")
                )
            ),
            "is not a Secret key",
        ),
        (archive_source(url="file:///tmp/code.tar.gz"), "must be an http:// or https:// URL"),
        (archive_source(url="https://h.example/code.rar"), "must end in .tar.gz, .tgz or .zip"),
        (archive_source(sha256="xyz"), "is not a sha256"),
        (archive_source(subdirectory="a/../../b"), "without '..'"),
        (
            archive_source(url="https://u:pw@h.example/code.zip"),
            "embeds a password",
        ),
    ],
)
async def test_bad_sources_are_refused_and_nothing_is_stored(
    plane: Plane, source: types_pb2.Source, fragment: str
) -> None:
    await plane.pool()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.UpsertDeployment(upsert(source))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert fragment in details
    assert "hunter2" not in details and ":pw@" not in details
    assert count_deployments(plane) == 0


async def test_dry_run_shows_the_secret_backed_credential(plane: Plane) -> None:
    await plane.control.CreatePool(
        pb.CreatePoolRequest(name="kube", type=types_pb2.POOL_TYPE_KUBERNETES)
    )
    await plane.control.UpsertDeployment(
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="d",
                entrypoint="flows/etl.py:main",
                pool="kube",
                job_variables_json='{"image": "example/flows:1"}',
                source=git_source(credentials=CREDENTIALS),
            )
        )
    )
    rendered = await plane.control.RenderDeployment(pb.RenderDeploymentRequest(deployment_name="d"))
    job = json.loads(rendered.manifest_json)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REPO_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "git-creds", "key": "token"}}
