"""The fake API server seen through the official client: CRUD, errors, selectors, patches."""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fakekube import FakeCluster
from tests.fakekube.testing import python_job


def secret(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels or {}}, "stringData": data}


def status_of(error: ApiException) -> dict[str, object]:
    return dict(json.loads(error.body))


def test_create_then_get_returns_server_fields(batch: client.BatchV1Api) -> None:
    created = batch.create_namespaced_job("default", python_job("hello", "pass"))
    read = batch.read_namespaced_job("hello", "default")

    assert read.metadata.uid == created.metadata.uid
    assert read.metadata.creation_timestamp is not None
    assert int(read.metadata.resource_version) > 0
    assert read.metadata.generation == 1
    assert read.spec.backoff_limit == 6
    assert read.spec.template.metadata.labels["job-name"] == "hello"
    assert read.spec.template.metadata.labels["controller-uid"] == created.metadata.uid


def test_get_missing_is_404_with_a_not_found_status(batch: client.BatchV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        batch.read_namespaced_job("missing", "default")

    assert raised.value.status == 404
    assert raised.value.reason == "Not Found"
    assert status_of(raised.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'jobs.batch "missing" not found',
        "reason": "NotFound",
        "details": {"name": "missing", "group": "batch", "kind": "jobs"},
        "code": 404,
    }


def test_duplicate_name_is_409_already_exists(
    batch: client.BatchV1Api, cluster: FakeCluster
) -> None:
    batch.create_namespaced_job("default", python_job("twice", "pass"))
    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job("default", python_job("twice", "pass"))

    assert raised.value.status == 409
    body = status_of(raised.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'jobs.batch "twice" already exists'
    assert cluster.create_count("jobs") == 1


def test_invalid_objects_are_422(batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    nameless = python_job("", "pass")
    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job("default", nameless)
    assert raised.value.status == 422
    assert status_of(raised.value)["reason"] == "Invalid"
    assert "metadata.name: Required value" in str(status_of(raised.value)["message"])

    always = python_job("always", "pass")
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job("default", always)
    assert 'Unsupported value: "Always"' in str(status_of(raised.value)["message"])

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_secret("default", secret("bad", {"run": "has spaces"}))
    assert raised.value.status == 422


def test_generate_name_gets_a_random_suffix(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_secret(
        "default", {"metadata": {"generateName": "run-"}, "stringData": {"k": "v"}}
    )

    assert created.metadata.name.startswith("run-")
    assert len(created.metadata.name) == len("run-") + 5


def test_secret_string_data_is_stored_as_base64_data(core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", secret("creds", token="s3cret"))

    stored = core.read_namespaced_secret("creds", "default")

    assert stored.type == "Opaque"
    assert stored.string_data is None
    assert base64.b64decode(stored.data["token"]) == b"s3cret"


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=flow", {"a", "b"}),
        ("app==flow", {"a", "b"}),
        ("app!=flow", {"c", "d"}),
        ("tier in (web,db)", {"a", "c"}),
        ("tier notin (web,db)", {"b", "d"}),
        ("tier", {"a", "b", "c"}),
        ("!tier", {"d"}),
        ("app=flow,tier=web", {"a"}),
        ("app=flow,!tier", set()),
    ],
)
def test_label_selectors(core: client.CoreV1Api, selector: str, expected: set[str]) -> None:
    core.create_namespaced_secret("default", secret("a", {"app": "flow", "tier": "web"}))
    core.create_namespaced_secret("default", secret("b", {"app": "flow", "tier": "cache"}))
    core.create_namespaced_secret("default", secret("c", {"app": "other", "tier": "db"}))
    core.create_namespaced_secret("default", secret("d", {}))

    listed = core.list_namespaced_secret("default", label_selector=selector)

    assert {item.metadata.name for item in listed.items} == expected


def test_field_selector_namespaces_and_list_resource_version(core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", secret("a"))
    core.create_namespaced_secret("default", secret("b"))
    last = core.create_namespaced_secret("other", secret("a"))

    by_name = core.list_namespaced_secret("default", field_selector="metadata.name=b")
    everywhere = core.list_secret_for_all_namespaces(field_selector="metadata.name=a")

    assert [item.metadata.name for item in by_name.items] == ["b"]
    assert by_name.metadata.resource_version == last.metadata.resource_version
    assert sorted(item.metadata.namespace for item in everywhere.items) == ["default", "other"]


def test_merge_patch_and_status_patch(batch: client.BatchV1Api) -> None:
    created = batch.create_namespaced_job("default", python_job("patched", "pass", suspend=True))

    labelled = batch.patch_namespaced_job(
        "patched",
        "default",
        {"metadata": {"labels": {"owner": "me"}}, "status": {"active": 99}},
        _content_type="application/merge-patch+json",
    )
    status = batch.patch_namespaced_job_status(
        "patched",
        "default",
        {"metadata": {"labels": {"ignored": "yes"}}, "status": {"failed": 3}},
        _content_type="application/merge-patch+json",
    )

    assert labelled.metadata.labels == {"owner": "me"}
    assert labelled.status.active != 99
    assert int(labelled.metadata.resource_version) > int(created.metadata.resource_version)
    assert status.status.failed == 3
    assert "ignored" not in status.metadata.labels


def test_strategic_merge_patch_merges_conditions_by_type(batch: client.BatchV1Api) -> None:
    batch.create_namespaced_job("default", python_job("smp", "pass", suspend=True))
    for kind in ("Alpha", "Beta", "Alpha"):
        batch.patch_namespaced_job_status(
            "smp", "default", {"status": {"conditions": [{"type": kind, "status": "True"}]}}
        )

    job = batch.read_namespaced_job_status("smp", "default")

    assert [c.type for c in job.status.conditions if c.type != "Suspended"] == ["Alpha", "Beta"]


def test_stale_resource_version_is_a_conflict(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_secret("default", secret("cas", k="1"))
    core.patch_namespaced_secret("cas", "default", {"stringData": {"k": "2"}})

    stale = {"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {}}
    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_secret("cas", "default", stale)

    assert raised.value.status == 409
    assert status_of(raised.value)["reason"] == "Conflict"


def test_json_patch(core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", secret("jp", {"a": "1"}))

    patched = core.patch_namespaced_secret(
        "jp", "default", [{"op": "add", "path": "/metadata/labels/b", "value": "2"}]
    )

    assert patched.metadata.labels == {"a": "1", "b": "2"}
