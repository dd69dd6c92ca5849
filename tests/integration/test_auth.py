"""API_TOKEN: every /api route, the dashboard's data and (if asked) ops need the bearer token.

Through gunicorn and a browser: tests/system/test_auth_processes.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import create_app
from app.config import ConfigError, Settings
from app.http.auth import PUBLIC_API
from app.logs import JsonFormatter
from app.services import reads
from tests.support.apps import build_app
from tests.support.auth import GOOD, REFUSED, TOKEN
from tests.support.client import assert_error

PREFLIGHT = {
    "Origin": "https://example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def api_requests(app: Flask) -> list[tuple[str, str]]:
    """Return (method, path) for every method of every guarded route under /api."""
    found: list[tuple[str, str]] = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api") or rule.rule in PUBLIC_API:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "t1", rule.rule)
        found.extend((method, path) for method in sorted(rule.methods or ()))
    return found


@pytest.fixture
def guarded(sqlite_url: str) -> Iterator[Flask]:
    app = build_app(sqlite_url, {"API_TOKEN": TOKEN})
    yield app
    app.extensions["store"].engine.dispose()


def send(client: FlaskClient, method: str, path: str, headers: dict[str, str]) -> TestResponse:
    # A valid body, so that what answers is the token check and nothing else.
    body = {"type": "simulate", "duration_ms": 1} if method == "POST" else None
    return client.open(path, method=method, headers=headers, json=body)


def assert_unauthorized(response: TestResponse) -> None:
    assert response.status_code == 401, (response.request.method, response.request.path)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if response.request.method != "HEAD":
        body = assert_error(response, 401, "unauthorized")
        assert "Authorization: Bearer <token>" in body["error"]
        assert "details" not in body


def test_the_api_has_routes_to_guard(guarded: Flask) -> None:
    routes = api_requests(guarded)
    assert ("POST", "/api/tasks") in routes
    assert ("POST", "/api/tasks/batch") in routes
    assert ("GET", "/api/tasks/t1") in routes
    assert {method for method, _ in routes} >= {"GET", "HEAD", "OPTIONS", "POST"}


def test_the_openapi_document_stays_public_with_a_token_set(guarded: Flask) -> None:
    # It describes the API and exposes no data, so a client generator needs no secret.
    client = guarded.test_client()
    for headers in (*REFUSED.values(), GOOD):
        response = client.get("/api/openapi.json", headers=headers)
        assert response.status_code == 200
        assert response.get_json()["paths"]["/api/openapi.json"]["get"]["security"] == []
    assert "401" not in response.get_json()["paths"]["/api/openapi.json"]["get"]["responses"]
    assert_unauthorized(client.get("/api/tasks"))  # the rest of /api still needs it


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_every_api_route_refuses_a_request_without_the_right_token(
    guarded: Flask, case: str
) -> None:
    client = guarded.test_client()
    for method, path in api_requests(guarded):
        assert_unauthorized(send(client, method, path, REFUSED[case]))
    # Unknown routes and methods under /api say no more than known ones.
    assert_unauthorized(send(client, "GET", "/api/no-such-route", REFUSED[case]))
    assert_unauthorized(send(client, "DELETE", "/api/tasks", REFUSED[case]))
    assert client.get("/api/tasks", headers=GOOD).get_json() == []


def test_every_refusal_reads_the_same(guarded: Flask) -> None:
    client = guarded.test_client()
    answers = {
        (r.get_data(), tuple(sorted(r.headers.items())))
        for r in (client.get("/api/tasks/t1", headers=h) for h in REFUSED.values())
    }
    assert len(answers) == 1


def submit_t1(client: FlaskClient) -> None:
    body = {"id": "t1", "type": "simulate", "duration_ms": 1}
    assert client.post("/api/tasks", headers=GOOD, json=body).status_code == 201


def test_the_right_token_opens_every_api_route(guarded: Flask) -> None:
    client = guarded.test_client()
    submit_t1(client)
    for method, path in api_requests(guarded):
        response = send(client, method, path, GOOD)
        assert response.status_code != 401, (method, path)
        assert response.status_code < 500, (method, path, response.get_data()[:200])
    assert client.get("/api/tasks/t1/status", headers=GOOD).get_json()["id"] == "t1"
    # The scheme is case-insensitive (RFC 7235).
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert client.get("/api/tasks/t1", headers=lower).status_code == 200


def test_an_unauthenticated_large_body_gets_401_before_it_is_read(guarded: Flask) -> None:
    client = guarded.test_client()
    big = b'{"type": "simulate", "duration_ms": 1, "payload": {"x": "' + b"a" * (2 << 20) + b'"}}'
    headers = {"Content-Type": "application/json"}
    assert_unauthorized(client.post("/api/tasks", data=big, headers=headers))
    assert_error(
        client.post("/api/tasks", data=big, headers={**headers, **GOOD}), 413, "body_too_large"
    )


def test_a_cors_preflight_needs_no_token(guarded: Flask) -> None:
    client = guarded.test_client()
    for path in ("/api/tasks", "/api/tasks/batch", "/api/tasks/t1/cancel"):
        response = client.options(path, headers=PREFLIGHT)
        assert response.status_code == 200, path
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
    # A refusal carries the CORS headers too, so a browser page can read it.
    refused = client.get("/api/tasks", headers={"Origin": "https://example.com"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]


def test_health_and_metrics_stay_open_by_default(guarded: Flask) -> None:
    client = guarded.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_auth_ops_routes_closes_health_and_metrics(sqlite_url: str) -> None:
    app = build_app(sqlite_url, {"API_TOKEN": TOKEN, "AUTH_OPS_ROUTES": "true"})
    client = app.test_client()
    for path in ("/health", "/metrics"):
        for headers in REFUSED.values():
            assert_unauthorized(client.get(path, headers=headers))
        assert client.get(path, headers=GOOD).status_code == 200
    app.extensions["store"].engine.dispose()


def test_without_a_token_everything_is_open(client: FlaskClient) -> None:
    assert client.get("/api/tasks").status_code == 200
    assert client.get("/dashboard/counts").status_code == 200
    assert client.get("/api/tasks", headers=REFUSED["wrong token"]).status_code == 200


def test_the_dashboard_pages_are_open_and_its_data_is_not(guarded: Flask) -> None:
    client = guarded.test_client()
    submit_t1(client)
    for path in ("/", "/tasks/t1", "/static/dashboard/common.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        response.close()
    for path in ("/dashboard/counts", "/dashboard/graph/t1", "/dashboard/actions/t1"):
        for headers in REFUSED.values():
            assert_unauthorized(client.get(path, headers=headers))
        assert client.get(path, headers=GOOD).status_code == 200
    assert 'id="token-form"' in client.get("/").get_data(as_text=True)


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"API_TOKEN": "short-secret"}, "API_TOKEN must be at least 16 characters"),
        ({"API_TOKEN": "a secret with spaces!"}, "API_TOKEN must be printable ASCII"),
        ({"AUTH_OPS_ROUTES": "true"}, "AUTH_OPS_ROUTES=true needs API_TOKEN"),
        ({"AUTH_OPS_ROUTES": "sometimes", "API_TOKEN": TOKEN}, "AUTH_OPS_ROUTES must be true"),
    ],
)
def test_a_bad_auth_setting_stops_start_up_without_echoing_the_token(
    env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment) as raised:
        Settings.from_env(env)
    assert env.get("API_TOKEN", "\0") not in str(raised.value)


def test_the_settings_never_show_the_token() -> None:
    settings = Settings.from_env({"API_TOKEN": f"  {TOKEN}  "})
    assert settings.api_token == TOKEN
    assert TOKEN not in repr(settings)
    assert Settings.from_env({}).api_token == ""


# -- logs ------------------------------------------------------------------------------


def test_the_token_never_reaches_the_logs(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(
        {
            "DATABASE_URL": sqlite_url,
            "SCHEDULER_ENABLED": "false",
            "API_TOKEN": TOKEN,
            "LOG_FORMAT": "json",
        }
    )
    with app.app_context():
        from app.extensions import db

        db.create_all()
    client = app.test_client()
    client.post("/api/tasks", headers=GOOD, json={"id": "t1", "type": "simulate", "duration_ms": 1})
    for headers in REFUSED.values():
        client.get("/api/tasks/t1", headers=headers)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the store broke")

    # The unexpected-error path logs a traceback: the request's headers stay out of it.
    monkeypatch.setattr(reads, "get_task", broken)
    assert_error(client.get("/api/tasks/t1", headers=GOOD), 500, "internal_error")
    assert any(r.exc_info for r in caplog.records), "the 500 was not logged"
    formatter = JsonFormatter()
    text = caplog.text + "".join(formatter.format(r) for r in caplog.records)
    assert TOKEN not in text
    assert TOKEN[:-1] not in text
    app.extensions["store"].engine.dispose()
