"""The parts `create_app` builds for each app, and typed access to them.

A route or a command reaches the app's store, scheduler, metrics and submission checks
through these functions (on the current app unless given one), never by a string key.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, current_app
from sqlalchemy import Engine

from app.handlers import Registry
from app.runtime.metrics import Metrics
from app.runtime.scheduler import Scheduler
from app.services.admission import Admission
from app.services.streams import Streams
from app.services.waiting import Waiters
from app.storage.store import Store

# The parts `create_app` builds, each kept in `app.extensions` under its own name.
PARTS = ("store", "registry", "admission", "metrics", "scheduler", "waiters", "streams")


def install(app: Flask, **parts: Any) -> None:
    """Keep the parts `create_app` built, under the names of PARTS."""
    assert set(parts) == set(PARTS), sorted(parts)
    app.extensions.update(parts)


def _part(name: str, app: Flask | None) -> Any:
    return (app or current_app).extensions[name]


def store(app: Flask | None = None) -> Store:
    """Return the app's store: claims, finishes and every write of the scheduler."""
    return cast(Store, _part("store", app))


def engine(app: Flask | None = None) -> Engine:
    """Return the app's database engine."""
    return store(app).engine


def registry(app: Flask | None = None) -> Registry:
    """Return the app's task types and their handlers."""
    return cast(Registry, _part("registry", app))


def admission(app: Flask | None = None) -> Admission:
    """Return the checks every submission passes (task types, room in the queue)."""
    return cast(Admission, _part("admission", app))


def metrics(app: Flask | None = None) -> Metrics:
    """Return the app's Prometheus metrics."""
    return cast(Metrics, _part("metrics", app))


def scheduler(app: Flask | None = None) -> Scheduler:
    """Return the app's scheduler (started or not)."""
    return cast(Scheduler, _part("scheduler", app))


def streams(app: Flask | None = None) -> Streams:
    """Return the app's event streams."""
    return cast(Streams, _part("streams", app))


def waiters(app: Flask | None = None) -> Waiters:
    """Return the requests of this process waiting for tasks to end."""
    return cast(Waiters, _part("waiters", app))
