"""The dashboard: its pages, its static files, and its JSON reads."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, update

from app import parts
from app.handlers import TaskContext
from app.http.dashboard import MAX_GRAPH_NODES
from app.services import batches
from app.statuses import Status
from app.storage import database
from app.storage.tables import tasks
from tests.support.apps import AppFactory
from tests.support.client import assert_error, running_app, submit, wait_terminal

ASSET = re.compile(r'(?:src|href)="(/static/dashboard/[^"]+)"')
URL = re.compile(r"https?://[^\s\"'<>)]+")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
# The pages of the navigation beyond the overview: (path, its script, its table body, its link).
SECTIONS = [
    ("/schedules", "schedules.js", "schedule-rows", "Schedules"),
    ("/queues", "queues.js", "queue-rows", "Queues"),
    ("/instances", "instances.js", "instance-rows", "Instances"),
]


def page(client: FlaskClient, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    text: str = response.get_data(as_text=True)
    return text


def assets(html: str) -> list[str]:
    return ASSET.findall(html)


def set_status(client: FlaskClient, status: str, *ids: str) -> None:
    engine = client.application.extensions["store"].engine
    with database.write(engine) as conn:
        conn.execute(update(tasks).where(tasks.c.id.in_(ids)).values(status=status))


class Elements(HTMLParser):
    """The attributes of every element that has an id, and whether it is hidden."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.by_id[str(found["id"])] = {"tag": tag, **found}

    def shown(self, element_id: str) -> bool:
        return element_id in self.by_id and "hidden" not in self.by_id[element_id]


def shown_buttons(client: FlaskClient, task_id: str) -> set[str]:
    elements = Elements(page(client, f"/tasks/{task_id}"))
    return {b for b in ("cancel", "retry") if elements.shown(b)}


