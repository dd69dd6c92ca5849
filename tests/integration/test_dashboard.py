"""The dashboard: its pages, its static files, and its two JSON reads."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from app.http.dashboard import MAX_GRAPH_NODES
from app.storage import database
from app.storage.tables import tasks
from tests.support.apps import AppFactory
from tests.support.client import assert_error, submit

ASSET = re.compile(r'(?:src|href)="(/static/dashboard/[^"]+)"')
URL = re.compile(r"https?://[^\s\"'<>)]+")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def page(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    text: str = response.get_data(as_text=True)
    return text


def assets(html: str) -> list[str]:
    return ASSET.findall(html)


def set_status(client: FlaskClient, status: str, *ids: str) -> None:
    engine = client.application.extensions["store"].engine
    with database.write(engine) as conn:
        conn.execute(update(tasks).where(tasks.c.id.in_(ids)).values(status=status))


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
    assert URL.findall(html) == []


def test_a_task_page_escapes_the_id_from_the_url(client: FlaskClient) -> None:
    html = page(client, "/tasks/%3Cimg%20src%3Dx%20onerror%3D%22alert(1)%22%3E")
    assert "<img" not in html
    assert 'data-task-id="&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"' in html


def test_the_static_files_are_served_and_fetch_nothing_remote(client: FlaskClient) -> None:
    names = set(assets(page(client, "/")) + assets(page(client, "/tasks/x")))
    assert len(names) == 5
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
