"""The dashboard in headless Chromium, driven by Playwright, against a real server.

The server runs in its own processes, so a handler a test needs comes from a module it
imports: this one, as `TASK_HANDLERS=tests.system.test_browser` (see `register`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

from app.handlers import Registry, TaskContext
from tests.support.servers import Launcher, poll

# Set SCREENSHOT_DIR to keep a screenshot of the task page (the README's picture).
SCREENSHOTS = Path(os.environ["SCREENSHOT_DIR"]) if os.environ.get("SCREENSHOT_DIR") else None
# The server imports this module for its handlers (`register` below).
HANDLERS = "tests.system.test_browser"
FLAKY_FAILURES = 2


def flaky(ctx: TaskContext) -> dict[str, int]:
    """Raise in the first FLAKY_FAILURES attempts, then complete."""
    if ctx.attempt <= FLAKY_FAILURES:
        raise ValueError(f"flaky gave up in attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def register(registry: Registry) -> None:
    """Register the `flaky` type in the server that imports this module."""
    registry.register("flaky", flaky)


def test_a_graph_turns_green_and_a_failed_task_is_retried(
    page: Any, launcher: Launcher, db: Path, tmp_path: Path
) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2")
    server.submit_batch(
        [
            {"id": "extract", "type": "etl", "duration_ms": 1500},
            {"id": "load", "type": "etl", "duration_ms": 10, "dependencies": ["extract"]},
            {"id": "broken", "type": "etl", "duration_ms": 10, "payload": {"fail": True}},
        ]
    )
    p = page
    streams: list[Any] = []
    p.on("request", lambda r: r.url.endswith("/api/events") and streams.append(r))
    p.goto(f"{server.base_url}/tasks/load")
    node = '[data-task-id="load"]'
    p.wait_for_selector(f'{node}[data-status="QUEUED"]', timeout=10_000)
    # The page follows the server's event stream (and polls only as a safety net).
    p.wait_for_function("Dash.streaming()", timeout=10_000)
    assert streams and streams[0].headers.get("accept") == "text/event-stream"
    p.wait_for_selector(f'{node}[data-status="COMPLETED"]', timeout=30_000)
    extract = p.get_attribute('[data-task-id="extract"]', "data-status")
    assert extract == "COMPLETED"
    # Finished: neither action can succeed, so neither button shows once the page catches up.
    p.wait_for_selector("#cancel", state="hidden", timeout=10_000)
    assert not p.is_visible("#retry")
    if SCREENSHOTS is not None:
        p.screenshot(path=str(SCREENSHOTS / "dashboard-task.png"), full_page=True)

    server.wait_status("broken", "FAILED")
    p.goto(f"{server.base_url}/tasks/broken")
    p.wait_for_selector('[data-task-id="broken"][data-status="FAILED"]', timeout=10_000)
    assert not p.is_visible("#cancel")
    p.get_by_role("button", name="Retry").click()
    # The retried task fails again (payload.fail): its attempts show the second run.
    retried = poll(
        lambda: (t := server.task("broken"))["attempts"] == 2 and t["status"] == "FAILED" and t,
        20,
        "the retried task to run again",
    )
    assert retried["error_code"] == "handler_error"
    # One attempt per run, two runs: the page says so rather than "2 / 1".
    p.wait_for_selector('#details dd:text-is("2 (up to 1 per run)")', timeout=10_000)
    p.wait_for_selector("#retry", state="visible", timeout=10_000)
    p.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # The batch's second link lists its three tasks (the first opens the batch page).
    p.click("#batch-list-link")
    p.wait_for_url(f"{server.base_url}/?batch_id=*")
    p.wait_for_function("document.querySelectorAll('#task-rows tr').length === 3")
    assert p.input_value("#filter-batch") == p.url.split("batch_id=", 1)[1]
    assert p.get_attribute("#batch-graph-link", "href") == "/batches/" + p.input_value(
        "#filter-batch"
    )

    missing = p.goto(f"{server.base_url}/tasks/ghost")
    assert missing is not None and missing.status == 404
    assert p.text_content("#task-missing").startswith("No task with id ghost.")
    assert p.locator("button#retry").count() == 0


def test_the_schedules_page_shows_firings_and_pauses(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db)
    body = {"id": "tick", "interval_s": 1, "task": {"type": "simulate", "duration_ms": 5}}
    assert requests.post(f"{server.base_url}/api/schedules", json=body, timeout=10).ok
    p = page
    p.goto(f"{server.base_url}/")
    p.click('nav.sections a:text-is("Schedules")')
    p.wait_for_url(f"{server.base_url}/schedules")
    row = '#schedule-rows tr[data-schedule-id="tick"]'
    p.wait_for_selector(f'{row}[data-paused="false"]', timeout=10_000)
    # Refreshed every 2 s: the count of firings climbs without a reload.
    p.wait_for_function(
        'Number(document.querySelector(\'[data-schedule-id="tick"] [data-count="fired"]\')'
        ".textContent) >= 2",
        timeout=20_000,
    )
    p.click(f'{row} button:text-is("Pause")')
    p.wait_for_selector(f'{row}[data-paused="true"]', timeout=10_000)
    assert server.get("/api/schedules/tick").json()["paused"] is True
    # The last firing links to its tasks.
    p.click(f'{row} td[data-outcome="fired"] a')
    p.wait_for_url(f"{server.base_url}/?batch_id=tick.*")
    p.wait_for_function("document.querySelectorAll('#task-rows tr').length === 1")


def test_the_queues_page_pauses_a_queue_and_sets_its_limit(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="4")
    p = page
    p.goto(f"{server.base_url}/")
    p.click('nav.sections a:text-is("Queues")')
    p.wait_for_url(f"{server.base_url}/queues")
    row = '#queue-rows tr[data-queue="mail"]'
    p.wait_for_selector('#queue-rows tr[data-queue="default"]', timeout=10_000)
    assert requests.post(f"{server.base_url}/api/queues/mail/pause", timeout=10).ok
    tasks = [
        {"id": f"m{k}", "type": "simulate", "duration_ms": 200, "queue": "mail"} for k in range(6)
    ]
    server.submit_batch(tasks)
    # Paused: the six wait, shown as QUEUED without a reload.
    p.wait_for_selector(
        f'{row}[data-paused="true"] [data-count="QUEUED"]:text-is("6")', timeout=10_000
    )
    assert all(server.task(t["id"])["status"] == "QUEUED" for t in tasks)
    # Every status has its column: a cancelled task of the queue shows too.
    dropped = {"id": "dropped", "type": "simulate", "duration_ms": 1, "queue": "mail"}
    assert requests.post(f"{server.base_url}/api/tasks", json=dropped, timeout=10).ok
    assert requests.post(f"{server.base_url}/api/tasks/dropped/cancel", timeout=10).ok
    p.wait_for_selector(f'{row} [data-count="CANCELLED"]:text-is("1")', timeout=10_000)
    p.fill(f'{row} input[name="concurrency_limit"]', "1")
    p.click(f'{row} button:text-is("Set")')
    poll(
        lambda: server.get("/api/queues/mail").json()["concurrency_limit"] == 1,
        10,
        "the limit to be set",
    )
    p.click(f'{row} button:text-is("Resume")')
    p.wait_for_selector(f'{row}[data-paused="false"]', timeout=10_000)
    most = 0

    def drained() -> bool:
        nonlocal most
        shown = server.get("/api/queues/mail").json()
        most = max(most, shown["running"])
        return shown["counts"]["COMPLETED"] == 6

    poll(drained, 30, "the queue to drain")
    assert most <= 1
    p.wait_for_selector(f'{row} [data-count="COMPLETED"]:text-is("6")', timeout=10_000)
    assert not p.query_selector(f"{row} button.delete")  # it holds tasks
    # An empty queue is deleted in two clicks: the first only asks.
    assert requests.post(f"{server.base_url}/api/queues/typo/pause", timeout=10).ok
    typo = '#queue-rows tr[data-queue="typo"]'
    p.click(f'{typo} button:text-is("Delete")', timeout=10_000)
    p.wait_for_selector(f'{typo} button:text-is("Delete?")', timeout=10_000)
    assert server.get("/api/queues/typo").status_code == 200
    p.click(f'{typo} button:text-is("Delete?")')
    p.wait_for_selector(typo, state="detached", timeout=10_000)
    assert server.get("/api/queues/typo").status_code == 404
    assert not p.query_selector('#queue-rows tr[data-queue="default"] button.delete')
    # A refusal stays shown through the refreshes (each cleared it at once before).
    p.fill(f'{row} input[name="concurrency_limit"]', "0")
    p.click(f'{row} button:text-is("Set")')
    p.wait_for_selector("#queues-error:not([hidden])", timeout=10_000)
    with p.expect_response(lambda r: r.url.endswith("/api/queues"), timeout=10_000):
        pass  # the next refresh
    with p.expect_response(lambda r: r.url.endswith("/api/queues"), timeout=10_000):
        pass  # and the one after, drawn by now
    shown = p.text_content("#queues-error") or ""
    assert "limits are invalid" in shown and p.is_visible("#queues-error"), shown


def test_a_task_page_lists_its_attempts_with_their_tracebacks(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db, TASK_HANDLERS=HANDLERS)
    server.submit("flaky", 1, type="flaky", max_attempts=3, retry_backoff_ms=1)
    p = page
    p.goto(f"{server.base_url}/tasks/flaky")
    # Refreshed with the rest of the page: the third attempt shows up without a reload.
    p.wait_for_selector(
        '#attempt-rows tr[data-attempt="3"][data-outcome="COMPLETED"]', timeout=20_000
    )
    assert server.task("flaky")["status"] == "COMPLETED"
    rows = p.locator("#attempt-rows tr")
    assert rows.count() == 3
    assert [rows.nth(k).get_attribute("data-outcome") for k in range(3)] == [
        "FAILED",
        "FAILED",
        "COMPLETED",
    ]
    for number in (1, 2):
        row = f'#attempt-rows tr[data-attempt="{number}"]'
        assert p.text_content(f"{row} .badge[data-status=FAILED]") == "FAILED"
        assert "handler_error" in p.inner_text(row)
        trace = p.locator(f"{row} details")
        assert trace.locator("summary").inner_text() == "Traceback"
        text = trace.locator("pre").text_content()
        assert text.startswith("Traceback (most recent call last)")
        assert f"ValueError: flaky gave up in attempt {number}" in text
        # Closed until opened.
        assert not trace.locator("pre").is_visible()
        trace.locator("summary").click()
        trace.locator("pre").wait_for(state="visible", timeout=10_000)
    done = '#attempt-rows tr[data-attempt="3"]'
    assert p.locator(f"{done} details").count() == 0
    instance = p.text_content(f"{done} td.instance")
    assert instance and instance != "-"


def test_the_instances_page_lists_the_running_instance(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="3")
    (instance,) = server.get("/api/instances").json()
    p = page
    p.goto(f"{server.base_url}/")
    p.click('nav.sections a:text-is("Instances")')
    p.wait_for_url(f"{server.base_url}/instances")
    row = f'#instance-rows tr[data-instance="{instance["id"]}"]'
    p.wait_for_selector(f'{row}[data-state="running"]', timeout=10_000)
    assert p.locator("#instance-rows tr").count() == 1
    assert p.text_content(f'{row} [data-field="load"]') == "0 / 3"
    assert p.text_content(f'{row} [data-field="host"]') == instance["host"]
    assert p.text_content(f'{row} [data-field="pid"]') == str(instance["pid"])
    assert p.text_content(f'{row} [data-field="lease"]') == f"{instance['lease_s']} s"
    claimed = "all" if instance["types"] is None else ", ".join(instance["types"])
    assert p.text_content(f'{row} [data-field="types"]') == claimed
    # Refreshed every 2 s: a long task takes a slot without a reload.
    server.submit("long", 60_000)
    p.wait_for_selector(f'{row} [data-field="load"]:text-is("1 / 3")', timeout=10_000)
    age = p.text_content(f"{row} [data-age]")
    assert age is not None and age.endswith(" ago)"), age


def test_the_overview_notes_a_status_its_url_names_wrongly_until_the_filter_changes(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db)
    server.submit("shown", 1)
    p = page
    p.goto(f"{server.base_url}/?status=finished")
    p.wait_for_selector('#task-rows a:text-is("shown")', timeout=10_000)  # every status
    assert p.is_visible("#status-note")
    p.select_option("#filter-status", "COMPLETED")
    p.wait_for_url(f"{server.base_url}/?status=COMPLETED")
    assert not p.is_visible("#status-note")


def test_a_task_page_says_when_the_walk_to_its_root_causes_was_cut_short(
    page: Any, launcher: Launcher, db: Path
) -> None:
    """A chain deeper than the walk's 100,000 tasks is too slow to build here; the
    page's rendering of such an answer is what is checked."""
    server = launcher.gunicorn(db)
    server.submit("deep", 10, run_at="2099-01-01T00:00:00Z")
    cut = {
        "id": "deep",
        "status": "QUEUED",
        "blockers": [{"kind": "dependency", "task_id": "above", "status": "QUEUED"}],
        "root_causes": ["found", *(f"r{k:05d}" for k in range(1, 2500))],
        "root_causes_truncated": True,
    }
    p = page
    p.route("**/api/tasks/deep/blockers", lambda route: route.fulfill(json=cut))
    p.goto(f"{server.base_url}/tasks/deep")
    p.wait_for_selector('#root-causes a:text-is("found")', timeout=10_000)
    # A wide graph's thousands of causes: the first hundred as links, the rest counted.
    assert p.locator("#root-causes a").count() == 100
    notes = p.locator("#root-causes li.muted").all_text_contents()
    assert notes == [
        "and 2,400 more",
        "the walk stopped after 100,000 tasks: more may lie below",
    ]
