"""Fixtures: a fresh database per test (SQLite file, or a PostgreSQL schema), apps, clients."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from werkzeug.test import TestResponse

from app import create_app, events
from app.extensions import db
from app.runtime.scheduler import Scheduler

PG_URL = os.environ.get("TEST_DATABASE_URL", "")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def _quiet_task_events() -> Iterator[None]:
    """Keep the state-change lines of every test's app out of the output; tests that
    read them turn them on."""
    logger = logging.getLogger(events.LOGGER)
    before = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(before)


MAX_ERROR_BYTES = 2048
# The original service's task fields, which come first and in this order.
ORIGINAL_FIELDS = [
    "id",
    "type",
    "duration_ms",
    "status",
    "dependencies",
    "created_at",
    "updated_at",
]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.01,
) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """Check the one error shape (small, JSON, a sentence and a code) and return its body."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    assert len(response.get_data()) < MAX_ERROR_BYTES
    body = response.get_json()
    assert set(body) <= {"error", "code", "details"}
    assert isinstance(body["error"], str) and body["error"]
    assert body["code"] == code
    assert isinstance(body.get("details", {}), dict)
    return body


def _postgres_schema() -> Iterator[str]:
    if not PG_URL:
        if IN_CI:
            pytest.fail("TEST_DATABASE_URL is not set; CI must run the PostgreSQL tests")
        pytest.skip("TEST_DATABASE_URL is not set")
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Yield the URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        yield from _postgres_schema()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """Yield the URL of an empty PostgreSQL schema (for what only PostgreSQL has)."""
    yield from _postgres_schema()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """Return the URL of an empty SQLite file database."""
    return f"sqlite:///{tmp_path / 'tasks.db'}"


AppFactory = Callable[..., Flask]


def build_app(url: str, env: dict[str, str]) -> Flask:
    settings = {
        "DATABASE_URL": url,
        "SCHEDULER_ENABLED": "false",
        "SHUTDOWN_GRACE_S": "5",
        **env,
    }
    app = create_app(settings)
    app.config["TESTING"] = True
    with app.app_context():
        db.create_all()
    return app


@pytest.fixture
def make_app(database_url: str) -> Iterator[AppFactory]:
    """Return a factory of apps on this test's database; their schedulers stop at teardown."""
    built: list[Flask] = []

    def factory(**env: str) -> Flask:
        app = build_app(database_url, env)
        built.append(app)
        return app

    yield factory
    _teardown(built)


@pytest.fixture
def app(sqlite_url: str) -> Iterator[Flask]:
    """Return an app on a fresh SQLite database, its scheduler not started."""
    application = build_app(sqlite_url, {})
    yield application
    _teardown([application])


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of `app`."""
    return app.test_client()


def _teardown(apps: list[Flask]) -> None:
    for application in apps:
        scheduler: Scheduler = application.extensions["scheduler"]
        scheduler.hurry()
        scheduler.stop(0)
        application.extensions["store"].engine.dispose()
