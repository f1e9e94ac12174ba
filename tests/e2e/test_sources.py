"""Code from git repositories and archives, deployed from a project file, run end to end by
the real control plane, agent and engine."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

from control_plane.orchestration.schedules import HORIZON_RUNS
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.codesources import make_repo, serve_files, tar_gz

from .conftest import POOL, System, wait_for

S = types_pb2.StateType

ETL = """
import datetime
import enum

from pydantic import BaseModel


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Item(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    items: list[Item]


def main(
    colour: Colour,
    day: datetime.date,
    order: Order,
    matrix: dict[str, list[tuple[int, float]]] | None = None,
) -> str:
    assert isinstance(colour, Colour) and isinstance(day, datetime.date)
    assert isinstance(order.items[0], Item)
    assert matrix is None or isinstance(matrix["a"][0], tuple)
    return (
        f"{colour.name} {day.isoformat()} {type(day).__name__} "
        f"{type(order).__name__}:{order.items[0].sku}x{order.items[0].qty} {matrix}"
    )
"""

PROJECT = """
deployments:
  - name: etl
    entrypoint: etl.py:main
    source:
      git: {{url: "{git_url}", ref: main, subdirectory: pipelines, shallow: true}}
    pool: {pool}
    parameters: {{colour: red}}
    tags: [etl]
    description: Nightly extract
    version: "1.5.0"
    retries: 2
    retry_delay_seconds: 30
    schedules:
      - name: morning
        cron: "0 6 * * *"
        timezone: Europe/Paris
        parameters: {{day: "2026-11-24", order: {{items: []}}}}
  - name: report
    entrypoint: report.py:build
    source:
      archive: {{url: "{archive_url}", sha256: "{sha256}", subdirectory: app}}
    pool: {pool}
    description: {report_description}
  - name: hello
    entrypoint: hello.py:hello
    source: {{local: {{path: local}}}}
    pool: {pool}
"""


def _scheduled(system: System, deployment: str) -> set[str]:
    """Ids of the runs the deployment's schedules created ahead of time."""
    runs = system.stub.ListRuns(pb.ListRunsRequest(deployment_name=deployment)).runs
    return {run.id for run in runs if run.schedule_name}


def _all_scheduled(system: System, deployment: str) -> set[str] | None:
    """The scheduled runs once the scheduler has created every upcoming one, else None."""
    runs = _scheduled(system, deployment)
    return runs if len(runs) == HORIZON_RUNS else None


def _project(path: Path, git_url: str, archive_url: str, sha256: str, description: str) -> None:
    path.write_text(
        textwrap.dedent(PROJECT).format(
            git_url=git_url,
            archive_url=archive_url,
            sha256=sha256,
            pool=POOL,
            report_description=description,
        )
    )


def test_project_file_git_and_archive_runs_record_what_they_ran(
    system: System, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "origin")
    (repo.work / "local").mkdir()
    (repo.work / "local" / "hello.py").write_text("def hello(name: str = 'x'):\n    return name\n")
    sha = repo.commit("etl", {"pipelines/etl.py": ETL})
    archive = tar_gz({"app/report.py": "def build() -> str:\n    return 'report ok'\n"})
    digest = hashlib.sha256(archive).hexdigest()
    project = repo.work / "flowyard.yaml"
    with serve_files({"report.tar.gz": archive}) as server:
        url = server.url("report.tar.gz")
        _project(project, repo.url, url, digest, "Weekly report")
        system.start_agent()

        first = system.cli("deploy", "--file", str(project))
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            "etl: created",
            "report: created",
            "  (no parameter schema: report.py is not in a local checkout "
            f"({repo.work / 'app'}); runs' parameters are checked by the flow's signature only)",
            "hello: created",
        ]
        stored = system.stub.GetDeployment(pb.GetDeploymentRequest(name="etl")).deployment
        assert stored.version == "1.5.0"
        # The scheduler creates a schedule's upcoming runs one by one: wait for all of them.
        morning = wait_for(lambda: _all_scheduled(system, "etl"), what="the morning runs")
        again = system.cli("deploy", "--file", str(project))
        assert again.returncode == 0, again.stderr
        assert [line for line in again.stdout.splitlines() if not line.startswith("  (")] == [
            "etl: unchanged",
            "report: unchanged",
            "hello: unchanged",
        ]
        # Unchanged means untouched: the same update time, the same scheduled runs.
        assert system.stub.GetDeployment(pb.GetDeploymentRequest(name="etl")).deployment == stored
        assert _scheduled(system, "etl") == morning
        _project(project, repo.url, url, digest, "Monthly report")
        changed = system.cli("deploy", "--file", str(project), "--name", "report")
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.splitlines()[:2] == [
            "report: updated",
            "  description: 'Weekly report' → 'Monthly report'",
        ]

        # The schema came from the local checkout: a bad value is refused naming the parameter.
        missing = system.cli("run", "etl")
        assert "missing required parameter 'day', 'order' for flow 'main'" in missing.stderr
        refused = system.cli(
            "run",
            "etl",
            "--param",
            "colour=purple",
            "--param",
            "day=2026-11-24",
            "--param",
            'order={"items": []}',
        )
        assert refused.returncode == 1
        assert "parameters: colour: 'purple' is not one of ['red', 'green'] (Colour)" in (
            refused.stderr
        )
        assert "(INVALID_ARGUMENT)" in refused.stderr

        params = {
            "colour": "green",
            "day": "2026-11-24",
            "order": {"items": [{"sku": "a1", "qty": 3}]},
            "matrix": {"a": [[1, 2.5]]},
        }
        etl_run = system.create_run("etl", **params)
        report_run = system.create_run("report")
        etl_done = system.wait_terminal(etl_run)
        assert etl_done.state.type == S.STATE_TYPE_COMPLETED, etl_done.state.message
        assert etl_done.result_summary == repr("GREEN 2026-11-24 date Order:a1x3 {'a': [(1, 2.5)]}")
        assert etl_done.source_revision == sha
        report_done = system.wait_terminal(report_run)
        assert report_done.state.type == S.STATE_TYPE_COMPLETED, report_done.state.message
        assert report_done.source_revision == digest

    shown = system.cli("runs", "show", etl_run)
    assert shown.returncode == 0, shown.stderr
    assert f"Source revision {sha}" in " ".join(shown.stdout.split())
    logs = system.cli("logs", etl_run)
    assert f"(revision {sha})" in logs.stdout


