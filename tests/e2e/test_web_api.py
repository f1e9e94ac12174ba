"""The HTTP API beside gRPC: the same runs, tokens and errors, over JSON and Server-Sent
Events, against the real control plane, agent and engine on each store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.cli.processes import script, start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.ports import free_port
from tests.sse import Event, events

from .conftest import POOL, System, running_system, wait_for

GATED = """
import os
import time


def main(gate: str, first: int = 50, second: int = 50) -> int:
    for i in range(first):
        print(f"before {i}")
    while not os.path.exists(gate):
        time.sleep(0.02)
    for i in range(second):
        print(f"after {i}")
    return first + second
"""

TYPED = """
def main(n: int, label: str = "x") -> str:
    print(f"{label} {n}")
    return label * n
"""


@pytest.fixture
def system(tmp_path: Path, db_url: str | None) -> Iterator[System]:
    with running_system(tmp_path, db_url=db_url) as system:
        yield system


def http(system: System, token: str | None = None) -> httpx.Client:
    """A client of the control plane's HTTP port, with the admin token unless told otherwise."""
    token = system.admin_token if token is None else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=system.server.extra["http_url"], headers=headers, timeout=30)


def error_of(response: httpx.Response) -> dict[str, str]:
    body: dict[str, dict[str, str]] = response.json()
    return body["error"]


