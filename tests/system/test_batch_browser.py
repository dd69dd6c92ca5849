"""The batch page in headless Chromium against a real server: a whole run's graph, coloured
live from the event stream (read once, never reloaded nor polled while the stream is open),
with its counts, critical path and timeline; pan, zoom and a click through to a task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.support.servers import Launcher, Server
from tests.system.test_browser import SCREENSHOTS

CHAINS = 100
DEPTH = 5
NODES = "#batch-graph g.node"


def chains(queue: str, duration_ms: int = 5) -> list[dict[str, Any]]:
    """CHAINS chains of DEPTH tasks, each depending on the one before it."""
    tasks = []
    for chain in range(CHAINS):
        for step in range(DEPTH):
            task: dict[str, Any] = {
                "id": f"c{chain}-s{step}",
                "type": "etl",
                "duration_ms": duration_ms,
                "queue": queue,
            }
            if step:
                task["dependencies"] = [f"c{chain}-s{step - 1}"]
            tasks.append(task)
    return tasks


def paused_queue(server: Server, name: str) -> None:
    """Create the queue `name` and pause it: its tasks wait until it is resumed."""
    assert requests.put(f"{server.base_url}/api/queues/{name}", json={}, timeout=10).ok
    assert requests.post(f"{server.base_url}/api/queues/{name}/pause", timeout=10).ok


def every_node_shows(status: str) -> str:
    """A page expression: every task of the batch is drawn with `status`."""
    shown = f"document.querySelectorAll('{NODES}[data-status=\"{status}\"]').length"
    return f"{shown} === {CHAINS * DEPTH}"


def test_a_500_task_batch_turns_green_from_the_stream_without_reloading_or_polling(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="8")
    paused_queue(server, "held")
    batch = server.submit_batch(chains("held"))
    reads: list[str] = []
    streams: list[str] = []
    elsewhere: list[str] = []

    def seen(request: Any) -> None:
        url = request.url
        if not url.startswith(server.base_url):
            elsewhere.append(url)
        elif "/dashboard/batches/" in url or "/api/batches/" in url:
            reads.append(url)
        elif "/api/events" in url:
            streams.append(url)

    page.on("request", seen)
    page.goto(f"{server.base_url}/batches/{batch['batch_id']}")
    page.wait_for_function(
        every_node_shows("QUEUED"),
        timeout=20_000,
    )
    page.wait_for_function("Dash.streaming()", timeout=10_000)
    assert page.text_content("#batch-state") == "queued"
    assert page.text_content('[data-count-for="QUEUED"]') == str(CHAINS * DEPTH)
    # The page is the same document from here on: a reload would lose these.
    page.evaluate(
        """() => {
            window.sameDocument = true;
            window.sawRunning = 0;
            new MutationObserver((changes) => {
                changes.forEach((c) => {
                    if (c.target.getAttribute('data-status') === 'RUNNING') {
                        window.sawRunning += 1;
                    }
                });
            }).observe(document.getElementById('batch-graph'),
                       {subtree: true, attributes: true, attributeFilter: ['data-status']});
        }"""
    )

    assert requests.post(f"{server.base_url}/api/queues/held/resume", timeout=10).ok
    page.wait_for_function(
        every_node_shows("COMPLETED"),
        timeout=60_000,
    )
    page.wait_for_selector('#batch-state[data-state="completed"]', timeout=10_000)
    assert page.evaluate("window.sameDocument") is True
    assert page.evaluate("window.sawRunning") > 0  # it went through RUNNING, live
    assert len(reads) == 1, reads  # read once: every change came from the stream
    assert len(streams) == 1, streams  # one stream, filtered to the batch, never reopened
    assert f"batch={batch['batch_id']}" in streams[0]
    assert elsewhere == []  # offline: nothing from another origin
    assert page.text_content('[data-count-for="COMPLETED"]') == str(CHAINS * DEPTH)
    assert page.text_content('[data-count-for="QUEUED"]') == "0"
    # The timeline and critical path follow within a moment: one bar per attempt.
    page.wait_for_function(
        f"document.querySelectorAll('#timeline rect.bar').length === {CHAINS * DEPTH}",
        timeout=10_000,
    )
    # The critical path is one whole chain, first step to last.
    path = page.eval_on_selector_all(
        "#critical-path li", "items => items.map(i => i.dataset.taskId)"
    )
    assert len(path) == DEPTH
    assert [p.split("-")[1] for p in path] == [f"s{step}" for step in range(DEPTH)]
    assert len({p.split("-")[0] for p in path}) == 1
    outcomes = page.eval_on_selector_all(
        "#timeline rect.bar", "bars => bars.map(b => b.dataset.outcome)"
    )
    assert set(outcomes) == {"COMPLETED"}  # one attempt each, drawn from the events
    if SCREENSHOTS is not None:
        page.screenshot(path=str(SCREENSHOTS / "dashboard-batch.png"), full_page=True)


def test_the_batch_graph_pans_zooms_and_opens_a_task(
    page: Any, launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db)
    batch = server.submit_batch(
        [
            {"id": "first", "type": "etl", "duration_ms": 10},
            {"id": "second", "type": "etl", "duration_ms": 10, "dependencies": ["first"]},
            {"id": "broken", "type": "etl", "duration_ms": 10, "payload": {"fail": True}},
        ]
    )
    server.wait_status("second", "COMPLETED")
    server.wait_status("broken", "FAILED")
    page.goto(f"{server.base_url}/batches/{batch['batch_id']}")
    page.wait_for_selector(f'{NODES}[data-task-id="second"][data-status="COMPLETED"]')
    page.wait_for_selector('#batch-state[data-state="failed"]')
    assert page.text_content('[data-count-for="FAILED"]') == "1"

    def transform() -> str:
        found: str = page.get_attribute("#batch-graph g.scene", "transform")
        return found

    fitted = transform()
    page.click("#zoom-in")
    zoomed = transform()
    assert zoomed != fitted
    page.hover("#batch-graph")
    page.mouse.wheel(0, 400)  # zoom out at the pointer
    assert transform() != zoomed
    box = page.locator("#batch-graph").bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + 105, box["y"] + 45, steps=5)
    page.mouse.up()
    dragged = transform()
    page.click("#zoom-fit")
    assert transform() == fitted != dragged
    page.click(f'{NODES}[data-task-id="second"]')
    page.wait_for_url(f"{server.base_url}/tasks/second")
    page.wait_for_selector("#batch-link")
    assert page.get_attribute("#batch-link", "href") == f"/batches/{batch['batch_id']}"


def test_an_unknown_batch_says_so(page: Any, launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db)
    page.goto(f"{server.base_url}/batches/no-such-batch")
    page.wait_for_selector("#batch-missing", state="visible")
    assert page.is_hidden("#batch-found")
