"""gunicorn.conf.py's post_worker_init: the worker's scheduler, started once it has booted."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.runtime.scheduler import Scheduler
from tests.support.apps import AppFactory
from tests.unit.test_gunicorn_metrics import load_config


def test_a_worker_stopped_while_it_booted_starts_no_scheduler(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM during the worker's boot (gunicorn's handler sets `alive` false): the
    scheduler started anyway, claimed tasks, and held them for the whole grace."""
    app = make_app(SCHEDULER_ENABLED="true")
    config = load_config(monkeypatch, tmp_path)
    worker = SimpleNamespace(alive=False, wsgi=app, log=logging.getLogger("tests.gunicorn"))
    config["post_worker_init"](worker)
    scheduler: Scheduler = app.extensions["scheduler"]
    assert scheduler.id is None and scheduler.state != "running"  # never registered
    assert not hasattr(worker, "graceful_stop")
