"""The rules of cancel, retry, retention and run_at, each once broken, on both backends.

Each test names the defect it guards against: it failed on the code before the fix that
made the rule hold, or fails once the code that keeps the rule is taken out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from app.errors import InvalidState
from app.services import actions, submissions
from app.statuses import Status
from app.storage import retention
from app.storage.database import utcnow
from app.storage.store import Claim, Outcome, Store
from tests.support.apps import AppFactory
from tests.support.store import add, claim_all, row, set_fields

FAILED = Outcome(Status.FAILED, error="boom", error_code="handler_error")
COMPLETED = Outcome(Status.COMPLETED)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def submit(store: Store, task_id: str, *dependencies: str, **fields: Any) -> None:
    body = {"id": task_id, "type": "t", "duration_ms": 1, "dependencies": list(dependencies)}
    submissions.submit(store.engine, {**body, **fields})


def claimed(store: Store, task_id: str, worker: str = "w1") -> Claim:
    """Claim everything ready and return the claim of `task_id`."""
    claims = {c.id: c for c in claim_all(store, worker)}
    return claims[task_id]


# -- cancel: an attempt asked to stop ends CANCELLED unless it completes -------------------


def test_a_cancelled_running_attempt_that_fails_ends_cancelled_not_retried(store: Store) -> None:
    add(store, "a")
    set_fields(store, "a", max_attempts=3, retry_backoff_ms=0)
    claim = claimed(store, "a")
    actions.cancel(store.engine, "a")  # from another process: the handler never saw it
    assert store.finish(claim, FAILED)
    ended = row(store, "a")
    assert (ended.status, ended.error_code) == ("CANCELLED", "cancelled")
    assert claim_all(store, "w2") == []


def test_a_cancelled_running_attempt_that_times_out_ends_cancelled(store: Store) -> None:
    add(store, "a")
    set_fields(store, "a", max_attempts=1)
    claim = claimed(store, "a")
    actions.cancel(store.engine, "a")
    timeout = Outcome(Status.FAILED, error="The attempt exceeded 5 ms.", error_code="timeout")
    assert store.finish(claim, timeout)
    assert (row(store, "a").status, row(store, "a").error_code) == ("CANCELLED", "cancelled")


def test_dependents_cut_off_by_a_cancel_can_be_retried_when_the_task_completes_anyway(
    store: Store,
) -> None:
    add(store, "a")
    add(store, "b", "a")
    add(store, "c", "b")
    claim = claimed(store, "a")
    actions.cancel(store.engine, "a")
    assert row(store, "b").error_code == "upstream_cancelled"
    assert store.finish(claim, COMPLETED)
    assert row(store, "a").status == "COMPLETED"
    # c names b as the task to retry, and b's retry works: no dead end.
    with pytest.raises(InvalidState) as refused:
        actions.retry(store.engine, "c")
    assert (refused.value.details or {})["root"] == "b"
    assert actions.retry(store.engine, "b")["status"] == "QUEUED"
    assert row(store, "c").status == "QUEUED"
    assert [c.id for c in claim_all(store)] == ["b"]


# -- retry: never before run_at, never past a dependency that did not complete ---------------


def test_retry_keeps_the_run_at_of_the_task_and_of_its_dependents(store: Store) -> None:
    later = utcnow() + timedelta(hours=1)
    add(store, "root")
    submit(store, "dependent", "root", run_at=later)
    submit(store, "held", run_at=later)
    assert store.finish(claimed(store, "root"), FAILED)
    actions.cancel(store.engine, "held")
    actions.retry(store.engine, "root")
    actions.retry(store.engine, "held")
    assert row(store, "dependent").run_at == later
    assert row(store, "held").run_at == later
    assert store.finish(claimed(store, "root"), COMPLETED)
    assert claim_all(store) == []  # both wait for their run_at


def test_retry_makes_the_dependents_of_the_task_wait_for_it_again(store: Store) -> None:
    # u (all_success) was cut off by a's failure and comes back with a's retry; t (all_done)
    # was still QUEUED, its count at 0 since a ended: it must count a as unfinished again,
    # or it runs before a's second attempt has ended.
    add(store, "a")
    add(store, "u", "a")
    submit(store, "t", "a", trigger_rule="all_done")
    assert store.finish(claimed(store, "a"), FAILED)
    assert (row(store, "u").status, row(store, "t").pending_deps) == ("UPSTREAM_FAILED", 0)
    actions.retry(store.engine, "a")
    for dependent in ("u", "t"):
        assert (row(store, dependent).status, row(store, dependent).pending_deps) == ("QUEUED", 1)
    (again,) = claim_all(store)
    assert again.id == "a"
    assert store.finish(again, COMPLETED)
    assert sorted(c.id for c in claim_all(store)) == ["t", "u"]


def test_a_retried_attempt_backs_off_without_losing_its_run_at(store: Store) -> None:
    start = utcnow() - timedelta(minutes=1)
    submit(store, "a", run_at=start, max_attempts=2, retry_backoff_ms=60_000)
    assert store.finish(claimed(store, "a"), FAILED)
    backing_off = row(store, "a")
    assert backing_off.status == "QUEUED"
    assert backing_off.run_at == start
    assert claim_all(store) == []


# -- retention: a task is kept while a retry could still need it ---------------------------


def test_prune_keeps_a_failure_that_a_later_retry_must_still_see(store: Store) -> None:
    add(store, "x")
    add(store, "y")
    add(store, "t", "x", "y")
    claims = {c.id: c for c in claim_all(store)}
    assert store.finish(claims["x"], FAILED)
    assert store.finish(claims["y"], FAILED)
    assert row(store, "t").status == "UPSTREAM_FAILED"
    set_fields(store, "x", finished_at=utcnow() - timedelta(days=2))  # x is old, y is not
    retention.prune(store.engine, timedelta(days=1))
    actions.retry(store.engine, "y")
    assert row(store, "t").status == "UPSTREAM_FAILED"  # x still failed: t must not run
    assert row(store, "x").status == "FAILED"


def test_prune_removes_a_failed_subgraph_whole(store: Store) -> None:
    add(store, "x")
    add(store, "t", "x")
    add(store, "u", "t")
    add(store, "done")
    add(store, "after", "done")
    claims = {c.id: c for c in claim_all(store)}
    assert store.finish(claims["x"], FAILED)
    assert store.finish(claims["done"], COMPLETED)
    removed = retention.prune(store.engine, timedelta(0), now=utcnow() + timedelta(days=1))
    assert removed == 3  # x, t and u together; done stays while its dependent is QUEUED
    assert row(store, "after").status == "QUEUED"
    assert row(store, "done").status == "COMPLETED"


def test_prune_follows_a_pipeline_that_keeps_growing(store: Store) -> None:
    add(store, "day0")
    for day in range(1, 4):
        (claim,) = claim_all(store)
        assert store.finish(claim, COMPLETED)
        add(store, f"day{day}", f"day{day - 1}")
    later = utcnow() + timedelta(days=1)
    assert retention.prune(store.engine, timedelta(0), now=later) == 2  # day0 and day1
    assert row(store, "day2").status == "COMPLETED"  # day3 still waits for it
