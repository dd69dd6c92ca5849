"""Fixtures: a fresh database per test (SQLite file, or a PostgreSQL schema), apps, clients.

Helpers live in `tests/support`; this file only defines fixtures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import events
from tests.support.apps import AppFactory, build_app, postgres_schema, teardown


@pytest.fixture(autouse=True)
def _quiet_task_events() -> Iterator[None]:
    """Keep the state-change lines of every test's app out of the output; tests that
    read them turn them on."""
    logger = logging.getLogger(events.LOGGER)
    before = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(before)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Yield the URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        yield from postgres_schema()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """Yield the URL of an empty PostgreSQL schema (for what only PostgreSQL has)."""
    yield from postgres_schema()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """Return the URL of an empty SQLite file database."""
    return f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture
def make_app(database_url: str) -> Iterator[AppFactory]:
    """Return a factory of apps on this test's database; their schedulers stop at teardown."""
    built: list[Flask] = []

    def factory(**env: str) -> Flask:
        app = build_app(database_url, env)
        built.append(app)
        return app

    yield factory
    teardown(built)


@pytest.fixture
def app(sqlite_url: str) -> Iterator[Flask]:
    """Return an app on a fresh SQLite database, its scheduler not started."""
    application = build_app(sqlite_url, {})
    yield application
    teardown([application])


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of `app`."""
    return app.test_client()
