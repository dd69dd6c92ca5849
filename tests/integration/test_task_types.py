"""An instance claims only the task types it can run; the others wait for one that can."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from app.handlers import Registry
from app.runtime.scheduler import Scheduler
from app.services import blockers, submissions
from app.storage.store import Store
from tests.support.apps import AppFactory
from tests.support.stepping import Threads, open_scheduler
from tests.support.store import row


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def instance(store: Store, name: str, *types: str, cap: int = 4) -> tuple[Scheduler, Threads]:
    """Open an instance with a handler for each of `types` (none: it runs every type)."""
    registry = Registry()
    for task_type in types:
        registry.register(task_type, lambda ctx: {"ran": ctx.type})
    threads = Threads(cap)
    scheduler = open_scheduler(
        store, registry, cap=cap, executor=lambda _workers: threads, name=lambda: name
    )
    return scheduler, threads


def add(store: Store, task_id: str, task_type: str, **fields: Any) -> None:
    # As `flask tasks submit` does from a shell whose registry accepts every type.
    submissions.submit(store.engine, {"id": task_id, "type": task_type, "duration_ms": 1, **fields})


def finish_all(scheduler: Scheduler, threads: Threads) -> int:
    """Let every handler return; the next pass records them (and claims what it can)."""
    for task_id, _attempt in threads.running():
        threads.finish(task_id)
    return scheduler.run_once()


def test_an_instance_claims_only_the_types_it_has_handlers_for(store: Store) -> None:
    add(store, "resize-1", "resize")
    add(store, "email-1", "email")
    add(store, "tick", "simulate")
    scheduler, threads = instance(store, "images", "resize")
    assert scheduler.run_once() == 2
    assert sorted(t for t, _ in threads.running()) == ["resize-1", "tick"]
    finish_all(scheduler, threads)
    assert row(store, "resize-1").status == "COMPLETED"
    assert row(store, "email-1").status == "QUEUED"
    assert row(store, "email-1").attempts == 0
    answer = blockers.blockers(store.engine, "email-1")
    assert answer["blockers"] == [{"kind": "no_handler", "type": "email"}]


def test_an_instance_without_handlers_runs_every_type_as_the_simulation(store: Store) -> None:
    add(store, "anything", "whatever")
    scheduler, threads = instance(store, "plain")
    assert scheduler.run_once() == 1
    finish_all(scheduler, threads)
    assert row(store, "anything").status == "COMPLETED"


def test_across_types_the_best_priority_goes_first(store: Store) -> None:
    add(store, "low", "resize", priority=0)
    add(store, "high", "email", priority=9)
    add(store, "middle", "resize", priority=5)
    scheduler, threads = instance(store, "both", "resize", "email", cap=1)
    assert scheduler.run_once() == 1
    order = []
    for _ in range(3):
        order += [t for t, _ in threads.running()]
        finish_all(scheduler, threads)
    assert order == ["high", "middle", "low"]


def test_a_rolling_deploy_fails_no_task_of_a_new_type(store: Store) -> None:
    """Old instances lack the new handler: its tasks wait for a new instance, then run."""
    old, old_threads = instance(store, "old", "resize")
    add(store, "first", "resize")
    add(store, "thumbnail", "thumbnail", dependencies=["first"])
    add(store, "after", "resize", dependencies=["thumbnail"])
    for _ in range(5):
        old.run_once()
        finish_all(old, old_threads)
    assert row(store, "first").status == "COMPLETED"
    assert row(store, "thumbnail").status == "QUEUED"
    assert blockers.blockers(store.engine, "thumbnail")["blockers"] == [
        {"kind": "no_handler", "type": "thumbnail"}
    ]
    new, new_threads = instance(store, "new", "resize", "thumbnail")
    assert blockers.blockers(store.engine, "thumbnail")["blockers"] == [{"kind": "no_slot"}]
    assert new.run_once() == 1
    assert new_threads.running() == [("thumbnail", 1)]
    new_threads.finish("thumbnail")
    new.run_once()  # records it; what follows is a resize, which both can run
    old.run_once()
    for scheduler, threads in ((old, old_threads), (new, new_threads)):
        finish_all(scheduler, threads)
    assert row(store, "thumbnail").status == "COMPLETED"
    assert row(store, "after").status == "COMPLETED"
    assert all(row(store, t).failures == 0 for t in ("first", "thumbnail", "after"))


def test_a_scheduler_that_sleeps_for_every_type_beside_real_handlers_is_warned_of(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    instance(store, "images", "resize")
    with caplog.at_level("WARNING", logger="app.scheduler"):
        instance(store, "forgot-its-handlers")
    (warning,) = [r.getMessage() for r in caplog.records if "simulated sleep" in r.getMessage()]
    assert "others run handlers for resize:" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="app.scheduler"):
        instance(store, "more-images", "resize")
    (warning,) = [r.getMessage() for r in caplog.records if "simulated sleep" in r.getMessage()]
    assert warning.startswith("scheduler(s) forgot-its-handlers have no handler")
