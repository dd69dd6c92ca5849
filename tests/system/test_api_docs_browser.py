"""The API reference (/api/docs) in headless Chromium, driven by Playwright, against a real
server: Swagger UI renders every operation of the document from files this server
serves, and its Authorize button takes the API token. In process:
tests/integration/test_api_docs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.support.auth import GOOD, TOKEN
from tests.support.servers import REQUEST_TIMEOUT_S, Launcher

RENDERED_S = 15_000  # ms: Swagger UI parses the document and draws every operation
LIST_TASKS = "#operations-default-list_tasks"


def keep_on_server(page: Any, base_url: str) -> list[str]:
    """Let the page reach `base_url` only; return the list of what else it asked for."""
    elsewhere: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(base_url + "/"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    page.route("**/*", handle)
    return elsewhere


def open_reference(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/api/docs")
    page.wait_for_selector(f"{LIST_TASKS} .opblock-summary-control", timeout=RENDERED_S)


def operation_count(base_url: str) -> int:
    response = requests.get(f"{base_url}/api/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200
    paths = response.json()["paths"]
    return sum(1 for item in paths.values() for method in item if method != "parameters")


def test_the_reference_renders_every_operation_from_this_server_alone(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db)
    loaded: list[str] = []
    page.on("requestfinished", lambda request: loaded.append(request.url))
    elsewhere = keep_on_server(page, server.base_url)

    open_reference(page, server.base_url)

    assert page.locator(".opblock").count() == operation_count(server.base_url)
    submit = page.locator("#operations-default-submit_task")
    assert submit.locator(".opblock-summary-path").get_attribute("data-path") == "/api/tasks"
    assert submit.locator(".opblock-summary-description").text_content() == "Submit a task"
    assert page.get_by_text("Say why a task is not running, down to the root causes").count()
    assert elsewhere == []
    assert f"{server.base_url}/api/openapi.json" in loaded
    assert f"{server.base_url}/api/docs/swagger-ui-bundle.js" in loaded


def test_authorize_takes_the_token_that_try_it_out_sends(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db, API_TOKEN=TOKEN)
    body: dict[str, Any] = {"id": "t1", "type": "simulate", "duration_ms": 1}
    url = f"{server.base_url}/api/tasks"
    assert requests.post(url, json=body, headers=GOOD, timeout=REQUEST_TIMEOUT_S).ok
    elsewhere = keep_on_server(page, server.base_url)
    answer = f"{LIST_TASKS} .live-responses-table tr.response"

    # Open with the token set; only the data needs it.
    open_reference(page, server.base_url)
    page.click(f"{LIST_TASKS} .opblock-summary-control")
    page.click(f"{LIST_TASKS} button.try-out__btn")
    page.click(f"{LIST_TASKS} button.execute")
    page.wait_for_selector(f'{answer} .response-col_status:text-is("401")', timeout=10_000)

    page.click(".auth-wrapper button.authorize")
    page.fill(".modal-ux #auth-bearer-value", TOKEN)
    page.click(".modal-ux button.authorize")
    page.click(".modal-ux button.btn-done")
    page.click(f"{LIST_TASKS} button.execute")
    page.wait_for_selector(f'{answer} .response-col_status:text-is("200")', timeout=10_000)
    shown = page.text_content(f"{answer} .response-col_description")
    assert shown is not None and '"id": "t1"' in shown
    assert elsewhere == []
