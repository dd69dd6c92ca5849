"""Reading tasks, listing them a page at a time, health, and the errors every route shares."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from app.runtime.scheduler import Scheduler
from app.services import reads
from app.storage.tables import tasks
from tests.support.apps import AppFactory
from tests.support.client import ORIGINAL_FIELDS, assert_error

NEXT_LINK = re.compile(r'^<([^>]+)>; rel="next"$')


def submit(client: FlaskClient, task_id: str, task_type: str = "simulate", **fields: Any) -> None:
    """Create a task; fail the test unless it was created."""
    body = {"id": task_id, "type": task_type, "duration_ms": 10, **fields}
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 201, response.get_json()


def set_columns(app: Flask, task_id: str, **values: Any) -> None:
    """Change a task's row behind the API's back, as a finished run would."""
    with app.extensions["store"].engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def ids(response: TestResponse) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()]


# -- one task ------------------------------------------------------------------------


def test_get_task_shows_payload_and_result(app: Flask, client: FlaskClient) -> None:
    submit(client, "t", payload={"n": 1})
    set_columns(app, "t", status="COMPLETED", result={"answer": 42})

    response = client.get("/api/tasks/t")

    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["status"]) == ("t", "COMPLETED")
    assert body["payload"] == {"n": 1}
    assert body["result"] == {"answer": 42}


def test_get_status_is_exactly_id_and_status(client: FlaskClient) -> None:
    submit(client, "t")

    response = client.get("/api/tasks/t/status")

    assert response.status_code == 200
    assert response.get_json() == {"id": "t", "status": "QUEUED"}


@pytest.mark.parametrize("suffix", ["", "/status"], ids=["task", "status"])
@pytest.mark.parametrize(
    "task_id", ["ghost", "a" * 5000, "😀" * 1000], ids=["plain", "5000-chars", "emoji"]
)
def test_unknown_task_is_not_found(client: FlaskClient, task_id: str, suffix: str) -> None:
    submit(client, "t")

    response = client.get(f"/api/tasks/{task_id}{suffix}")

    assert_error(response, 404, "not_found")


# -- listing -------------------------------------------------------------------------


def test_list_is_a_bare_array_newest_first_without_payload(client: FlaskClient) -> None:
    for task_id in ["first", "second", "third"]:
        submit(client, task_id, payload={"secret": task_id})

    response = client.get("/api/tasks")

    assert ids(response) == ["third", "second", "first"]
    assert "Link" not in response.headers
    for item in response.get_json():
        assert list(item)[:7] == ORIGINAL_FIELDS
        assert "payload" not in item and "result" not in item
        assert item == {
            k: v
            for k, v in client.get(f"/api/tasks/{item['id']}").get_json().items()
            if k not in ("payload", "result")
        }


def test_list_of_nothing_is_an_empty_array(client: FlaskClient) -> None:
    response = client.get("/api/tasks")

    assert response.status_code == 200
    assert response.get_json() == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=QUEUED", ["c2", "b2", "a1"]),
        ("status=FAILED", ["b1"]),
        ("status=COMPLETED", []),
        ("type=beta", ["b2", "b1"]),
        ("type=beta&status=QUEUED", ["b2"]),
        ("type=gamma", []),
        ("status=failed", ["b1"]),
        ("status=Queued&type=beta", ["b2"]),
        ("status=failed,QUEUED", ["c2", "b2", "b1", "a1"]),
        ("status=FAILED,COMPLETED", ["b1"]),
        ("status=queued,failed,queued,&type=beta", ["b2", "b1"]),
        ("status=failed,%20QUEUED%09", ["c2", "b2", "b1", "a1"]),
    ],
    ids=[
        "queued",
        "failed",
        "none-completed",
        "type",
        "type-and-status",
        "unknown-type",
        "status-lowercase",
        "status-mixed-case",
        "statuses",
        "statuses-one-empty",
        "statuses-repeated-and-type",
        "statuses-with-blanks",
    ],
)
def test_list_filters(app: Flask, client: FlaskClient, query: str, expected: list[str]) -> None:
    for task_id, task_type in [("a1", "alpha"), ("b1", "beta"), ("b2", "beta"), ("c2", "alpha")]:
        submit(client, task_id, task_type)
    set_columns(app, "b1", status="FAILED")

    assert ids(client.get(f"/api/tasks?{query}")) == expected


def test_list_limit_defaults_to_100(client: FlaskClient) -> None:
    for n in range(101):
        submit(client, f"t{n}")

    response = client.get("/api/tasks")

    assert ids(response) == [f"t{n}" for n in range(100, 0, -1)]
    assert "Link" in response.headers


@pytest.mark.parametrize("limit", ["1", "2", "1000", "0002"])
def test_list_limit_in_range_is_honoured(client: FlaskClient, limit: str) -> None:
    for n in range(3):
        submit(client, f"t{n}")

    response = client.get(f"/api/tasks?limit={limit}")

    assert ids(response) == ["t2", "t1", "t0"][: int(limit)]
    assert ("Link" in response.headers) == (int(limit) < 3)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("limit=abc", "Not a whole number."),
        ("limit=1.5", "Not a whole number."),
        ("limit=0", "Out of range."),
        ("limit=1001", "Out of range."),
    ],
)
def test_a_bad_limit_says_what_is_wrong_with_it(client: FlaskClient, query: str, why: str) -> None:
    response = client.get(f"/api/tasks?{query}")
    assert_error(response, 400, "invalid_parameter")
    assert response.get_json()["details"] == {"limit": why}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "limit=",
        "limit=1.5",
        "limit=%2B5",
        "limit=%C2%B2",
        "limit=" + "9" * 5000,
        "status=qu%C3%A9ued",
        "status=DONE",
        "status=",
        "status=,",
        "status=FAILED,DONE",
        "status=FAILED,queu%C3%A9d",
        "status=QUEUED&status=RUNNING",
        "priority=1",
        "page=2",
    ],
    ids=[
        "limit-zero",
        "limit-1001",
        "limit-abc",
        "limit-negative",
        "limit-empty",
        "limit-float",
        "limit-plus-sign",
        "limit-superscript-two",
        "limit-5000-digits",
        "status-non-ascii",
        "status-unknown",
        "status-empty",
        "statuses-empty",
        "statuses-one-unknown",
        "statuses-one-non-ascii",
        "status-repeated",
        "unknown-priority",
        "unknown-page",
    ],
)
def test_list_bad_parameter_is_invalid(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/tasks?{query}")

    body = assert_error(response, 400, "invalid_parameter")
    assert query.split("=")[0] in body["details"]


def walk(client: FlaskClient, url: str) -> tuple[list[str], list[str]]:
    """Follow `Link: rel=next` from `url` to the last page; return the ids and the links."""
    seen: list[str] = []
    links: list[str] = []
    while True:
        response = client.get(url)
        page = ids(response)
        assert page, "a page in the middle of a walk is never empty"
        seen += page
        link = response.headers.get("Link")
        if link is None:
            return seen, links
        match = NEXT_LINK.match(link)
        assert match, link
        url = match.group(1)
        links.append(url)


@pytest.mark.parametrize("count", [25, 20, 10, 1], ids=["25", "20", "10", "1"])
def test_cursor_walk_sees_every_task_once_newest_first(client: FlaskClient, count: int) -> None:
    for n in range(count):
        submit(client, f"t{n:02d}")

    seen, links = walk(client, "/api/tasks?limit=10")

    assert seen == [f"t{n:02d}" for n in reversed(range(count))]
    assert len(links) == (count - 1) // 10
    for link in links:
        parts = urlsplit(link)
        assert (parts.scheme, parts.netloc, parts.path) == ("http", "localhost", "/api/tasks")


def test_cursor_walk_keeps_filters(app: Flask, client: FlaskClient) -> None:
    for n in range(30):
        submit(client, f"t{n:02d}", "even" if n % 2 == 0 else "odd")
    set_columns(app, "t04", status="FAILED")

    seen, links = walk(client, "/api/tasks?type=even&status=QUEUED&limit=4")

    assert seen == [f"t{n:02d}" for n in range(28, -1, -2) if n != 4]
    assert len(links) == 3
    for link in links:
        query = parse_qs(urlsplit(link).query)
        assert query["type"] == ["even"]
        assert query["status"] == ["QUEUED"]
        assert query["limit"] == ["4"]
        assert len(query["cursor"]) == 1


def test_cursor_is_stable_when_tasks_arrive_meanwhile(client: FlaskClient) -> None:
    for n in range(5):
        submit(client, f"old{n}")
    first = client.get("/api/tasks?limit=3")
    submit(client, "new")

    rest = client.get(NEXT_LINK.match(first.headers["Link"]).group(1))

    assert ids(first) + ids(rest) == ["old4", "old3", "old2", "old1", "old0"]


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "",
        "!!!",
        "%C3%A9",
        _b64("v2:5"),
        _b64("v1:0"),
        _b64("v1:-1"),
        _b64("v1:abc"),
        _b64("v1: 5"),
        _b64("v1:²"),
        _b64("v1:" + "9" * 30),
        _b64("v1:" + str(2**63)),
        _b64("v1:" + "9" * 5000),
        base64.urlsafe_b64encode(b"\xff\xfe:1").decode(),
    ],
    ids=[
        "garbage",
        "empty",
        "punctuation",
        "non-ascii",
        "wrong-version",
        "zero",
        "negative",
        "not-a-number",
        "space",
        "superscript",
        "30-digits",
        "past-int64",
        "5000-digits",
        "not-utf8",
    ],
)
def test_bad_cursor_is_invalid(client: FlaskClient, cursor: str) -> None:
    submit(client, "t")

    response = client.get(f"/api/tasks?cursor={cursor}")

    body = assert_error(response, 400, "invalid_parameter")
    assert "cursor" in body["details"]


# -- errors every route shares -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/api/tasks", {"GET", "POST"}),
        ("PUT", "/api/tasks", {"GET", "POST"}),
        ("PUT", "/api/tasks/x", {"GET", "PATCH", "DELETE"}),
        ("POST", "/api/tasks/x", {"GET", "PATCH", "DELETE"}),
        ("POST", "/api/tasks/x/status", {"GET"}),
        ("POST", "/health", {"GET"}),
    ],
    ids=["delete-list", "put-list", "put-task", "post-task", "post-status", "post-health"],
)
def test_wrong_method_is_not_allowed(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.open(path, method=method)

    assert_error(response, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert method not in response.headers["Allow"]


@pytest.mark.parametrize(
    "path", ["/nope", "/api", "/api/nope", "/api/tasks/x/nope", "/api/tasks/x/status/y"]
)
def test_unknown_route_is_json_not_found(client: FlaskClient, path: str) -> None:
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "bare"),
    [
        ("GET", "/api/tasks/", "/api/tasks"),
        ("POST", "/api/tasks/", "/api/tasks"),
        ("POST", "/api/tasks/batch/", "/api/tasks/batch"),
        ("GET", "/api/tasks/x/status//", "/api/tasks/x/status"),
    ],
)
def test_a_trailing_slash_is_named_as_the_mistake(
    client: FlaskClient, method: str, path: str, bare: str
) -> None:
    response = client.open(path, method=method, json={})
    assert_error(response, 404, "not_found")
    assert response.get_json()["error"] == (
        f"No such route: the routes end without a slash; use {bare}."
    )
    assert client.get("/api/nope/").get_json()["error"] == (
        "No such route; the API lives under /api/tasks, the dashboard at /."
    )


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        ("/api/health", "/health"),
        ("/dashboard/", "/ (the dashboard)"),
        ("/api/task/abc/status", "/api/tasks/abc/status"),
        ("/openapi.json", "/api/openapi.json"),
    ],
)
def test_a_route_a_newcomer_guesses_names_the_route_meant(
    client: FlaskClient, path: str, meant: str
) -> None:
    response = client.get(path)
    assert_error(response, 404, "not_found")
    assert response.get_json()["error"] == f"No such route; did you mean {meant}?"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/tasks", 200),
        ("GET", "/api/tasks/t", 200),
        ("GET", "/api/tasks/ghost", 404),
        ("POST", "/api/tasks", 415),
        ("DELETE", "/api/tasks", 405),
        ("GET", "/health", 200),
    ],
    ids=["list", "task", "not-found", "unsupported-media", "not-allowed", "health"],
)
def test_cors_allows_any_origin(client: FlaskClient, method: str, path: str, status: int) -> None:
    submit(client, "t")

    response = client.open(path, method=method, headers={"Origin": "https://example.org"})

    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("path", ["/api/tasks", "/api/tasks/t", "/api/tasks/t/status"])
def test_cors_preflight_is_answered(client: FlaskClient, path: str) -> None:
    response = client.options(
        path,
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
    )

    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]


def test_internal_error_hides_its_detail(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-detail at /srv/app/secret.py")

    monkeypatch.setattr(reads, "get_task", explode)

    response = client.get("/api/tasks/t")

    assert_error(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    for leak in ("secret", "Traceback", "RuntimeError", ".py"):
        assert leak not in text


# -- health --------------------------------------------------------------------------


def test_health_with_scheduler_disabled_is_ok(client: FlaskClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok"
    assert body["database"]["dialect"] == "sqlite"
    assert body["scheduler"] == {"state": "disabled"}


def test_health_with_enabled_scheduler_not_started_is_unavailable(make_app: AppFactory) -> None:
    app = make_app(SCHEDULER_ENABLED="true")

    response = app.test_client().get("/health")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] != "ok"
    assert body["database"]["status"] == "ok"
    assert body["scheduler"]["state"] != "running"


def test_health_is_unavailable_once_the_scheduler_loop_stops_ticking(make_app: AppFactory) -> None:
    # A loop stuck in a pass (a hung query, a deadlocked thread) still says "running":
    # only the age of its last pass shows it. The scheduler's clock is moved by hand.
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL="1000")
    scheduler: Scheduler = app.extensions["scheduler"]
    clock = [100.0]
    scheduler.clock = lambda: clock[0]
    scheduler.open()
    assert scheduler.step()  # one pass at 100.0, as the loop's thread would run it
    client = app.test_client()
    assert client.get("/health").status_code == 200
    clock[0] += 2.5  # more than two polling intervals without a pass
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert (body["status"], body["scheduler"]["state"]) == ("unavailable", "running")
    assert body["database"]["status"] == "ok"


def test_a_walk_of_several_statuses_merges_them_newest_first_page_by_page(
    app: Flask, client: FlaskClient
) -> None:
    """Each page is the newest of the statuses' own newest: no task twice, none left
    out, across pages whose statuses come in runs and alternate."""
    for n in range(23):
        submit(client, f"t{n:02d}")
    statuses = {n: ("FAILED", "QUEUED", "CANCELLED")[(n // 3 + n) % 3] for n in range(23)}
    for n, status in statuses.items():
        if status != "QUEUED":
            set_columns(app, f"t{n:02d}", status=status)
    wanted = [f"t{n:02d}" for n in range(22, -1, -1) if statuses[n] != "QUEUED"]

    seen, links = walk(client, "/api/tasks?status=cancelled,FAILED&limit=4")

    assert seen == wanted
    assert len(links) == (len(wanted) - 1) // 4
    assert all("status=cancelled,FAILED&" in link for link in links), links
