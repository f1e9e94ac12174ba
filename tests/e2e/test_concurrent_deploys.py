"""``flowyard deploy`` of one new deployment by several users at once, as real processes
against a real control plane on each store: exactly one of them is told ``created``, none
fails, and one deployment is stored."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flowyard.v1 import control_plane_pb2 as pb

from .conftest import POOL, System, running_system

#: Deploys of one name started at once, and names tried: a race that two processes happened
#: not to run together proves nothing, several of them rarely all miss.
DEPLOYS = 6
NAMES = 8


@pytest.fixture
def system(tmp_path: Path, db_url: str | None) -> Iterator[System]:
    with running_system(tmp_path, db_url=db_url) as system:
        yield system


def test_of_concurrent_deploys_of_a_new_deployment_only_the_creator_says_created(
    system: System,
) -> None:
    source = system.write_flow("hello", "def hello(name: str = 'x'):\n    return name\n")

    def deploy(name: str) -> subprocess.CompletedProcess[str]:
        return system.cli(
            "deploy", "flow.py:hello", "--name", name, "--pool", POOL, "--source", str(source)
        )

    for name in [f"e{number}" for number in range(NAMES)]:
        with ThreadPoolExecutor(DEPLOYS) as pool:
            results = list(pool.map(deploy, [name] * DEPLOYS))
        assert [r.returncode for r in results] == [0] * DEPLOYS, [r.stderr for r in results]
        said = Counter(result.stdout.strip() for result in results)
        assert said == {f"{name}: created": 1, f"{name}: unchanged": DEPLOYS - 1}, name
    listed = system.stub.ListDeployments(pb.ListDeploymentsRequest()).deployments
    assert sorted(d.name for d in listed) == [f"e{number}" for number in range(NAMES)]
