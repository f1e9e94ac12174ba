"""flowyard.yaml: every Deployment field is mapped to the proto; mistakes are reported with
the file, the deployment and the key before anything is sent."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from control_plane.cli.deploying import changes
from control_plane.cli.project import ProjectError, load_project, with_schema
from flowyard.v1 import types_pb2
from tests.codesources import git

PROJECT = """
deployments:
  - name: etl-daily
    entrypoint: flows/etl.py:main
    flow_name: etl
    source:
      git:
        url: https://git.example.com/data/pipelines.git
        ref: main
        subdirectory: flows-root
        shallow: true
        credentials:
          username: x-access-token
          token_env: GIT_TOKEN
          token_secret: {name: git-credentials, key: token}
    pool: k8s
    queue: critical
    parameters: {region: eu, limit: 10}
    job_variables: {image: "registry.example.com/etl:1.4", cpu: "500m"}
    schedules:
      - name: mornings
        cron: "0 6 * * 1-5"
        timezone: Europe/Paris
        parameters: {limit: 100}
      - interval: 3600
        anchor_time: "2026-01-01T00:30:00Z"
        paused: true
    retries: 3
    retry_delay_seconds: 120
    concurrency_limit: 1
    collision_strategy: cancel_new
    tags: [etl, daily]
    description: Nightly extract
    version: "1.4.0"
    paused: false
  - name: report
    entrypoint: report.py:build
    source:
      archive:
        url: https://files.example.com/report.tar.gz
        sha256: "%s"
    pool: k8s
  - name: local-hello
    entrypoint: hello.py:hello
    pool: local
