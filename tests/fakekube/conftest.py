"""Fixtures: a fresh ``FakeCluster`` per test, official-client APIs bound to it, a leak check."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.fakekube import FakeCluster
from tests.fakekube.testing import pid_alive, wait_for


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[list[FakeCluster]]:
    """Fail a test that leaves a fake-cluster thread or pod process behind.

    Runs its check after every other fixture of the test has been torn down.
    """
    clusters: list[FakeCluster] = []
    before = set(threading.enumerate())
    yield clusters
    pids = [pid for cluster in clusters for pid in cluster.pod_pids()]
    assert not [pid for pid in pids if pid_alive(pid)], "pod processes outlived the cluster"

    def stray_threads() -> list[threading.Thread]:
        return [
            thread
            for thread in threading.enumerate()
            if thread not in before and thread.name.startswith("fakekube")
        ]

    wait_for(lambda: not stray_threads(), timeout=5, what="fake cluster threads to end")


@pytest.fixture
def cluster(tmp_path: Path, no_leaks: list[FakeCluster]) -> Iterator[FakeCluster]:
    with FakeCluster(tmp_path / "cluster") as running:
        no_leaks.append(running)
        yield running


@pytest.fixture
def api_client(cluster: FakeCluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def batch(api_client: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api_client)
