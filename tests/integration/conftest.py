"""Fixtures of the integration tests: a fresh database per test (a SQLite file, or a
PostgreSQL schema of its own), apps on it, their clients and their stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.storage.store import Store
from tests.support.apps import AppFactory, build_app, postgres_schema, teardown


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
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
def sqlite_url(tmp_path: Path) -> str:
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


@pytest.fixture
def store(app: Flask) -> Store:
    """Return the store of `app` (a module may override `app`, e.g. to run on both backends)."""
    return app.extensions["store"]
