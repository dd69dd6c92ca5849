"""The baseline for single submissions: the least a Flask + SQLAlchemy service does to
store a POSTed task durably, served as ours is (gunicorn, one worker, 8 threads).

One table, one row per request, a durable commit per request (WAL, synchronous=FULL, as
our service runs by default): no validation, no admission, no events, no metrics. What our
`POST /api/tasks` adds on top must be paid for by smarter commits. The database file is
BENCH_MINIMAL_DB.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, DateTime, Integer, String, event
from sqlalchemy.orm import Mapped, mapped_column

db = SQLAlchemy()


class Item(db.Model):  # type: ignore[name-defined]
    """A submitted task, as little of it as a task needs."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    duration_ms: Mapped[int] = mapped_column(Integer)
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


def create_app() -> Flask:
    """Return the app on BENCH_MINIMAL_DB, its table created."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.environ["BENCH_MINIMAL_DB"]
    db.init_app(app)
    with app.app_context():

        @event.listens_for(db.engine, "connect")
        def _durable(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        db.create_all()

    @app.post("/api/tasks")
    def submit() -> tuple[dict[str, Any], int]:
        body = request.get_json()
        item = Item(
            type=body["type"],
            duration_ms=body["duration_ms"],
            payload=body.get("payload"),
            created_at=datetime.now(UTC).replace(tzinfo=None),
        )
        db.session.add(item)
        db.session.commit()
        return {"id": item.id, "status": "QUEUED"}, 201

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"scheduler": {"state": "disabled"}}  # what the bench's start-up waits for

    return app


def __getattr__(name: str) -> Any:
    # `gunicorn bench.minimal_app:app` reads this attribute: build the app only then.
    if name == "app":
        return create_app()
    raise AttributeError(name)
