"""Extensions created without an app and bound in `create_app`, and typed access to the
parts `create_app` builds for each app (its store, scheduler, metrics, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from app.handlers import Registry
    from app.runtime.metrics import Metrics
    from app.runtime.scheduler import Scheduler
    from app.services.admission import Admission
    from app.storage.store import Store

# Named constraints keep migrations reproducible on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING))
migrate = Migrate(render_as_batch=True)

# The parts `create_app` builds, each kept in `app.extensions` under its own name.
PARTS = ("store", "registry", "admission", "metrics", "scheduler")


def install(app: Flask, **parts: Any) -> None:
    """Keep the parts `create_app` built, under the names of PARTS."""
    assert set(parts) == set(PARTS), sorted(parts)
    app.extensions.update(parts)


def _part(name: str, app: Flask | None) -> Any:
    return (app or current_app).extensions[name]


def store(app: Flask | None = None) -> Store:
    """Return the app's store: claims, finishes and every write of the scheduler."""
    return cast("Store", _part("store", app))


def engine(app: Flask | None = None) -> Engine:
    """Return the app's database engine."""
    return store(app).engine


def registry(app: Flask | None = None) -> Registry:
    """Return the app's task types and their handlers."""
    return cast("Registry", _part("registry", app))


def admission(app: Flask | None = None) -> Admission:
    """Return the checks every submission passes (task types, room in the queue)."""
    return cast("Admission", _part("admission", app))


def metrics(app: Flask | None = None) -> Metrics:
    """Return the app's Prometheus metrics."""
    return cast("Metrics", _part("metrics", app))


def scheduler(app: Flask | None = None) -> Scheduler:
    """Return the app's scheduler (started or not)."""
    return cast("Scheduler", _part("scheduler", app))
