"""The dashboard in headless Chromium, driven by Playwright, against a real server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps import IN_CI
from tests.support.servers import Launcher, copy_db, poll, run_flask

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic is refused here; keep it quiet and fast.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Set SCREENSHOT_DIR to keep a screenshot of the task page (the README's picture).
SCREENSHOTS = Path(os.environ["SCREENSHOT_DIR"]) if os.environ.get("SCREENSHOT_DIR") else None


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """Yield a Playwright page in headless Chromium (the Debian package, no download)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    yield started
    started.close()


def test_a_graph_turns_green_and_a_failed_task_is_retried(
    page: Any, launcher: Launcher, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.db"
    assert run_flask(schema, "db", "upgrade").returncode == 0
    db = tmp_path / "tasks.db"
    copy_db(schema, db)
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2")
    server.submit_batch(
        [
            {"id": "extract", "type": "etl", "duration_ms": 1500},
            {"id": "load", "type": "etl", "duration_ms": 10, "dependencies": ["extract"]},
            {"id": "broken", "type": "etl", "duration_ms": 10, "payload": {"fail": True}},
        ]
    )
    p = page
    p.goto(f"{server.base_url}/tasks/load")
    node = '[data-task-id="load"]'
    p.wait_for_selector(f'{node}[data-status="QUEUED"]', timeout=10_000)
    p.wait_for_selector(f'{node}[data-status="COMPLETED"]', timeout=30_000)
    extract = p.get_attribute('[data-task-id="extract"]', "data-status")
    assert extract == "COMPLETED"
    if SCREENSHOTS is not None:
        p.screenshot(path=str(SCREENSHOTS / "dashboard-task.png"), full_page=True)

    server.wait_status("broken", "FAILED")
    p.goto(f"{server.base_url}/tasks/broken")
    p.wait_for_selector('[data-task-id="broken"][data-status="FAILED"]', timeout=10_000)
    p.get_by_role("button", name="Retry").click()
    # The retried task fails again (payload.fail): its attempts show the second run.
    retried = poll(
        lambda: (t := server.task("broken"))["attempts"] == 2 and t["status"] == "FAILED" and t,
        20,
        "the retried task to run again",
    )
    assert retried["error_code"] == "handler_error"
    p.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
