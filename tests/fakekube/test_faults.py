"""Injected API failures, as the official client (and urllib3 under it) sees them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.fakekube import FakeCluster

SECRET = {"metadata": {"name": "s"}, "stringData": {"k": "v"}}


def test_fail_next_429_then_success(core: client.CoreV1Api, cluster: FakeCluster) -> None:
    cluster.faults.fail_next(2, 429)

    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            core.create_namespaced_secret("default", SECRET)
        assert raised.value.status == 429
        assert raised.value.headers["Retry-After"] == "1"
        body = json.loads(raised.value.body)
        assert body["reason"] == "TooManyRequests"
        assert body["details"] == {"retryAfterSeconds": 1}
    core.create_namespaced_secret("default", SECRET)

    assert cluster.create_count("secrets") == 1


def test_fail_next_500_is_an_internal_error_status(
    core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    cluster.faults.fail_next(1)

    with pytest.raises(ApiException) as raised:
        core.list_namespaced_pod("default")

    assert raised.value.status == 500
    assert json.loads(raised.value.body)["reason"] == "InternalError"
    assert core.list_namespaced_pod("default").items == []


def test_urllib3_retries_reads_that_get_429_with_retry_after(
    core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    cluster.faults.fail_next(1, 429)
    started = time.monotonic()

    listed = core.list_namespaced_pod("default")

    assert listed.items == []
    assert time.monotonic() - started >= 0.9


def test_requests_without_the_token_are_unauthorized(cluster: FakeCluster, tmp_path: Path) -> None:
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"][0]["user"]["token"] = "wrong"
    wrong = tmp_path / "wrong-kubeconfig"
    wrong.write_text(yaml.safe_dump(kubeconfig))

    with (
        config.new_client_from_config(config_file=str(wrong)) as api,
        pytest.raises(ApiException) as raised,
    ):
        client.CoreV1Api(api).list_namespaced_pod("default")

    assert raised.value.status == 401


def test_deny_cluster_scope_forbids_lists_across_namespaces_only(
    batch: client.BatchV1Api, cluster: FakeCluster
) -> None:
    cluster.faults.deny_cluster_scope()

    with pytest.raises(ApiException) as raised:
        batch.list_job_for_all_namespaces(label_selector="a=b")
    assert raised.value.status == 403
    body = json.loads(raised.value.body)
    assert body["reason"] == "Forbidden"
    assert body["message"].endswith(
        'cannot list resource "jobs" in API group "batch" at the cluster scope'
    )
    assert batch.list_namespaced_job("default").items == []
