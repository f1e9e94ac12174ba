"""The flowyard.yaml examples in the README and docs/deployments.md are valid project files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from control_plane.cli.project import load_project

ROOT = Path(__file__).resolve().parents[3]


def yaml_blocks(document: Path) -> list[str]:
    text = document.read_text(encoding="utf-8")
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "deployments:" in b]


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ("README.md", ["etl-daily"]),
        ("docs/deployments.md", ["etl-daily", "report", "scratch"]),
    ],
)
def test_documented_project_files_load(document: str, names: list[str], tmp_path: Path) -> None:
    blocks = yaml_blocks(ROOT / document)
    assert blocks, f"{document} shows no flowyard.yaml"
    project = tmp_path / "flowyard.yaml"
    project.write_text(blocks[0], encoding="utf-8")
    declared = load_project(project)
    assert [d.deployment.name for d in declared] == names
    first = declared[0].deployment
    assert first.source.WhichOneof("kind") == "git"
    assert first.retries == 3 and first.concurrency_limit == 1
    assert first.schedules[0].cron.timezone == "Europe/Paris"
