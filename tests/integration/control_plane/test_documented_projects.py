"""The documented flowyard.yaml examples are accepted by a real control plane as they are."""

from __future__ import annotations

import json
from pathlib import Path

from agent.kubernetes import manifests
from control_plane.cli.project import load_project, with_schema
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.unit.control_plane.test_documented_projects import ROOT, yaml_blocks

from .conftest import Plane


async def test_the_documented_examples_deploy(plane: Plane, tmp_path: Path) -> None:
    await plane.control.CreatePool(
        pb.CreatePoolRequest(
            name="k8s",
            type=types_pb2.POOL_TYPE_KUBERNETES,
            base_job_template_json=json.dumps(manifests.default_template()),
        )
    )
    await plane.control.CreatePool(
        pb.CreatePoolRequest(name="local", type=types_pb2.POOL_TYPE_PROCESS)
    )
    await plane.control.UpsertQueue(
        pb.UpsertQueueRequest(pool="k8s", queue=types_pb2.WorkQueue(name="critical", priority=1))
    )
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "scratch.py").write_text("def main(n: int = 1) -> int:\n    return n\n")
    for document in ("README.md", "docs/deployments.md"):
        project = tmp_path / "flowyard.yaml"
        project.write_text(yaml_blocks(ROOT / document)[0], encoding="utf-8")
        for declared in load_project(project):
            deployment, _ = with_schema(declared)
            stored = await plane.control.UpsertDeployment(
                pb.UpsertDeploymentRequest(deployment=deployment)
            )
            assert stored.deployment.name == deployment.name
