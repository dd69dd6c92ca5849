"""Clocks: one shared clock on PostgreSQL, and liveness no clock step can fool."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from conftest import _teardown, build_app
from flask import Flask
from helpers import submit, task
from sqlalchemy import func, select

from app import database
from app.extensions import db

SKEW = timedelta(hours=1)


@pytest.fixture
def skewed_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make this host's clock run an hour ahead of the database's."""
    real = database.utcnow
    monkeypatch.setattr(database, "utcnow", lambda: real() + SKEW)
    yield


def _database_now(app: Flask) -> datetime:
    with app.app_context(), db.engine.connect() as conn:
        moment: datetime = conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()
        return moment


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).replace(tzinfo=None)


@pytest.mark.postgres
def test_a_skewed_api_host_stamps_and_compares_with_the_database_clock(
    postgres_url: str, skewed_host: None
) -> None:
    """Submit, cancel and blockers read the database's clock, not the API host's."""
    app = build_app(postgres_url, {})
    try:
        _check_stamps(app)
    finally:
        _teardown([app])


def _check_stamps(app: Flask) -> None:
    client = app.test_client()
    before = _database_now(app)
    due = before + timedelta(minutes=30)
    submit(client, "later", run_at=due.strftime("%Y-%m-%dT%H:%M:%SZ"))
    submit(client, "victim")
    # Held by its run_at, half an hour away on the shared clock (the host thinks it passed).
    answer = client.get("/api/tasks/later/blockers").get_json()
    assert [b["kind"] for b in answer["blockers"]] == ["run_at"]
    assert client.post("/api/tasks/victim/cancel").status_code == 200
    after = _database_now(app)
    victim = task(client, "victim")
    for field in ("created_at", "finished_at"):
        assert before - timedelta(seconds=5) <= _parse(victim[field]) <= after, field
