"""API_TOKEN through real processes: gunicorn's access log keeps the token out, and the
dashboard in a browser asks for it once. In process: tests/integration/test_auth.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.support.auth import GOOD, REFUSED, TOKEN
from tests.support.servers import Launcher


def test_gunicorn_access_log_keeps_the_token_out(launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db, API_TOKEN=TOKEN, GUNICORN_ACCESS_LOG="-")
    url = server.base_url + "/api/tasks"
    body: dict[str, Any] = {"id": "t1", "type": "simulate", "duration_ms": 1}
    assert requests.post(url, json=body, headers=GOOD, timeout=5).status_code == 201
    assert requests.get(url, headers=GOOD, timeout=5).status_code == 200
    cases = ("wrong token", "a token of another length", "a prefix of the token", "basic auth")
    for case in cases:
        assert requests.get(url, headers=REFUSED[case], timeout=5).status_code == 401
    server.wait_log('"GET /api/tasks HTTP/1.1" 401')
    log = server.log()
    assert '"POST /api/tasks HTTP/1.1" 201' in log
    assert TOKEN not in log and TOKEN[:-1] not in log


# -- the dashboard in a browser --------------------------------------------------------


def test_the_dashboard_asks_for_the_token_once_and_keeps_it(
    launcher: Launcher, db: Path, browser: Any
) -> None:
    server = launcher.gunicorn(db, ready="disabled", API_TOKEN=TOKEN, SCHEDULER_ENABLED="false")
    body: dict[str, Any] = {"id": "t1", "type": "simulate", "duration_ms": 1}
    response = requests.post(server.base_url + "/api/tasks", json=body, headers=GOOD, timeout=5)
    assert response.status_code == 201
    use_the_dashboard(browser.new_page(), server.base_url)


def use_the_dashboard(page: Any, base_url: str) -> None:
    form = "#token-form:not([hidden])"
    page.goto(base_url + "/")
    page.wait_for_selector(form, timeout=10_000)
    page.fill("#token-input", "not-the-token-at-all")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#token-note:has-text('refused')", timeout=10_000)
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector('tr[data-task-id="t1"]', timeout=10_000)
    page.wait_for_selector('[data-count-for="QUEUED"]:has-text("1")', timeout=10_000)
    assert page.is_hidden("#token-form")
    # Kept for the session: other pages and a reload do not ask again.
    streams: list[Any] = []
    page.on("request", lambda r: "/api/events" in r.url and streams.append(r))
    page.goto(base_url + "/tasks/t1")
    page.wait_for_selector('.node[data-task-id="t1"][data-status="QUEUED"]', timeout=10_000)
    # The event stream carries the token in its header, never in its URL.
    page.wait_for_function("Dash.streaming()", timeout=10_000)
    assert streams[-1].headers.get("authorization") == f"Bearer {TOKEN}"
    assert all(TOKEN not in r.url for r in streams)
    page.reload()
    page.wait_for_selector('#details dd:has-text("simulate")', timeout=10_000)
    assert page.is_hidden("#token-form")