def graph(client: FlaskClient, task_id: str) -> dict[str, Any]:
    response = client.get(f"/dashboard/graph/{task_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_the_overview_page_uses_only_local_files(client: FlaskClient) -> None:
    html = page(client, "/")
    found = assets(html)
    assert "/static/dashboard/dashboard.css" in found
    assert "/static/dashboard/common.js" in found
    assert "/static/dashboard/index.js" in found
    assert URL.findall(html) == []
    for status in ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"):
        assert f'data-count-for="{status}"' in html


def test_a_task_page_uses_only_local_files_and_names_the_task(client: FlaskClient) -> None:
    submit(client, "task-A")
    html = page(client, "/tasks/task-A")
    found = assets(html)
    for name in ("dashboard.css", "common.js", "graph.js", "task.js"):
        assert f"/static/dashboard/{name}" in found
    assert 'data-task-id="task-A"' in html
    assert Elements(html).by_id["attempt-rows"]["tag"] == "tbody"  # its script fills it
    assert URL.findall(html) == []


def test_a_task_page_escapes_the_id_from_the_url(client: FlaskClient) -> None:
    html = page(client, "/tasks/%3Cimg%20src%3Dx%20onerror%3D%22alert(1)%22%3E", 404)
    assert "<img" not in html
    assert "No task with id <code>&lt;img src=x onerror=&#34;alert(1)&#34;&gt;</code>" in html


def test_an_unknown_task_is_a_404_page_with_a_way_back_and_no_buttons(
    client: FlaskClient,
) -> None:
    html = page(client, "/tasks/ghost", 404)
    assert "No task with id <code>ghost</code>." in html
    elements = Elements(html)
    assert elements.by_id["task-missing"]["tag"] == "p"
    assert 'href="/"' in html
    assert "cancel" not in elements.by_id and "retry" not in elements.by_id
    assert "/static/dashboard/task.js" not in assets(html)


def test_a_task_page_shows_a_long_impossible_id_cut_short(client: FlaskClient) -> None:
    html = page(client, "/tasks/" + "a" * 10_000, 404)
    assert "No task with id <code>" + "a" * 40 + "...</code>" in html
    assert "a" * 41 not in html.split("<main", 1)[1]


@pytest.mark.parametrize(
    ("status", "buttons"),
    [
        ("QUEUED", {"cancel"}),
        ("RUNNING", {"cancel"}),
        ("COMPLETED", set()),
        ("FAILED", {"retry"}),
        ("UPSTREAM_FAILED", {"retry"}),
        ("CANCELLED", {"retry"}),
    ],
)
def test_a_task_page_shows_the_buttons_its_status_allows(
    client: FlaskClient, status: str, buttons: set[str]
) -> None:
    submit(client, "t")
    set_status(client, status, "t")
    assert shown_buttons(client, "t") == buttons
    html = page(client, "/tasks/t")
    assert f'<span id="task-status" class="badge" data-status="{status}">{status}</span>' in html


def test_a_task_held_back_by_a_failure_points_to_the_task_to_retry(client: FlaskClient) -> None:
    submit(client, "root")
    set_status(client, "FAILED", "root")
    submit(client, "child", "root")  # born UPSTREAM_FAILED behind the failure
    assert client.get("/api/tasks/child").get_json()["status"] == "UPSTREAM_FAILED"
    assert shown_buttons(client, "child") == set()
    elements = Elements(page(client, "/tasks/child"))
    assert elements.shown("retry-instead")
    assert elements.by_id["retry-instead-link"]["href"] == "/tasks/root"


def test_the_actions_read_agrees_with_what_cancel_and_retry_do(client: FlaskClient) -> None:
    for status in Status:
        for action in ("cancel", "retry"):
            task_id = f"{status.value.lower()}-{action}"
            submit(client, task_id)
            set_status(client, status.value, task_id)
            said = client.get(f"/dashboard/actions/{task_id}").get_json()
            assert said["status"] == status.value
            done = client.post(f"/api/tasks/{task_id}/{action}")
            assert done.status_code == (200 if said[action] else 409), (status, action)


def test_the_actions_read_of_an_unknown_task_is_a_404(client: FlaskClient) -> None:
    body = assert_error(client.get("/dashboard/actions/nope"), 404, "not_found")
    assert body["details"] == {"id": "nope"}


def test_a_task_page_links_its_batch_page_and_the_filtered_list(client: FlaskClient) -> None:
    one = {"id": "in-batch", "type": "simulate", "duration_ms": 1}
    answer = client.post("/api/tasks/batch", json={"tasks": [one]}).get_json()
    elements = Elements(page(client, "/tasks/in-batch"))
    assert elements.shown("task-batch")
    assert elements.by_id["batch-link"]["href"] == f"/batches/{answer['batch_id']}"
    assert elements.by_id["batch-list-link"]["href"] == f"/?batch_id={answer['batch_id']}"
    submit(client, "alone")
    alone = page(client, "/tasks/alone")
    assert not Elements(alone).shown("task-batch")
    assert ">None<" not in alone  # the hidden links hold no Python None


def test_the_overview_starts_with_the_filters_of_its_url(client: FlaskClient) -> None:
    elements = Elements(page(client, "/?batch_id=abc123&status=failed&type=etl"))
    assert elements.by_id["filter-batch"]["value"] == "abc123"
    assert elements.by_id["filter-type"]["value"] == "etl"
    html = page(client, "/?status=failed")
    assert '<option value="FAILED" selected>' in html
    assert html.count(" selected>") == 1
    assert Elements(page(client, "/")).by_id["filter-batch"]["value"] == ""
    assert not Elements(html).shown("status-note")


def test_the_overview_says_when_its_url_names_no_status(client: FlaskClient) -> None:
    html = page(client, "/?status=finished")
    assert " selected>" not in html  # the list shows every status, as "any" says
    assert Elements(html).shown("status-note")
    assert "No status is called &ldquo;FINISHED&rdquo;: the list" in " ".join(html.split())
    long = page(client, "/?status=" + "x" * 500)
    assert "X" * 31 + "\u2026&rdquo;" in long and "X" * 32 not in long  # said back short
    for odd in ("%E2%80%AEdeliaf", "fail%00ed", "%C3%9F"):  # bidi override, NUL, non-ASCII
        html = page(client, "/?status=" + odd)
        assert Elements(html).shown("status-note")
        assert "The address names no status: the list" in " ".join(html.split())
    assert not Elements(page(client, "/?status=%20failed%20")).shown("status-note")


def test_the_overview_filters_by_several_statuses_as_the_api_does(client: FlaskClient) -> None:
    html = page(client, "/?status=failed,%20cancelled,failed")
    assert '<option value="FAILED,CANCELLED" selected>FAILED, CANCELLED</option>' in html
    assert html.count(" selected>") == 1 and not Elements(html).shown("status-note")
    for same in ("/?status=FAILED,failed", "/?status=failed,", "/?status=,%20failed"):
        once = page(client, same)  # as the API reads it: FAILED alone
        assert '<option value="FAILED" selected>' in once, same
        assert not Elements(once).shown("status-note"), same
    odd = page(client, "/?status=failed,done")  # one unknown: said, and every status shown
    assert " selected>" not in odd
    assert "No status is called &ldquo;FAILED,DONE&rdquo;" in " ".join(odd.split())


def test_with_a_token_set_a_task_page_tells_nothing_without_it(make_app: AppFactory) -> None:
    client = make_app(API_TOKEN="dashboard-test-token-1").test_client()
    token = {"Authorization": "Bearer dashboard-test-token-1"}
    one = {"id": "t", "type": "simulate", "duration_ms": 1}
    assert client.post("/api/tasks/batch", json={"tasks": [one]}, headers=token).status_code == 201
    # Without the token, known and unknown ids get the same page, which its script fills in.
    for task_id in ("t", "ghost"):
        elements = Elements(page(client, f"/tasks/{task_id}"))
        assert elements.by_id["task-status"]["data-status"] == ""
        assert not elements.shown("task-batch")
        assert not elements.shown("cancel") and not elements.shown("retry")
    assert client.get("/tasks/ghost", headers=token).status_code == 404
    known = client.get("/tasks/t", headers=token)
    assert known.status_code == 200
    assert Elements(known.get_data(as_text=True)).shown("cancel")


def test_the_static_files_are_served_and_fetch_nothing_remote(client: FlaskClient) -> None:
    submit(client, "x")
    batch_id = submit_batch(client, [{"id": "y", "type": "simulate", "duration_ms": 1}])
    paths = ["/", "/tasks/x", f"/batches/{batch_id}", *(path for path, *_ in SECTIONS)]
    names = {name for path in paths for name in assets(page(client, path))}
    assert len(names) == 6 + len(SECTIONS)
    for path in names:
        response = client.get(path)
        assert response.status_code == 200, path
        kind = "text/css" if path.endswith(".css") else "text/javascript"
        assert response.mimetype == kind
        text = response.get_data(as_text=True)
        assert [u for u in URL.findall(text) if u != SVG_NAMESPACE] == [], path
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, path
        response.close()


def test_the_counts_match_the_database(make_app: AppFactory) -> None:
    client = make_app().test_client()
    for name in ("a", "b", "c", "d", "e", "f"):
        submit(client, name)
    set_status(client, "COMPLETED", "a", "b")
    set_status(client, "FAILED", "c")
    assert client.post("/api/tasks/d/cancel").status_code == 200
    response = client.get("/dashboard/counts")
    assert response.status_code == 200
    assert response.get_json() == {
        "QUEUED": 2,
        "RUNNING": 0,
        "COMPLETED": 2,
        "FAILED": 1,
        "UPSTREAM_FAILED": 0,
        "CANCELLED": 1,
    }
    engine = client.application.extensions["store"].engine
    with database.read(engine) as conn:
        rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
        stored = {status: count for status, count in rows}
    assert {k: v for k, v in response.get_json().items() if v} == stored


def test_the_counts_of_an_empty_database_are_zeros(client: FlaskClient) -> None:
    assert set(client.get("/dashboard/counts").get_json().values()) == {0}


def test_the_graph_reaches_two_levels_each_way(make_app: AppFactory) -> None:
    client = make_app().test_client()
    submit(client, "up3")
    submit(client, "up2", "up3")
    submit(client, "up1", "up2")
    submit(client, "up1b")
    submit(client, "t", "up1", "up1b", type="focus")
    submit(client, "sibling", "up1")
    submit(client, "down1", "t")
    submit(client, "side")
    submit(client, "down2", "down1", "side")
    submit(client, "down3", "down2")
    set_status(client, "COMPLETED", "up2", "up3")
    set_status(client, "RUNNING", "up1")
    body = graph(client, "t")
    nodes = {n["id"]: n for n in body["nodes"]}
    assert body["nodes"][0]["id"] == "t"
    assert set(nodes) == {"t", "up1", "up1b", "up2", "down1", "down2"}
    assert nodes["t"] == {"id": "t", "status": "QUEUED", "type": "focus"}
    assert nodes["up2"]["status"] == "COMPLETED"
    assert nodes["up1"]["status"] == "RUNNING"
    assert nodes["down2"]["type"] == "simulate"
    assert sorted(map(tuple, body["edges"])) == [
        ("down1", "down2"),
        ("t", "down1"),
        ("up1", "t"),
        ("up1b", "t"),
        ("up2", "up1"),
    ]
    assert body["truncated"] is False


def test_the_graph_of_a_lone_task_is_the_task(client: FlaskClient) -> None:
    submit(client, "alone")
    assert graph(client, "alone") == {
        "nodes": [{"id": "alone", "status": "QUEUED", "type": "simulate"}],
        "edges": [],
        "truncated": False,
    }


def test_the_graph_stops_at_the_node_limit(client: FlaskClient) -> None:
    submit(client, "hub")
    fan = [
        {"id": f"leaf-{i:03d}", "type": "simulate", "duration_ms": 1, "dependencies": ["hub"]}
        for i in range(MAX_GRAPH_NODES + 20)
    ]
    assert client.post("/api/tasks/batch", json={"tasks": fan}).status_code == 201
    body = graph(client, "hub")
    assert len(body["nodes"]) == MAX_GRAPH_NODES
    assert body["nodes"][0]["id"] == "hub"
    assert body["truncated"] is True
    assert len(body["edges"]) == MAX_GRAPH_NODES - 1


def test_the_graph_of_an_unknown_task_is_a_404(client: FlaskClient) -> None:
    body = assert_error(client.get("/dashboard/graph/nope"), 404, "not_found")
    assert body["details"] == {"id": "nope"}


@pytest.mark.parametrize(("path", "script", "rows", "link"), SECTIONS)
def test_a_section_page_uses_only_local_files_and_is_linked(
    client: FlaskClient, path: str, script: str, rows: str, link: str
) -> None:
    html = page(client, path)
    found = assets(html)
    for name in ("dashboard.css", "common.js", script):
        assert f"/static/dashboard/{name}" in found
    assert Elements(html).by_id[rows]["tag"] == "tbody"
    assert URL.findall(html) == []
    # Every page's navigation links every section.
    for shown in ("/", path, *(other for other, *_ in SECTIONS)):
        assert f'<a href="{path}">{link}</a>' in page(client, shown), shown


@pytest.mark.parametrize(("path", "script"), [(path, script) for path, script, *_ in SECTIONS])
def test_with_a_token_set_a_section_page_is_open_and_its_data_is_not(
    make_app: AppFactory, path: str, script: str
) -> None:
    client = make_app(API_TOKEN="dashboard-test-token-1").test_client()
    html = page(client, path)
    assert f"/static/dashboard/{script}" in assets(html)
    assert Elements(html).by_id["token-form"]["tag"] == "form"  # where its script asks
    data = "/api" + path
    assert client.get(data).status_code == 401
    token = {"Authorization": "Bearer dashboard-test-token-1"}
    assert client.get(data, headers=token).status_code == 200


# -- the batch page -----------------------------------------------------------------------


def batch_view(client: FlaskClient, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/dashboard/batches/{batch_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def submit_batch(client: FlaskClient, tasks_: list[dict[str, Any]]) -> str:
    response = client.post("/api/tasks/batch", json={"tasks": tasks_})
    assert response.status_code == 201, response.get_data(as_text=True)
    batch_id: str = response.get_json()["batch_id"]
    return batch_id


def test_a_batch_page_uses_only_local_files_and_names_the_batch(client: FlaskClient) -> None:
    batch_id = submit_batch(client, [{"id": "y", "type": "simulate", "duration_ms": 1}])
    html = page(client, f"/batches/{batch_id}")
    found = assets(html)
    for name in ("dashboard.css", "common.js", "graph.js", "batch.js"):
        assert f"/static/dashboard/{name}" in found
    assert f'data-batch-id="{batch_id}"' in html
    assert not Elements(html).shown("batch-missing")
    assert URL.findall(html) == []


def test_an_unknown_batch_is_a_404_page_that_says_so(client: FlaskClient) -> None:
    elements = Elements(page(client, "/batches/nope", 404))
    assert elements.shown("batch-missing")
    escaped = page(client, "/batches/%3Cscript%3E", 404)  # not a batch id at all
    assert "<script>" not in escaped.replace('<script src="', "")


def test_the_batch_view_holds_every_task_its_edges_attempts_and_counts(
    make_app: AppFactory,
) -> None:
    client = make_app().test_client()
    submit(client, "outside")
    batch_id = submit_batch(
        client,
        [
            {"id": "a", "type": "simulate", "duration_ms": 1},
            {"id": "b", "type": "simulate", "duration_ms": 1, "dependencies": ["a"]},
            {"id": "c", "type": "other", "duration_ms": 1, "dependencies": ["a", "outside"]},
        ],
    )
    engine = client.application.extensions["store"].engine
    set_status(client, "COMPLETED", "a")
    body = batch_view(client, batch_id)
    assert [t["id"] for t in body["tasks"]] == ["a", "b", "c"]  # submission order
    assert body["tasks"][0] == {
        "id": "a",
        "type": "simulate",
        "status": "COMPLETED",
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
    }
    assert body["tasks"][2]["type"] == "other"
    assert sorted(map(tuple, body["edges"])) == [("a", "b"), ("a", "c")]  # within the batch
    assert body["batch"]["batch_id"] == batch_id
    assert body["batch"]["counts"]["QUEUED"] == 2
    assert body["batch"]["counts"]["COMPLETED"] == 1
    assert body["attempts"] == []
    assert body["truncated"] is False
    assert body["limit"] == batches.MAX_VIEW_TASKS
    with database.read(engine) as conn:
        newest = conn.exec_driver_sql("SELECT max(seq) FROM task_events").scalar()
    assert body["events_after"] == newest  # a stream resuming after it misses nothing


def test_the_batch_view_reads_its_counts_and_tasks_in_one_snapshot(
    make_app: AppFactory,
) -> None:
    """A task that changes between the view's statements is counted as it is listed: the
    page counts nothing twice and nothing it does not colour. (Read at READ COMMITTED,
    PostgreSQL counted the task QUEUED and listed it COMPLETED.)"""
    client = make_app().test_client()
    batch_id = submit_batch(
        client, [{"id": t, "type": "simulate", "duration_ms": 1} for t in ("a", "b")]
    )
    engine = client.application.extensions["store"].engine
    changed: list[bool] = []

    def change_between(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Before the statement listing the tasks, after the one counting them.
        if "ORDER BY tasks.seq" in statement and not changed:
            changed.append(True)
            with database.write(engine) as other:
                other.execute(update(tasks).where(tasks.c.id == "a").values(status="COMPLETED"))

    event.listen(engine, "before_cursor_execute", change_between)
    try:
        body = batch_view(client, batch_id)
    finally:
        event.remove(engine, "before_cursor_execute", change_between)
    assert changed
    listed = {t["id"]: t["status"] for t in body["tasks"]}
    tally = {status: list(listed.values()).count(status) for status in set(listed.values())}
    assert {k: v for k, v in body["batch"]["counts"].items() if v} == tally
    assert listed == {"a": "QUEUED", "b": "QUEUED"}  # as the snapshot held them


def test_the_batch_view_lists_the_attempts_that_ended(make_app: AppFactory) -> None:
    calls = {"n": 0}

    def flaky(ctx: TaskContext) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("first time")

    app = running_app(make_app, {"flaky": flaky})
    client = app.test_client()
    one = {"id": "x", "type": "flaky", "duration_ms": 1, "max_attempts": 2, "retry_backoff_ms": 1}
    batch_id = submit_batch(client, [one])
    assert wait_terminal(client, "x")["x"]["status"] == "COMPLETED"
    body = batch_view(client, batch_id)
    assert [(a["task_id"], a["attempt"], a["outcome"]) for a in body["attempts"]] == [
        ("x", 1, "FAILED"),
        ("x", 2, "COMPLETED"),
    ]
    first, second = body["attempts"]
    assert first["instance"] == parts.scheduler(app).id
    assert first["started_at"] <= first["finished_at"] <= second["started_at"]
    assert body["tasks"][0]["started_at"] == second["started_at"]  # the last attempt's


def test_the_batch_view_stops_at_its_limit(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "MAX_VIEW_TASKS", 3)
    batch_id = submit_batch(
        client, [{"id": f"t{i}", "type": "simulate", "duration_ms": 1} for i in range(5)]
    )
    body = batch_view(client, batch_id)
    assert [t["id"] for t in body["tasks"]] == ["t0", "t1", "t2"]
    assert body["truncated"] is True
    assert body["limit"] == 3
    assert body["batch"]["total"] == 5  # the counts are of the whole batch


def test_the_batch_view_of_an_unknown_or_impossible_batch_is_an_error(
    client: FlaskClient,
) -> None:
    body = assert_error(client.get("/dashboard/batches/nope"), 404, "not_found")
    assert body["details"] == {"batch_id": "nope"}
    assert_error(client.get("/dashboard/batches/" + "x" * 65), 400, "invalid_parameter")


def test_with_a_token_set_the_batch_page_is_open_and_its_data_is_not(
    make_app: AppFactory,
) -> None:
    client = make_app(API_TOKEN="dashboard-test-token-1").test_client()
    token = {"Authorization": "Bearer dashboard-test-token-1"}
    one = {"id": "t", "type": "simulate", "duration_ms": 1}
    answer = client.post("/api/tasks/batch", json={"tasks": [one]}, headers=token)
    batch_id = answer.get_json()["batch_id"]
    html = page(client, f"/batches/{batch_id}")
    assert Elements(html).by_id["token-form"]["tag"] == "form"
    assert not Elements(page(client, "/batches/nope")).shown("batch-missing")  # tells nothing
    assert client.get(f"/dashboard/batches/{batch_id}").status_code == 401
    assert client.get(f"/dashboard/batches/{batch_id}", headers=token).status_code == 200
