"""The batch page in headless Chromium against a real server: a whole run's graph, coloured
live from the event stream (read once, never reloaded nor polled while the stream is open),
with its counts, critical path and timeline; pan, zoom and a click through to a task.

The server imports this module for its handlers (`register`): `spawn` adds the tasks its
payload names, in the queue it names, as a handler fanning out does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from app.handlers import Registry, TaskContext
from tests.support.servers import Launcher, Server
from tests.system.test_browser import SCREENSHOTS

HANDLERS = "tests.system.test_batch_browser"
CHAINS = 100
DEPTH = 5
NODES = "#batch-graph .node"


def spawn(ctx: TaskContext) -> None:
    """Add the tasks `payload.add` names, each in the queue `payload.queue`."""
    queue = ctx.payload["queue"]
    ctx.add_tasks(
        {
            "id": task_id,
            "type": "simulate",
            "duration_ms": 5,
            "queue": queue,
            "dependencies": [ctx.id],
        }
        for task_id in ctx.payload["add"]
    )


def register(registry: Registry) -> None:
    """Register `spawn` in the server that imports this module."""
    registry.register("spawn", spawn)


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
    assert f"batch_id={batch['batch_id']}" in streams[0]
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
    page.mouse.wheel(0, 400)  # the wheel alone scrolls the page
    assert transform() == zoomed
    page.keyboard.down("Control")
    page.mouse.wheel(0, 400)  # with Ctrl it zooms out at the pointer
    page.keyboard.up("Control")
    assert transform() != zoomed
    box = page.locator("#batch-graph").bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + 105, box["y"] + 45, steps=5)
    page.mouse.up()
    dragged = transform()
    page.click("#zoom-fit")
    assert transform() == fitted != dragged
    # A drag that starts on a node pans, released even outside the graph, and the next
    # click on a node still opens it.
    first = page.locator(f'{NODES}[data-task-id="first"]').bounding_box()
    page.mouse.move(first["x"] + 10, first["y"] + 5)
    page.mouse.down()
    page.mouse.move(first["x"] + 10, 5, steps=5)  # up over the page's header
    page.mouse.up()
    assert page.url.endswith(f"/batches/{batch['batch_id']}")
    page.click("#zoom-fit")
    # A node is a link: a middle or Ctrl click opens it in a new tab, Tab reaches it.
    assert page.get_attribute(f'{NODES}[data-task-id="second"]', "href") == "/tasks/second"
    page.click(f'{NODES}[data-task-id="second"]')
    page.wait_for_url(f"{server.base_url}/tasks/second")
    page.wait_for_selector("#batch-link")
    assert page.get_attribute("#batch-link", "href") == f"/batches/{batch['batch_id']}"


def test_an_unknown_batch_says_so(page: Any, launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db)
    page.goto(f"{server.base_url}/batches/no-such-batch")
    page.wait_for_selector("#batch-missing", state="visible")
    assert page.is_hidden("#batch-found")


def test_changes_heard_while_the_page_reads_the_batch_again_are_kept(
    page: Any, launcher: Launcher, db: Path
) -> None:
    """A task added by a handler makes the page read the batch again. Changes the stream
    brings while that read is under way are newer than its answer: the page applies them
    to the answer too, or those tasks would keep their older status for good."""
    server = launcher.gunicorn(db, TASK_HANDLERS=HANDLERS)
    for queue in ("a", "b", "children", "later"):
        paused_queue(server, queue)
    children = [f"child-{n}" for n in range(5)]
    batch = server.submit_batch(
        [
            spawn_task("spawn-a", "a", children, "children"),
            spawn_task("spawn-b", "b", ["late"], "later"),
        ]
    )
    held: list[Any] = []
    hold = {"next": False}

    def reads(route: Any) -> None:
        if hold["next"]:
            hold["next"] = False
            held.append((route, route.fetch()))  # the server's answer, now; given later
        else:
            route.continue_()

    page.route("**/dashboard/batches/**", reads)
    page.goto(f"{server.base_url}/batches/{batch['batch_id']}")
    page.wait_for_function("Dash.streaming()", timeout=10_000)
    resume(server, "a")  # spawn-a adds the children: the page reads the batch again
    for child in children:
        page.wait_for_selector(f'{NODES}[data-task-id="{child}"][data-status="QUEUED"]')
    hold["next"] = True
    resume(server, "b")  # spawn-b adds "late": the next read is held with its answer
    deadline = time.monotonic() + 20
    while not held:
        assert time.monotonic() < deadline, "the page never read the batch again"
        page.wait_for_timeout(20)  # lets Playwright serve the route meanwhile
    resume(server, "children")  # they run while the read is under way
    for child in children:
        page.wait_for_selector(f'{NODES}[data-task-id="{child}"][data-status="COMPLETED"]')
    route, answer = held[0]
    route.fulfill(response=answer)  # older than the changes the page has heard
    page.wait_for_selector(f'{NODES}[data-task-id="late"]')
    page.wait_for_function(
        "(ids) => ids.every((id) => document.querySelector("
        "'#batch-graph .node[data-task-id=\"' + id + '\"]')"
        ".getAttribute('data-status') === 'COMPLETED')",
        arg=children,
        timeout=10_000,
    )
    assert page.text_content('[data-count-for="COMPLETED"]') == str(len(children) + 2)


def spawn_task(task_id: str, queue: str, add: list[str], into: str) -> dict[str, Any]:
    """A `spawn` task in `queue` that adds the tasks `add` into the queue `into`."""
    payload = {"add": add, "queue": into}
    return {"id": task_id, "type": "spawn", "duration_ms": 1, "queue": queue, "payload": payload}


def resume(server: Server, queue: str) -> None:
    assert requests.post(f"{server.base_url}/api/queues/{queue}/resume", timeout=10).ok


def test_a_read_that_failed_while_the_stream_is_open_is_tried_again(
    page: Any, launcher: Launcher, db: Path
) -> None:
    """The page reads the batch again when a handler adds tasks; if those reads fail until
    the run has ended, no later event would make it read again: it must retry by itself,
    or it shows the batch without the added tasks for good."""
    server = launcher.gunicorn(db, TASK_HANDLERS=HANDLERS)
    for queue in ("a", "children"):
        paused_queue(server, queue)
    children = [f"child-{n}" for n in range(3)]
    batch = server.submit_batch([spawn_task("spawn-a", "a", children, "children")])
    failing = {"on": False}
    refused: list[float] = []

    def reads(route: Any) -> None:
        if failing["on"]:
            refused.append(time.monotonic())
            route.fulfill(status=503, json={"error": "Busy.", "code": "database_busy"})
        else:
            route.continue_()

    page.route("**/dashboard/batches/**", reads)
    page.goto(f"{server.base_url}/batches/{batch['batch_id']}")
    page.wait_for_function("Dash.streaming()", timeout=10_000)
    failing["on"] = True
    resume(server, "a")
    resume(server, "children")
    server.wait_status("spawn-a", "COMPLETED")  # its children exist from then on
    for child in children:
        server.wait_status(child, "COMPLETED")
    ended = time.monotonic()
    # Until a read made after every event reached the page has failed too.
    deadline = ended + 20
    while not (refused and refused[-1] > ended + 1.5):
        assert time.monotonic() < deadline, "the page stopped reading the batch"
        page.wait_for_timeout(50)
    failing["on"] = False
    for child in children:
        page.wait_for_selector(
            f'{NODES}[data-task-id="{child}"][data-status="COMPLETED"]', timeout=15_000
        )
    page.wait_for_selector("#batch-error", state="hidden")