def stream_lines(
    client: httpx.Client, run_id: str, last_id: str | None = None, stop_after: int | None = None
) -> tuple[list[dict[str, Any]], list[Event]]:
    """The lines a logs stream sends (until ``end``, or until ``stop_after`` lines), and
    every event it sent."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    lines: list[dict[str, Any]] = []
    seen: list[Event] = []
    with client.stream("GET", f"/api/v1/runs/{run_id}/logs", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for event in events(response):
            seen.append(event)
            if event.kind == "lines":
                lines.extend(event.data)
                if stop_after is not None and len(lines) >= stop_after:
                    break
            if event.kind == "end":
                break
    return lines, seen


def test_probes_and_the_openapi_description_need_no_token(system: System) -> None:
    with http(system, token="") as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        document = client.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/runs/{run_id}/logs" in document["paths"]


def test_runs_are_listed_read_and_filtered_like_over_grpc(system: System) -> None:
    system.deploy("typed", TYPED)
    system.start_agent()
    first = system.create_run("typed", n=2)
    system.wait_terminal(first)
    second = system.stub.CreateRun(
        pb.CreateRunRequest(deployment_name="typed", parameters_json='{"n": 1}')
    ).run.id
    system.wait_terminal(second)
    with http(system) as client:
        listed = client.get("/api/v1/runs").json()
        assert [r["id"] for r in listed["runs"]] == [second, first]
        assert listed["runs"][1]["parameters"] == {"n": 2}
        assert listed["runs"][1]["state"]["type"] == "COMPLETED"
        assert listed["runs"][1]["infrastructure_id"]
        page = client.get("/api/v1/runs", params={"page_size": 1}).json()
        assert [r["id"] for r in page["runs"]] == [second]
        rest = client.get(
            "/api/v1/runs", params={"page_size": 1, "page_token": page["next_page_token"]}
        ).json()
        assert [r["id"] for r in rest["runs"]] == [first] and rest["next_page_token"] == ""
        assert client.get("/api/v1/runs", params={"state": "failed"}).json()["runs"] == []
        assert len(client.get("/api/v1/runs", params={"pool": POOL}).json()["runs"]) == 2
        created = listed["runs"][0]["create_time"]
        since = client.get("/api/v1/runs", params={"since": created}).json()["runs"]
        assert [r["id"] for r in since] == [second]
        until = client.get("/api/v1/runs", params={"until": created}).json()["runs"]
        assert [r["id"] for r in until] == [first]

        detail = client.get(f"/api/v1/runs/{first}").json()
        assert detail["run"]["id"] == first
        assert [h["type"] for h in detail["history"]][-1] == "COMPLETED"
        assert detail["history"][0]["type"] == "SCHEDULED"
        pools = client.get("/api/v1/pools").json()["pools"]
        assert pools[0]["name"] == POOL and pools[0]["agents"][0]["name"] == "agent-1"
        assert pools[0]["agents"][0]["capacity"] == 4
        deployment = client.get("/api/v1/deployments/typed").json()
        assert deployment["schedules"] == []
        assert deployment["parameter_schema"]["properties"]["n"]["type"] == "integer"


def test_bad_requests_get_the_grpc_apis_status_and_message_and_change_nothing(
    system: System,
) -> None:
    system.deploy("typed", TYPED)
    with pytest.raises(grpc.RpcError) as refused:
        system.stub.CreateRun(
            pb.CreateRunRequest(deployment_name="typed", parameters_json='{"n": "two"}')
        )
    grpc_message = refused.value.details()
    with http(system) as client:
        bad = client.post("/api/v1/deployments/typed/runs", json={"parameters": {"n": "two"}})
        assert bad.status_code == 400
        assert error_of(bad) == {"status": "INVALID_ARGUMENT", "message": grpc_message}
        assert client.get("/api/v1/runs").json()["runs"] == []

        missing = client.post("/api/v1/deployments/nope/runs", json={})
        assert missing.status_code == 404 and "nope" in error_of(missing)["message"]
        assert client.post("/api/v1/deployments/typed/runs", content=b"{").status_code == 400
        extra = client.post("/api/v1/deployments/typed/runs", json={"params": {}})
        assert extra.status_code == 400 and "params" in error_of(extra)["message"]
        state = client.get("/api/v1/runs", params={"state": "DONE"})
        assert state.status_code == 400 and "RUNNING" in error_of(state)["message"]
        since = client.get("/api/v1/runs", params={"since": "yesterday"})
        assert since.status_code == 400 and "RFC 3339" in error_of(since)["message"]
        unknown = client.get(f"/api/v1/runs/{'0' * 32}")
        assert unknown.status_code == 404 and error_of(unknown)["status"] == "NOT_FOUND"
        assert client.get("/api/v1/runs/not-an-id").status_code == 400
        assert client.get("/api/v1/nothing-here").status_code == 404
        logs = client.get(f"/api/v1/runs/{'0' * 32}/logs")
        assert logs.status_code == 404 and logs.headers["content-type"] == "application/json"
        resumed = client.get(f"/api/v1/runs/{'0' * 32}/logs", headers={"Last-Event-ID": "x"})
        assert resumed.status_code == 400 and "attempt:seq" in error_of(resumed)["message"]

        created = client.post("/api/v1/deployments/typed/runs", json={"parameters": {"n": 3}})
        assert created.status_code == 201, created.text
        run_id = created.json()["run"]["id"]
        again = client.post(
            "/api/v1/deployments/typed/runs",
            json={"parameters": {"n": 3}, "idempotency_key": "k1"},
        )
        assert again.status_code == 201
        same = client.post(
            "/api/v1/deployments/typed/runs",
            json={"parameters": {"n": 3}, "idempotency_key": "k1"},
        )
        assert same.status_code == 200 and same.json()["created"] is False
        assert same.json()["run"]["id"] == again.json()["run"]["id"]

        later = client.post(
            "/api/v1/deployments/typed/runs",
            json={"parameters": {"n": 1}, "scheduled_time": "2099-01-02T03:04:05Z"},
        )
        assert later.json()["run"]["scheduled_time"] == "2099-01-02T03:04:05Z"
        naive = client.post(
            "/api/v1/deployments/typed/runs",
            json={"parameters": {"n": 1}, "scheduled_time": "2099-01-02T03:04:05"},
        )
        assert naive.status_code == 400 and "time zone" in error_of(naive)["message"]
        cancelled = client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "not needed"})
        assert cancelled.json()["run"]["state"]["type"] == "CANCELLED"
        twice = client.post(f"/api/v1/runs/{run_id}/cancel", json={})
        assert twice.status_code == 409 and error_of(twice)["status"] == "FAILED_PRECONDITION"


def test_tokens_and_scopes_are_the_grpc_apis(system: System) -> None:
    with http(system, token="") as client:
        anonymous = client.get("/api/v1/runs")
    assert anonymous.status_code == 401 and "/login" in error_of(anonymous)["message"]
    with http(system, token="0123456789abcdef.not-a-real-secret-at-all-xx") as client:
        assert client.get("/api/v1/runs").status_code == 401
    with http(system, token=system.agent_token) as client:
        refused = client.get("/api/v1/runs")
    assert refused.status_code == 403 and "admin token" in error_of(refused)["message"]
    with http(system, token="") as client:
        response = client.get("/api/v1/runs", headers={"Authorization": "Basic abc"})
    assert response.status_code == 401 and "Bearer" in error_of(response)["message"]


def test_a_browser_logs_in_with_a_cookie_and_writes_only_with_its_csrf_token(
    system: System,
) -> None:
    system.deploy("typed", TYPED)
    base = system.server.extra["http_url"]
    with httpx.Client(base_url=base, timeout=30) as browser:
        wrong = browser.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "not a Flowyard token" in wrong.text
        assert "flowyard_session" not in browser.cookies
        assert browser.get("/runs").status_code == 303  # to the login page

        answer = browser.post("/login?next=/deployments", data={"token": system.admin_token})
        assert answer.status_code == 303 and answer.headers["location"] == "/deployments"
        cookies = answer.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("flowyard_session="))
        assert "HttpOnly" in session and "SameSite=strict" in session
        assert browser.get("/runs").status_code == 200
        assert browser.get("/api/v1/runs").status_code == 200

        forged = browser.post("/api/v1/deployments/typed/runs", json={"parameters": {"n": 1}})
        assert forged.status_code == 403 and "X-CSRF-Token" in error_of(forged)["message"]
        assert browser.get("/api/v1/runs").json()["runs"] == []
        csrf = browser.cookies["flowyard_csrf"]
        made = browser.post(
            "/api/v1/deployments/typed/runs",
            json={"parameters": {"n": 1}},
            headers={"X-CSRF-Token": csrf},
        )
        assert made.status_code == 201, made.text

        # A login link may only lead to this site's own pages.
        away = browser.post("/login?next=//evil.example/", data={"token": system.admin_token})
        assert away.headers["location"] == "/runs"


def test_a_logs_stream_resumes_after_its_last_event_id_without_loss_or_duplicates(
    system: System, tmp_path: Path
) -> None:
    system.deploy("gated", GATED)
    system.start_agent()
    gate = tmp_path / "gate"
    run_id = system.create_run("gated", gate=str(gate), first=300, second=700)
    with http(system) as client:
        before, seen = stream_lines(client, run_id, stop_after=300)
        assert seen[0].kind == "state" and seen[0].data["terminal"] is False
        last_id = [e.id for e in seen if e.kind == "lines"][-1]
        assert last_id == f"1:{before[-1]['seq']}"
        gate.touch()
        after, seen = stream_lines(client, run_id, last_id=last_id)
        assert seen[-1].kind == "end" and seen[-1].data["type"] == "COMPLETED"
        texts = [line["text"] for line in before + after]
        stored = [line.text for line in system.logs(run_id)]
        assert texts == stored
        assert [f"before {i}" for i in range(300)] + [f"after {i}" for i in range(700)] == [
            t for t in texts if t.startswith(("before", "after"))
        ]
        seqs = [line["seq"] for line in before + after]
        assert seqs == sorted(set(seqs))
        # Resuming from the very end sends nothing more, and ends.
        rest, seen = stream_lines(client, run_id, last_id=f"1:{seqs[-1]}")
        assert rest == [] and seen[-1].kind == "end"


def test_browsers_following_one_run_each_get_every_line_once(
    system: System, tmp_path: Path
) -> None:
    """Followers that caught up share the run's one reader; one that leaves in the middle and
    resumes from its last event id still gets every line once."""
    system.deploy("gated", GATED)
    system.start_agent()
    gate = tmp_path / "gate"
    run_id = system.create_run("gated", gate=str(gate), first=200, second=3000)

    def follow() -> list[dict[str, Any]]:
        with http(system) as client:
            return stream_lines(client, run_id)[0]

    with ThreadPoolExecutor(max_workers=4) as pool, http(system) as client:
        whole = [pool.submit(follow) for _ in range(4)]
        before, seen = stream_lines(client, run_id, stop_after=200)
        last_id = [e.id for e in seen if e.kind == "lines"][-1]
        gate.touch()
        after, _ = stream_lines(client, run_id, last_id=last_id)
        results = [future.result(timeout=120) for future in whole]
    stored = [(line.seq, line.text) for line in system.logs(run_id)]
    assert len(stored) > 3200
    for lines in [*results, before + after]:
        assert [(line["seq"], line["text"]) for line in lines] == stored


def test_run_changes_stream_until_the_run_ends(system: System, tmp_path: Path) -> None:
    system.deploy("gated", GATED)
    gate = tmp_path / "gate"
    run_id = system.create_run("gated", gate=str(gate), first=1, second=1)
    states: list[str] = []
    with http(system) as client, client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
        for event in events(response):
            if event.kind == "run":
                states.append(event.data["run"]["state"]["type"])
                if states == ["SCHEDULED"]:
                    system.start_agent()
                if event.data["run"]["state"]["type"] == "RUNNING":
                    gate.touch()
            if event.kind == "end":
                assert event.data["type"] == "COMPLETED"
                break
    assert states[0] == "SCHEDULED" and states[-1] == "COMPLETED"
    assert "RUNNING" in states


def test_any_run_change_is_announced(system: System) -> None:
    system.deploy("typed", TYPED)
    with http(system) as client, client.stream("GET", "/api/v1/events") as response:
        stream = events(response)
        assert next(stream).kind == "ready"
        system.create_run("typed", n=1)
        assert next(stream).kind == "changed"


def test_pages_render_for_a_logged_in_admin(system: System) -> None:
    system.deploy("typed", TYPED)
    system.start_agent()
    run_id = system.create_run("typed", n=2, label="<b>")
    system.wait_terminal(run_id)
    with http(system) as client:
        for path in ("/runs", f"/runs/{run_id}", "/deployments", "/deployments/typed", "/pools"):
            page = client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-type"].startswith("text/html")
        headers = client.get(f"/runs/{run_id}").headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        run_page = client.get(f"/runs/{run_id}").text
        assert "&lt;b&gt;" in run_page and "<b>" not in run_page.split("<main", 1)[1]
        download = client.get(f"/runs/{run_id}/logs.txt")
        assert download.status_code == 200 and "<b> 2" in download.text
        assert client.get("/runs", params={"since": "2000-01-01T00:00:00Z"}).status_code == 200
        bad_since = client.get("/runs", params={"since": "monday"})
        assert bad_since.status_code == 400 and "RFC 3339" in bad_since.text
        missing = client.get(f"/runs/{'0' * 32}")
        assert missing.status_code == 404 and "not found" in missing.text
        assert re.search(r'<script src="/static/flowyard.js"', client.get("/runs").text)
        assert client.get("/static/flowyard.js").status_code == 200


def test_openapi_names_every_api_route(system: System) -> None:
    from control_plane.web.api import ROUTES as API
    from control_plane.web.events import ROUTES as EVENTS

    with http(system) as client:
        document = client.get("/api/v1/openapi.json").json()
    served = {}
    for route in [*API, *EVENTS]:
        for method in route.methods or ():
            if method != "HEAD":
                served.setdefault(route.path, set()).add(method.lower())
    described = {
        path: set(operations)
        for path, operations in document["paths"].items()
        if path != "/api/v1/openapi.json"
    }
    assert described == served, json.dumps(document["paths"], indent=1)[:500]


def test_metrics_show_what_a_run_did_and_every_documented_name(system: System) -> None:
    system.deploy("typed", TYPED)
    system.start_agent()
    run_id = system.create_run("typed", n=2)
    system.wait_terminal(run_id)
    with http(system, token="") as client:
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    docs = Path(__file__).parents[2] / "docs" / "metrics.md"
    documented = set(re.findall(r"^\| `(flowyard_[a-z_]+)`", docs.read_text(), re.MULTILINE))
    control_plane = {name for name in documented if not name.startswith("flowyard_agent_")}
    control_plane |= {"flowyard_agents_connected", "flowyard_agent_free_credit"} & documented
    for name in control_plane:
        assert any(n == name or n.startswith(f"{name}_") for n in names), name

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("flowyard_runs_created_total") >= 1
    assert value("flowyard_run_state_transitions_total", state="COMPLETED") >= 1
    assert value("flowyard_log_lines_ingested_total") >= 1
    assert value("flowyard_run_due_to_assigned_seconds_count") >= 1
    assert value("flowyard_run_assigned_to_running_seconds_count") >= 1
    assert value("flowyard_database_seconds_count", operation="write") >= 1
    assert value("flowyard_agents_connected", pool=POOL) == 1
    assert value("flowyard_queue_depth", pool=POOL, queue="default") == 0


def test_many_followers_of_one_run_each_get_every_line_once(system: System, tmp_path: Path) -> None:
    system.deploy("gated", GATED)
    system.start_agent()
    gate = tmp_path / "gate"
    run_id = system.create_run("gated", gate=str(gate), first=100, second=2000)
    followers = 20
    with http(system) as client:
        stream_lines(client, run_id, stop_after=100)  # the flow waits at its gate
    with ThreadPoolExecutor(followers) as pool:
        clients = [http(system) for _ in range(followers)]
        results = [pool.submit(stream_lines, c, run_id) for c in clients]
        gate.touch()
        received = [result.result(timeout=120)[0] for result in results]
        for c in clients:
            c.close()
    stored = [(line.attempt, line.seq) for line in system.logs(run_id)]
    assert len(stored) > 2100
    for lines in received:
        assert [(line["attempt"], line["seq"]) for line in lines] == stored


def test_a_stopping_server_ends_its_streams_without_an_end_and_without_errors(
    system: System, tmp_path: Path
) -> None:
    system.deploy("gated", GATED)
    system.start_agent()
    run_id = system.create_run("gated", gate=str(tmp_path / "gate"), first=10)
    lines: list[dict[str, Any]] = []

    def follow() -> list[Event]:
        seen: list[Event] = []
        with client.stream("GET", f"/api/v1/runs/{run_id}/logs") as response:
            assert response.status_code == 200, response.read()
            for event in events(response):
                seen.append(event)
                if event.kind == "lines":
                    lines.extend(event.data)
        return seen

    with http(system) as client, ThreadPoolExecutor(2) as pool:
        logs = pool.submit(follow)
        changes = pool.submit(
            lambda: [e.kind for e in events_of(client, f"/api/v1/runs/{run_id}/events")]
        )
        wait_for(lambda: system.run(run_id).state.type == types_pb2.STATE_TYPE_RUNNING)
        engine = int(system.run(run_id).infrastructure_id.rsplit("/", 1)[1])
        # The server stops while both streams are open, the logs one with the flow's lines.
        wait_for(lambda: len(lines) >= 10)
        system.server.stop()
        seen = logs.result(timeout=60)
        kinds = changes.result(timeout=60)
    # The flow waits at its gate for ever; with its control plane gone, stop it here.
    os.killpg(engine, signal.SIGKILL)
    assert [e.kind for e in seen if e.kind == "end"] == [] and "end" not in kinds
    log = (system.root / "server" / "server.log").read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def events_of(client: httpx.Client, path: str) -> list[Event]:
    """Every event of a stream, until it ends."""
    with client.stream("GET", path) as response:
        return list(events(response))


def test_a_cli_tail_outlives_a_graceful_restart_of_a_server_with_http(tmp_path: Path) -> None:
    """Stopping ends the browsers' streams at once; a gRPC tail is ended by the gRPC server
    as before, which the CLI takes as a reason to reconnect, not as the run's end."""
    grpc_port, http_port = free_port(), free_port()
    http_args = ["--http-port", str(http_port)]
    with running_system(tmp_path, grpc_port, server_args=http_args) as system:
        system.deploy("gated", GATED)
        system.start_agent()
        gate = tmp_path / "gate"
        run_id = system.create_run("gated", gate=str(gate), first=5, second=5)
        with http(system) as client:
            stream_lines(client, run_id, stop_after=5)
        tail = subprocess.Popen(
            [*script("flowyard"), "--server", system.address, "logs", run_id, "--follow"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "FLOWYARD_TOKEN": system.admin_token},
        )
        assert tail.stdout is not None
        seen = [tail.stdout.readline() for _ in range(5)]
        assert all("before" in line for line in seen[-3:]), seen
        system.server.stop()
        system.server = start_server(system.root / "server", port=grpc_port, extra_args=http_args)
        gate.touch()
        # Read through the same buffer as the lines above (communicate() would skip it).
        rest = tail.stdout.read()
        assert tail.wait(timeout=60) == 0, rest
        printed = [line for line in seen + rest.splitlines(keepends=True) if " INFO " in line]
        assert [line.split(" INFO     ", 1)[1].strip() for line in printed] == [
            line.text for line in system.logs(run_id)
        ]
        assert rest.splitlines()[-1] == "COMPLETED"
