"""gunicorn.conf.py's post_worker_init: the worker's scheduler, started once it has booted."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.runtime.scheduler import Scheduler
from app.runtime.shutdown import GracefulStop
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


def test_a_stop_that_comes_as_the_worker_takes_over_the_signals_starts_no_scheduler(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM after gunicorn's look at `alive`, as the scheduler started: it claimed
    tasks within milliseconds and held them for the whole grace (6 boots in 30)."""
    app = make_app(SCHEDULER_ENABLED="true")
    config = load_config(monkeypatch, tmp_path)
    install = GracefulStop.install

    def install_then_signalled(stop: GracefulStop) -> None:
        install(stop)
        stop.note(signal.SIGTERM, None)  # what its handler does as the signal lands

    monkeypatch.setattr(GracefulStop, "install", install_then_signalled)
    worker = SimpleNamespace(alive=True, wsgi=app, log=logging.getLogger("tests.gunicorn"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        config["post_worker_init"](worker)
    finally:  # this process's own handlers, as they were
        for signum, handler in handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
    scheduler: Scheduler = app.extensions["scheduler"]
    assert scheduler.id is None and scheduler.state != "running"  # never started
    assert worker.graceful_stop.signalled()
    assert worker.graceful_stop.drained.wait(10)  # and the stop ends at once