def _deploy(system: System, name: str, entrypoint: str, source: types_pb2.Source) -> None:
    system.stub.UpsertDeployment(
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name=name, entrypoint=entrypoint, pool=POOL, source=source
            )
        )
    )


def test_each_fetch_failure_ends_failed_with_its_message(system: System, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "origin")
    repo.commit("etl", {"pipelines/etl.py": "def main():\n    return 1\n"})
    body = tar_gz({"app/report.py": "def build():\n    return 1\n"})

    def git(**fields: object) -> types_pb2.Source:
        values: dict[str, object] = {"url": repo.url, **fields}
        return types_pb2.Source(git=types_pb2.GitSource(**values))  # type: ignore[arg-type]

    with serve_files({"code.tar.gz": body}) as server:
        good_url = server.url("code.tar.gz")
        cases = {
            "missing-ref": (git(ref="release-9"), "etl.py:main", "ref 'release-9' not found"),
            "missing-subdir": (
                git(subdirectory="nope"),
                "etl.py:main",
                "subdirectory 'nope' not found in the repository",
            ),
            "no-repository": (
                types_pb2.Source(git=types_pb2.GitSource(url=(tmp_path / "gone.git").as_uri())),
                "etl.py:main",
                "repository not found or not readable",
            ),
            "no-file": (
                git(subdirectory="pipelines"),
                "missing.py:main",
                "file 'missing.py' not found in source directory",
            ),
            "no-function": (
                git(subdirectory="pipelines"),
                "etl.py:nope",
                "function 'nope' not found in file 'etl.py' (functions defined there: main)",
            ),
            "bad-checksum": (
                types_pb2.Source(archive=types_pb2.ArchiveSource(url=good_url, sha256="0" * 64)),
                "app/report.py:build",
                f"sha256 mismatch: expected {'0' * 64}, got {hashlib.sha256(body).hexdigest()}",
            ),
            "no-archive": (
                types_pb2.Source(archive=types_pb2.ArchiveSource(url=server.url("missing.zip"))),
                "report.py:build",
                "download failed: HTTP 404",
            ),
        }
        for name, (source, entrypoint, _) in cases.items():
            _deploy(system, name, entrypoint, source)
        system.start_agent(capacity=4)
        runs = {name: system.create_run(name) for name in cases}
        ended = {name: system.wait_terminal(run_id) for name, run_id in runs.items()}

    for name, (_, _, expected) in cases.items():
        run = ended[name]
        assert run.state.type == S.STATE_TYPE_FAILED, (name, run.state.message)
        assert expected in run.state.message, (name, run.state.message)
        assert "Traceback" not in run.state.message, (name, run.state.message)
    # A failure after the fetch still says what was fetched.
    assert ended["no-function"].source_revision == repo.commits["etl"]

    shown = system.cli("runs", "show", runs["missing-ref"])
    assert "ref 'release-9' not found" in shown.stdout
    logs = system.cli("logs", runs["bad-checksum"])
    assert "Could not start the flow: archive" in logs.stdout
    assert "sha256 mismatch" in logs.stdout
    assert json.loads(system.run(runs["no-file"]).parameters_json) == {}
