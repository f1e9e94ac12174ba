"""The web UI in a real browser: headless Chromium (the system's, never a downloaded one)
driven by Playwright, against the real control plane, agent and engine.

Every page a test opens is watched for console errors and failed requests; a test that sees
one fails. With ``FLOWYARD_SCREENSHOTS=<dir>`` the tests save a screenshot of each page there
(``docs/images`` holds the ones the docs show).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    Response,
    expect,
    sync_playwright,
)

from control_plane.cli.processes import start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.ports import free_port

from .conftest import System, running_system

#: Debian's chromium; another system Chromium can be named with FLOWYARD_CHROMIUM.
CHROMIUM = os.environ.get("FLOWYARD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: How long the page may take to show what the server has (a live update is far quicker).
UI_TIMEOUT_MS = 20_000
expect.set_options(timeout=UI_TIMEOUT_MS)
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

GATED = """
import os
import time


def main(gate: str, first: int = 20, second: int = 20) -> int:
    for i in range(first):
        print(f"before {i}", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.02)
    for i in range(second):
        print(f"after {i}", flush=True)
    return first + second
"""

SLEEPY = """
import time


def main() -> None:
    print("going to sleep", flush=True)
    time.sleep(600)
"""

TYPED = """
def main(n: int, label: str = "x", loud: bool = False) -> str:
    print(f"{label} {n}")
    return label * n
