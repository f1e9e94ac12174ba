"""The ``FakeCluster`` object itself: its public surface, kubeconfig, and clean shutdown."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from kubernetes import client, config

import tests.fakekube
from tests.fakekube import FakeCluster
from tests.fakekube.testing import pid_alive, python_job, wait_for


def test_public_exports() -> None:
    assert tests.fakekube.__all__ == ["FakeCluster", "Faults"]
    for name in (
        "jobs", "pods", "secrets", "events", "create_count", "delete_job", "evict_pod",
        "open_watches", "pod_pids",
    ):  # fmt: skip
        assert callable(getattr(FakeCluster, name)), name
    for name in ("drop_watches", "compact", "fail_next"):
        assert callable(getattr(tests.fakekube.Faults, name)), name


def test_kubeconfig_points_at_the_server_with_a_token(cluster: FakeCluster) -> None:
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())

    assert kubeconfig["current-context"] == "fakekube"
    assert kubeconfig["clusters"][0]["cluster"]["server"] == cluster.url
    assert cluster.url.startswith("http://127.0.0.1:")
    assert kubeconfig["users"][0]["user"]["token"]


def test_exit_kills_pod_processes_and_joins_every_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with FakeCluster(tmp_path) as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = client.CoreV1Api(api)
        client.BatchV1Api(api).create_namespaced_job(
            "default", python_job("lingering", "import time; time.sleep(60)")
        )
        pids = wait_for(cluster.pod_pids, what="the process to start")
        pod = wait_for(
            lambda: cluster.pods()[0]["status"]["phase"] == "Running" and cluster.pods()[0]
        )
        # Leave a followed log and a watch open: exit must break them too.
        log = core.read_namespaced_pod_log(
            pod["metadata"]["name"], "default", follow=True, _preload_content=False
        )
        watch = core.list_namespaced_pod("default", watch=True, _preload_content=False)
    # Exit must end them too: it returned (pytest's timeout catches a hang) and joined
    # every thread of the cluster.
    log.release_conn()
    watch.release_conn()
    api.close()

    assert not [pid for pid in pids if pid_alive(pid)]
    assert not [
        t for t in threading.enumerate() if t not in before and t.name.startswith("fakekube")
    ]