""" % ("ab" * 32)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flowyard.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_every_field_reaches_the_proto(tmp_path: Path) -> None:
    declared = load_project(write(tmp_path, PROJECT))
    assert [d.deployment.name for d in declared] == ["etl-daily", "report", "local-hello"]
    etl = declared[0].deployment
    assert (etl.entrypoint, etl.flow_name, etl.pool, etl.queue) == (
        "flows/etl.py:main",
        "etl",
        "k8s",
        "critical",
    )
    git_source = etl.source.git
    assert (git_source.url, git_source.ref, git_source.subdirectory, git_source.shallow) == (
        "https://git.example.com/data/pipelines.git",
        "main",
        "flows-root",
        True,
    )
    assert git_source.credentials == types_pb2.GitCredentials(
        username="x-access-token",
        token_env="GIT_TOKEN",
        token_secret=types_pb2.SecretKeyRef(name="git-credentials", key="token"),
    )
    assert json.loads(etl.parameters_json) == {"region": "eu", "limit": 10}
    assert json.loads(etl.job_variables_json) == {
        "image": "registry.example.com/etl:1.4",
        "cpu": "500m",
    }
    cron, interval = etl.schedules
    assert (cron.name, cron.cron.expression, cron.cron.timezone) == (
        "mornings",
        "0 6 * * 1-5",
        "Europe/Paris",
    )
    assert json.loads(cron.parameters_json) == {"limit": 100} and not cron.paused
    assert interval.interval.seconds == 3600 and interval.paused
    assert interval.interval.anchor_time.ToJsonString() == "2026-01-01T00:30:00Z"
    assert (etl.retries, etl.retry_delay_seconds, etl.concurrency_limit) == (3, 120, 1)
    assert etl.collision_strategy == types_pb2.COLLISION_STRATEGY_CANCEL_NEW
    assert list(etl.tags) == ["etl", "daily"]
    assert (etl.description, etl.version, etl.paused) == ("Nightly extract", "1.4.0", False)

    report = declared[1].deployment
    assert report.source.archive.sha256 == "ab" * 32
    local = declared[2].deployment
    assert local.source.local.path == str(tmp_path.resolve())  # relative to the file


def test_only_one_by_name(tmp_path: Path) -> None:
    declared = load_project(write(tmp_path, PROJECT), "report")
    assert [d.deployment.name for d in declared] == ["report"]
    with pytest.raises(ProjectError, match=r"no deployment named 'nope' \(declared: etl-daily"):
        load_project(write(tmp_path, PROJECT), "nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p, retires: 3}\n",
            "deployment 'a': unknown key 'retires' (allowed: collision_strategy,",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p,"
            " source: {git: {url: u, branch: main}}}\n",
            "deployment 'a': unknown key 'branch' in source.git (allowed: credentials,",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m}\n",
            "deployment 'a': 'pool' is a required property",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p, retries: many}\n",
            "deployment 'a': retries: 'many' is not of type 'integer'",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p,"
            " source: {local: {path: .}, archive: {url: u}}}\n",
            "deployment 'a': source: give exactly one of local, git or archive",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p, schedules: [{name: s}]}\n",
            "deployment 'a': schedules.0: give either cron or interval",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p, collision_strategy: drop}\n",
            "deployment 'a': collision_strategy: 'drop' is not one of ['enqueue', 'cancel_new']",
        ),
        (
            "deployments:\n  - {name: a, entrypoint: f.py:m, pool: p}\n"
            "  - {name: a, entrypoint: g.py:m, pool: p}\n",
            "deployment 'a' is declared more than once",
        ),
        ("deployment: []\n", "unknown key 'deployment' (allowed: deployments)"),
        ("deployments: [\n", "not valid YAML"),
    ],
)
def test_mistakes_name_file_deployment_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProjectError) as error:
        load_project(path)
    assert str(error.value.message).startswith(str(path))
    assert message in error.value.message


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match=r"no such file \(write a flowyard.yaml, pass --file"):
        load_project(tmp_path / "flowyard.yaml")


def test_schema_from_the_local_checkout_of_a_git_source(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "flows-root" / "flows").mkdir(parents=True)
    (tmp_path / "flows-root" / "flows" / "etl.py").write_text(
        "def main(region: str, limit: int = 10): ...\n"
    )
    deploy_dir = tmp_path / "deploy"  # the file may sit anywhere in the repository
    deploy_dir.mkdir()
    declared = load_project(write(deploy_dir, PROJECT), "etl-daily")[0]
    deployment, note = with_schema(declared)
    assert note == ""
    assert json.loads(deployment.parameter_schema_json)["required"] == ["region"]

    report = load_project(write(deploy_dir, PROJECT), "report")[0]
    deployment, note = with_schema(report)
    assert deployment.parameter_schema_json == ""
    assert note.startswith("no parameter schema: report.py is not in a local checkout")


def test_changes_are_listed_field_by_field(tmp_path: Path) -> None:
    old = load_project(write(tmp_path, PROJECT), "etl-daily")[0].deployment
    new = types_pb2.Deployment()
    new.CopyFrom(old)
    new.retries = 5
    new.tags.append("eu")
    new.source.git.ref = "v2"
    assert changes(old, old) == []
    new.parameters_json = json.dumps({"region": "us", "limit": 10})
    assert changes(old, new) == [
        ("source.git.ref", "'main'", "'v2'"),
        ("parameters.region", "'eu'", "'us'"),
        ("retries", "3", "5"),
        ("tags", '["etl", "daily"]', '["etl", "daily", "eu"]'),
    ]


def test_a_new_env_order_is_a_change(tmp_path: Path) -> None:
    old = load_project(write(tmp_path, PROJECT), "etl-daily")[0].deployment
    old.job_variables_json = json.dumps({"env": {"HOST": "api", "URL": "http://$(HOST)"}})
    new = types_pb2.Deployment()
    new.CopyFrom(old)
    new.job_variables_json = json.dumps({"env": {"URL": "http://$(HOST)", "HOST": "api"}})
    assert changes(old, new) == [("job_variables.env (order)", "'HOST, URL'", "'URL, HOST'")]


def test_deploy_flags_belong_to_an_entrypoint(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from control_plane.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["deploy", "--file", str(tmp_path / "f.yaml"), "--pool", "p"])
    assert result.exit_code == 2
    assert "--pool: only with ENTRYPOINT" in result.output
    result = runner.invoke(cli, ["deploy", "flow.py:main", "--name", "n"])
    assert result.exit_code == 2 and "--pool is required when deploying ENTRYPOINT" in result.output
    result = runner.invoke(
        cli,
        ["deploy", "flow.py:main", "-n", "n", "-p", "p", "--git-url", "u", "--archive-url", "a"],
    )
    assert result.exit_code == 2 and "either --git-url or --archive-url" in result.output