"""


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: install Debian's chromium package ('make test' does when "
        "it can), or name one with FLOWYARD_CHROMIUM"
    )
    # No sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield launched
    launched.close()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with running_system(tmp_path) as system:
        yield system


class Watched:
    """A page whose console errors and failed requests are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        # A refused API call is logged by the browser too; the answers that count are
        # judged in _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    def _response(self, response: Response) -> None:
        # The API answers a user's mistake with 4xx, which the page shows; a missing asset
        # or any 5xx is a fault of the UI.
        asset = "/static/" in response.url or response.url.endswith("/favicon.ico")
        if response.status >= 500 or (asset and response.status >= 400):
            self.problems.append(f"{response.status} {response.url}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(UI_TIMEOUT_MS)
    watched = Watched(context.new_page())
    yield watched
    context.close()
    assert watched.problems == []


def screenshot(page: Page, name: str) -> None:
    """Save a screenshot of ``page`` when asked to (FLOWYARD_SCREENSHOTS)."""
    folder = os.environ.get("FLOWYARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def log_in(page: Page, system: System, target: str = "/runs") -> None:
    page.goto(system.server.extra["http_url"].rstrip("/") + target)
    page.fill("#token", system.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{target}")


def test_a_wrong_token_is_refused_and_the_right_one_logs_in(page: Watched, system: System) -> None:
    browser = page.page
    browser.goto(system.server.extra["http_url"] + "runs")
    expect(browser.locator("h1")).to_have_text("Log in")
    screenshot(browser, "login")
    browser.fill("#token", "0123456789abcdef.wrong-secret-wrong-secret")
    browser.click("button[type=submit]")
    expect(browser.locator("#login-error")).to_contain_text("unknown token")
    browser.fill("#token", system.agent_token)
    browser.click("button[type=submit]")
    expect(browser.locator("#login-error")).to_contain_text("needs an admin token")
    browser.fill("#token", system.admin_token)
    browser.click("button[type=submit]")
    expect(browser.locator("h1")).to_have_text("Runs")
    browser.click("text=Log out")
    expect(browser.locator("h1")).to_have_text("Log in")
    browser.goto(system.server.extra["http_url"] + "pools")
    expect(browser.locator("h1")).to_have_text("Log in")


def test_the_runs_list_shows_new_runs_and_state_changes_without_a_reload(
    page: Watched, system: System
) -> None:
    system.deploy("typed", TYPED)
    log_in(page.page, system)
    rows = page.page.locator("#run-rows tr[data-run]")
    expect(rows).to_have_count(0)
    run_id = system.create_run("typed", n=2)
    row = page.page.locator(f'#run-rows tr[data-run="{run_id}"]')
    expect(row.locator(".state")).to_have_text("SCHEDULED")
    system.start_agent()
    expect(row.locator(".state")).to_have_text("COMPLETED")
    expect(row).to_contain_text("typed")
    screenshot(page.page, "runs")
    page.page.select_option("select[name=state]", "FAILED")
    page.page.click("text=Filter")
    expect(page.page.locator("#run-rows")).to_contain_text("No runs match")


def test_a_run_page_follows_the_lines_as_the_flow_prints_them(
    page: Watched, system: System, tmp_path: Path
) -> None:
    system.deploy("gated", GATED)
    system.start_agent()
    gate = tmp_path / "gate"
    run_id = system.create_run("gated", gate=str(gate))
    log_in(page.page, system, f"/runs/{run_id}")
    lines = page.page.locator("#logs .line")
    expect(lines.filter(has_text="before 19")).to_have_count(1)
    expect(page.page.locator("#run-state")).to_have_text("RUNNING")
    assert lines.filter(has_text="after").count() == 0
    gate.touch()
    expect(lines.filter(has_text="after 19")).to_have_count(1)
    expect(page.page.locator("#run-state")).to_have_text("COMPLETED")
    expect(page.page.locator("#log-status")).to_contain_text("run ended")
    texts = [t.split(" ", 2)[2].rstrip("\n") for t in lines.all_inner_texts()]
    stored = [line.text for line in system.logs(run_id)]
    assert texts == stored
    page.page.fill("#log-search", "after 1")
    expect(page.page.locator("#logs .line:not(.hidden)")).to_have_count(11)
    page.page.fill("#log-search", "")
    screenshot(page.page, "run")


def test_live_lines_survive_a_server_restart_without_loss_or_doubles(
    page: Watched, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    with running_system(tmp_path, grpc_port, server_args=["--http-port", str(http_port)]) as system:
        system.deploy("gated", GATED)
        system.start_agent()
        gate = tmp_path / "gate"
        run_id = system.create_run("gated", gate=str(gate), first=30, second=30)
        log_in(page.page, system, f"/runs/{run_id}")
        lines = page.page.locator("#logs .line")
        expect(lines.filter(has_text="before 29")).to_have_count(1)

        system.server.stop()
        expect(page.page.locator("#log-status")).to_contain_text("reconnecting")
        system.server = start_server(
            system.root / "server", port=grpc_port, extra_args=["--http-port", str(http_port)]
        )
        gate.touch()
        expect(lines.filter(has_text="after 29")).to_have_count(1)
        expect(page.page.locator("#log-status")).to_contain_text("run ended")
        positions = [lines.nth(i).get_attribute("data-pos") for i in range(lines.count())]
        assert len(positions) == len(set(positions))
        texts = [t.split(" ", 2)[2].rstrip("\n") for t in lines.all_inner_texts()]
        assert texts == [line.text for line in system.logs(run_id)]
    # The page saw the server go away; its failed reconnects are expected, nothing else.
    page.problems = [p for p in page.problems if "ERR_CONNECTION_REFUSED" not in p]


def test_a_run_is_cancelled_from_its_page(page: Watched, system: System) -> None:
    system.deploy("sleepy", SLEEPY)
    system.start_agent()
    run_id = system.create_run("sleepy")
    log_in(page.page, system, f"/runs/{run_id}")
    expect(page.page.locator("#logs")).to_contain_text("going to sleep")
    page.page.click("#cancel")
    expect(page.page.locator("#run-state")).to_have_text("CANCELLED")
    expect(page.page.locator("#cancel")).to_be_disabled()
    assert system.wait_terminal(run_id).state.type == types_pb2.STATE_TYPE_CANCELLED


def test_the_run_form_shows_the_servers_error_then_starts_a_run(
    page: Watched, system: System
) -> None:
    system.deploy("typed", TYPED)
    system.start_agent()
    log_in(page.page, system, "/deployments/typed")
    form = page.page.locator("#run-form")
    expect(form.locator("label[for=param-n]")).to_have_text("n *")
    expect(form.locator("#param-label")).to_have_value("x")
    page.page.fill("#param-n", "three")
    page.page.click("#run-form button[type=submit]")
    expect(page.page.locator("#run-error")).to_contain_text("'three' is not of type 'integer'")
    assert _runs(system) == []  # the refused form created nothing
    screenshot(page.page, "deployment")
    page.page.fill("#param-n", "3")
    page.page.check("#param-loud")
    page.page.click("#run-form button[type=submit]")
    page.page.wait_for_url("**/runs/*")
    expect(page.page.locator("#run-state")).to_have_text("COMPLETED")
    expect(page.page.locator("#logs")).to_contain_text("x 3")
    runs = _runs(system)
    assert len(runs) == 1 and json.loads(runs[0].parameters_json) == {
        "n": 3,
        "label": "x",
        "loud": True,
    }


def test_pages_fit_a_phone_and_work_from_the_keyboard(page: Watched, system: System) -> None:
    system.deploy("typed", TYPED)
    system.start_agent()
    run_id = system.create_run("typed", n=1)
    system.wait_terminal(run_id)
    log_in(page.page, system)
    screenshot(page.page, "runs-laptop")
    page.page.set_viewport_size(PHONE)
    for path in ("/runs", f"/runs/{run_id}", "/deployments", "/deployments/typed", "/pools"):
        page.page.goto(system.server.extra["http_url"].rstrip("/") + path)
        overflow = page.page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than a phone"
    screenshot(page.page, "pools")
    page.page.set_viewport_size(LAPTOP)
    page.page.goto(system.server.extra["http_url"] + "runs")
    page.page.keyboard.press("Tab")
    expect(page.page.locator(":focus")).to_have_text("Skip to content")
    # The first run's link is reachable by Tab alone, and Enter opens it.
    for _ in range(40):
        page.page.keyboard.press("Tab")
        if page.page.evaluate("document.activeElement.closest('#run-rows') !== null"):
            break
    else:
        raise AssertionError("no run link is reachable with Tab")
    page.page.keyboard.press("Enter")
    page.page.wait_for_url(f"**/runs/{run_id}")


def _runs(system: System) -> list[types_pb2.FlowRun]:
    return list(system.stub.ListRuns(pb.ListRunsRequest()).runs)


def test_a_deployment_and_one_of_its_schedules_are_paused_and_resumed(
    page: Watched, system: System
) -> None:
    system.deploy("typed", TYPED, "main", "--param", "n=1", "--interval", "3600")
    log_in(page.page, system, "/deployments/typed")
    expect(page.page.locator("text=Waiting:")).to_be_visible()
    page.page.click("text=Pause schedule")
    expect(page.page.locator("text=Resume schedule")).to_be_visible()
    listed = system.stub.ListSchedules(pb.ListSchedulesRequest(deployment_name="typed"))
    assert [s.schedule.paused for s in listed.schedules] == [True]
    assert not listed.deployment_paused
    page.page.click("text=Pause deployment")
    expect(page.page.locator("#paused")).to_have_text("yes")
    assert system.stub.ListSchedules(
        pb.ListSchedulesRequest(deployment_name="typed")
    ).deployment_paused
    page.page.click("text=Resume deployment")
    expect(page.page.locator("#paused")).to_have_text("no")
    page.page.click("text=Resume schedule")
    expect(page.page.locator("text=Pause schedule")).to_be_visible()
