"""Apps on a test database (a SQLite file, or a PostgreSQL schema of its own), teardown, and
engines set up as a process of the service sets up its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, text

from app import create_app
from app.extensions import db
from app.runtime.scheduler import Scheduler
from app.storage import database

PG_URL = os.environ.get("TEST_DATABASE_URL", "")
IN_CI = os.environ.get("CI", "").lower() == "true"

AppFactory = Callable[..., Flask]


def require_postgres() -> str:
    """Return TEST_DATABASE_URL; skip the test without it (fail it in CI)."""
    if not PG_URL:
        if IN_CI:
            pytest.fail("TEST_DATABASE_URL is not set; CI must run the PostgreSQL tests")
        pytest.skip("TEST_DATABASE_URL is not set")
    return PG_URL


def postgres_schema() -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL schema; drop the schema when resumed."""
    base = require_postgres().replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(base)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def build_app(url: str, env: dict[str, str]) -> Flask:
    """Return an app on `url` with its tables created, its scheduler not started."""
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


def teardown(apps: list[Flask]) -> None:
    """Stop the apps' schedulers at once and close their engines."""
    for application in apps:
        scheduler: Scheduler = application.extensions["scheduler"]
        scheduler.hurry()
        scheduler.stop(0)
        application.extensions["store"].engine.dispose()


def process_engine(url: str) -> Engine:
    """Return a new engine on `url`, configured as a freshly started process's would be."""
    engine = create_engine(url, **database.engine_options(url, 3))
    if engine.dialect.name == "sqlite":
        database.configure_sqlite(engine, "NORMAL")
    else:
        database.configure_postgresql(engine, 30)
    return engine
