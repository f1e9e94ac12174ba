"""Watches through ``kubernetes.watch.Watch``: replay, live events, selectors, 410, drops."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.fakekube import FakeCluster
from tests.fakekube.testing import wait_for


def secret(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "stringData": {"k": "v"}}


def test_watch_replays_history_then_streams_live_label_selected_events(
    core: client.CoreV1Api,
) -> None:
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", secret("a", app="x"))
    core.create_namespaced_secret("default", secret("b", app="y"))
    seen: list[tuple[str, str]] = []

    stream = watch.Watch().stream(
        core.list_namespaced_secret,
        "default",
        resource_version=start,
        label_selector="app=x",
        timeout_seconds=10,
    )
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 1:
            # Everything from here on happens while the watch is open.
            core.create_namespaced_secret("default", secret("c", app="x"))
            core.patch_namespaced_secret("a", "default", {"metadata": {"labels": {"more": "1"}}})
            core.patch_namespaced_secret("c", "default", {"metadata": {"labels": {"app": "y"}}})
            core.patch_namespaced_secret("b", "default", {"metadata": {"labels": {"app": "x"}}})
            core.delete_namespaced_secret("a", "default")
        if len(seen) == 6:
            break

    assert seen == [
        ("ADDED", "a"),  # replayed
        ("ADDED", "c"),
        ("MODIFIED", "a"),
        ("DELETED", "c"),  # no longer matches the selector
        ("ADDED", "b"),  # now matches it
        ("DELETED", "a"),
    ]


def test_watch_without_resource_version_starts_with_current_objects(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_secret("default", secret("old"))

    stream = watch.Watch().stream(core.list_namespaced_secret, "default", timeout_seconds=10)
    first = next(iter(stream))

    assert (first["type"], first["object"].metadata.name) == ("ADDED", "old")


def test_watch_from_a_compacted_version_is_410(
    core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    old = core.create_namespaced_secret("default", secret("a")).metadata.resource_version
    cluster.faults.compact()

    # Watch retries once after an ERROR 410 event, then raises.
    with pytest.raises(ApiException) as raised:
        for _ in watch.Watch().stream(core.list_namespaced_secret, "default", resource_version=old):
            pass
    assert raised.value.status == 410
    assert "too old resource version" in str(raised.value.reason)

    with pytest.raises(ApiException) as listed:
        core.list_namespaced_secret("default", resource_version=old)
    assert listed.value.status == 410

    fresh = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", secret("b"))
    events = watch.Watch().stream(
        core.list_namespaced_secret, "default", resource_version=fresh, timeout_seconds=5
    )
    assert next(iter(events))["object"].metadata.name == "b"


def test_an_up_to_date_watch_survives_compaction(
    core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", secret("a"))
    names: list[str] = []

    for event in watch.Watch().stream(
        core.list_namespaced_secret, "default", resource_version=start, timeout_seconds=10
    ):
        names.append(event["object"].metadata.name)
        if names == ["a"]:
            cluster.faults.compact()
            core.create_namespaced_secret("default", secret("b"))
        if len(names) == 2:
            break

    assert names == ["a", "b"]


def test_watch_timeout_is_honoured_by_the_server(core: client.CoreV1Api) -> None:
    started = time.monotonic()

    # The client's own read deadline fails the test if the server ignores timeout_seconds.
    events = list(
        watch.Watch().stream(
            core.list_namespaced_secret, "default", timeout_seconds=1, _request_timeout=30
        )
    )

    assert events == []
    assert time.monotonic() - started > 0.9  # the server waited for the timeout, then ended


def test_bookmark_before_the_timeout_carries_the_current_version(
    core: client.CoreV1Api,
) -> None:
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", secret("a", app="x"))
    core.create_namespaced_secret("default", secret("unwatched", app="y"))
    latest = core.list_namespaced_secret("default").metadata.resource_version

    events = [
        (event["type"], event["raw_object"]["metadata"]["resourceVersion"])
        for event in watch.Watch().stream(
            core.list_namespaced_secret,
            "default",
            resource_version=start,
            label_selector="app=x",
            allow_watch_bookmarks=True,
            timeout_seconds=3,  # the bookmark comes 2 s before the end
        )
    ]

    assert [kind for kind, _ in events] == ["ADDED", "BOOKMARK"]
    assert events[-1][1] == latest


def test_dropped_watch_breaks_the_connection(core: client.CoreV1Api, cluster: FakeCluster) -> None:
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in watch.Watch().stream(
                core.list_namespaced_secret, "default", resource_version="1"
            ):
                pass
        except BaseException as error:
            failures.append(error)

    core.create_namespaced_secret("default", secret("a"))
    consumer = threading.Thread(target=consume)
    consumer.start()
    wait_for(cluster.open_watches, what="the watch to open")
    cluster.faults.drop_watches()
    consumer.join(timeout=5)

    assert not consumer.is_alive()
    assert len(failures) == 1
    assert isinstance(failures[0], urllib3.exceptions.ProtocolError)


def test_graceful_drop_lets_the_client_resume_without_duplicates(
    core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", secret("a"))
    names: list[str] = []

    for event in watch.Watch().stream(
        core.list_namespaced_secret, "default", resource_version=start
    ):
        names.append(event["object"].metadata.name)
        if names == ["a"]:
            cluster.faults.drop_watches(graceful=True)
            core.create_namespaced_secret("default", secret("b"))
        if len(names) == 2:
            break

    assert names == ["a", "b"]
