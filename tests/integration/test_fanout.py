"""Data between tasks on both backends: a handler reads its dependencies' results, and adds
tasks to the graph that exist if and only if its completion committed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, text

from app.handlers import MAX_DEPENDENCY_RESULTS_BYTES, HandlerFailed, Registry, TaskContext
from app.services import submissions
from app.storage import database
from app.storage.store import Store
from tests.support.apps import AppFactory, build_app
from tests.support.interleave import Monitor
from tests.support.stepping import Clock, Threads, open_scheduler
from tests.support.store import row, set_fields


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def map_handler(ctx: TaskContext) -> Any:
    """Add `payload.n` leaves that depend on this task, and a join of them."""
    n = int(ctx.payload.get("n", 3))
    leaves = ctx.add_tasks(
        {"id": f"{ctx.id}.{k}", "type": "leaf", "duration_ms": 1, "dependencies": [ctx.id]}
        for k in range(n)
    )
    ctx.add_tasks(
        [{"id": f"{ctx.id}.join", "type": "join", "duration_ms": 1, "dependencies": leaves}]
    )
    return {"n": n}


def leaf(ctx: TaskContext) -> Any:
    (parent,) = ctx.dependency_results.values()
    if ctx.payload.get("fail"):
        raise HandlerFailed("leaf failed")
    return {"k": int(ctx.id.rsplit(".", 1)[1]), "of": parent["n"]}


def join(ctx: TaskContext) -> Any:
    return {"sum": sum(r["k"] for r in ctx.dependency_results.values())}


class Runner:
    """One scheduler stepped by hand, with the data-flow handlers."""

    def __init__(self, app: Flask, **handlers: Any) -> None:
        self.store: Store = app.extensions["store"]
        self.threads = Threads(8)
        self.clock = Clock()
        registry = Registry()
        for name, handler in {"map": map_handler, "leaf": leaf, "join": join, **handlers}.items():
            registry.register(name, handler)
        names = iter(f"r{k}" for k in range(100))
        self.scheduler = open_scheduler(
            self.store,
            registry,
            cap=8,
            executor=lambda _workers: self.threads,
            name=lambda: next(names),
            clock=self.clock,
        )

    def drain(self, passes: int = 50) -> None:
        """Pass and let every handler return until nothing is left to run."""
        for _ in range(passes):
            self.scheduler.run_once()
            if not self.threads.live:
                self.clock.seconds += 5  # past any retry backoff
                if self.scheduler.run_once() == 0 and not self.threads.live:
                    return
            for job in list(self.threads.live):
                self.threads.finish(job.running.claim.id)  # type: ignore[attr-defined]
        raise AssertionError("did not drain")


def _add(store: Store, task_id: str, task_type: str, *deps: str, **fields: Any) -> None:
    body = {"id": task_id, "type": task_type, "duration_ms": 1, "dependencies": list(deps)}
    submissions.submit(store.engine, {**body, **fields})


def _ids(store: Store) -> set[str]:
    with database.read(store.engine) as conn:
        return {r[0] for r in conn.execute(text("SELECT id FROM tasks"))}


def test_a_map_task_adds_tasks_its_dependents_wait_for_and_results_flow_down(
    app: Flask,
) -> None:
    runner = Runner(app, collect=lambda ctx: sorted(ctx.dependency_results))
    store = runner.store
    _add(store, "m", "map", payload={"n": 3})
    _add(store, "after", "collect", "m")  # waits for m and, once m has run, for what it added
    runner.scheduler.run_once()
    runner.threads.finish("m")
    runner.scheduler.run_once()  # records m's completion and its added tasks together
    assert row(store, "m").status == "COMPLETED"
    assert {"m.0", "m.1", "m.2", "m.join"} <= _ids(store)
    assert row(store, "m.0").batch_id == row(store, "m").batch_id
    # `after` waited for m; now for the last of m's added tasks, the join, which waits
    # for the rest.
    assert row(store, "after").pending_deps == 1
    assert app.test_client().get("/api/tasks/after").get_json()["dependencies"] == [
        "m",
        "m.join",
    ]
    runner.drain()
    assert row(store, "m.1").result == {"k": 1, "of": 3}
    assert row(store, "m.join").result == {"sum": 3}
    # `after` ran last, and read every dependency's result: m's and the join's.
    assert row(store, "after").status == "COMPLETED"
    assert row(store, "after").result == ["m", "m.join"]


def test_dependency_results_are_read_once_per_attempt(app: Flask) -> None:
    reads: list[str] = []
    calls: list[dict[str, Any]] = []

    def twice(ctx: TaskContext) -> Any:
        calls.append(ctx.dependency_results)
        calls.append(ctx.dependency_results)
        return None

    runner = Runner(app, twice=twice)
    store = runner.store
    original = store.dependency_results

    def counted(task_id: str) -> dict[str, Any]:
        reads.append(task_id)
        return original(task_id)

    store.dependency_results = counted  # type: ignore[method-assign]
    _add(store, "a", "leaf_source")
    set_fields(store, "a", status="COMPLETED", result={"x": 1})
    _add(store, "b", "twice", "a")
    runner.drain()
    assert reads == ["b"]
    assert calls == [{"a": {"x": 1}}, {"a": {"x": 1}}]


def test_dependency_results_past_the_limit_fail_the_attempt_saying_so(app: Flask) -> None:
    runner = Runner(app, reader=lambda ctx: len(ctx.dependency_results))
    store = runner.store
    big = {"blob": "x" * 60_000}
    parents = [f"p{k}" for k in range(MAX_DEPENDENCY_RESULTS_BYTES // 60_000 + 2)]
    for parent in parents:
        _add(store, parent, "leaf")
        set_fields(store, parent, status="COMPLETED", result=big)
    _add(store, "reader", "reader", *parents)
    runner.drain()
    done = row(store, "reader")
    assert done.status == "FAILED" and done.error_code == "handler_error"
    assert "dependency_results loads at most" in done.error


def test_added_tasks_past_max_queued_fail_the_attempt_with_queue_full_and_it_retries(
    make_app: AppFactory,
) -> None:
    app = make_app(MAX_QUEUED_TASKS="3")
    runner = Runner(app)
    store = runner.store
    _add(store, "m", "map", payload={"n": 5}, max_attempts=2, retry_backoff_ms=0)
    runner.scheduler.run_once()
    runner.threads.finish("m")
    runner.scheduler.run_once()
    # Failed, retried at once (no backoff): the second attempt runs, none of the six exist.
    again = row(store, "m")
    assert (again.status, again.attempts, again.failures) == ("RUNNING", 2, 1)
    assert _ids(store) == {"m"}
    runner.drain()
    failed = row(store, "m")
    assert (failed.status, failed.error_code, failed.failures) == ("FAILED", "queue_full", 2)
    assert "refused (queue_full)" in failed.error
    assert _ids(store) == {"m"}


def test_added_tasks_whose_ids_are_taken_fail_the_attempt(app: Flask) -> None:
    runner = Runner(app)
    store = runner.store
    _add(store, "m.1", "leaf")
    _add(store, "m", "map", payload={"n": 2})
    runner.scheduler.run_once()
    for claim_id in [j.running.claim.id for j in runner.threads.live]:  # type: ignore[attr-defined]
        runner.threads.finish(claim_id)
    runner.scheduler.run_once()
    done = row(store, "m")
    assert (done.status, done.error_code) == ("FAILED", "duplicate_id")
    assert "m.0" not in _ids(store)


def test_a_completion_whose_transaction_fails_leaves_no_added_task(app: Flask) -> None:
    runner = Runner(app)
    store = runner.store
    spawn = store.spawn
    assert spawn is not None

    def crash_after(*args: Any) -> None:
        spawn(*args)
        raise RuntimeError("the process dies before the commit")

    store.spawn = crash_after
    _add(store, "m", "map", payload={"n": 2})
    runner.scheduler.run_once()
    runner.threads.finish("m")
    with pytest.raises(RuntimeError, match="dies before the commit"):
        runner.scheduler.run_once()
    assert row(store, "m").status == "RUNNING"
    assert _ids(store) == {"m"}
    store.spawn = spawn
    runner.scheduler.run_once()
    assert row(store, "m").status == "COMPLETED"
    assert {"m.0", "m.1", "m.join"} <= _ids(store)


def test_a_stale_attempt_adds_nothing(app: Flask) -> None:
    runner = Runner(app)
    store = runner.store
    _add(store, "m", "map", payload={"n": 2}, max_attempts=2)
    runner.scheduler.run_once()
    (running,) = runner.scheduler.attempts()
    # Another instance took the task over meanwhile (as after this one was declared dead).
    set_fields(store, "m", attempts=2, worker="someone-else")
    runner.threads.finish("m")
    runner.scheduler.run_once()
    assert _ids(store) == {"m"}
    assert running.key == ("m", 1)


@pytest.mark.parametrize(
    ("added", "message"),
    [
        ([{"type": "leaf", "duration_ms": 1, "dependencies": ["elsewhere"]}], "may depend only"),
        ([{"type": "leaf", "duration_ms": "1"}], "is invalid"),
        ([{"id": "x", "type": "leaf", "duration_ms": 1}] * 2, "used twice"),
        (
            [
                {"id": "x", "type": "leaf", "duration_ms": 1, "dependencies": ["y"]},
                {"id": "y", "type": "leaf", "duration_ms": 1, "dependencies": ["x"]},
            ],
            "form a cycle",
        ),
        (["not a dict"], "is not a dict"),
    ],
)
def test_add_tasks_refuses_what_a_batch_refuses(added: list[Any], message: str) -> None:
    ctx = TaskContext("m", "map", 1, {}, 1)
    with pytest.raises(HandlerFailed, match=message):
        ctx.add_tasks(added)
    assert ctx.added == []


def test_a_failing_added_task_stops_the_dependents_of_the_task_that_added_it(
    app: Flask,
) -> None:
    def map_failing(ctx: TaskContext) -> Any:
        ctx.add_tasks(
            [
                {
                    "id": "bad.0",
                    "type": "leaf",
                    "duration_ms": 1,
                    "payload": {"fail": True},
                    "dependencies": [ctx.id],
                }
            ]
        )
        return {"n": 1}

    runner = Runner(app, map_failing=map_failing)
    store = runner.store
    _add(store, "m", "map_failing")
    _add(store, "after", "leaf", "m")
    runner.drain()
    assert row(store, "bad.0").status == "FAILED"
    assert row(store, "after").status == "UPSTREAM_FAILED"


def test_a_nan_fails_the_attempt_cleanly_and_every_other_outcome_is_written(app: Flask) -> None:
    """PostgreSQL refuses NaN as JSON: in an added task's payload or in a result it made
    every pass fail, holding the outcomes of the pass's other attempts."""

    def nan_payload(ctx: TaskContext) -> Any:
        ctx.add_tasks([{"type": "leaf", "duration_ms": 1, "payload": {"x": float("nan")}}])

    runner = Runner(
        app, nan_payload=nan_payload, nan_result=lambda ctx: {"x": float("inf")}, ok=lambda c: 1
    )
    store = runner.store
    for task_id, task_type in (("p", "nan_payload"), ("r", "nan_result"), ("fine", "ok")):
        _add(store, task_id, task_type)
    runner.drain()
    assert row(store, "fine").status == "COMPLETED"
    for task_id, said in (("p", "NaN or Infinity"), ("r", "not JSON")):
        failed = row(store, task_id)
        assert (failed.status, failed.error_code) == ("FAILED", "handler_error"), task_id
        assert said in failed.error
    assert _ids(store) == {"p", "r", "fine"}


def test_a_value_the_database_refuses_fails_the_attempt_not_every_pass(app: Flask) -> None:
    from sqlalchemy.exc import DataError

    runner = Runner(app)
    store = runner.store

    def refuse(*_args: Any) -> None:
        raise DataError("COPY tasks", None, ValueError("invalid input syntax for type json"))

    store.spawn = refuse
    _add(store, "m", "map", payload={"n": 1})
    _add(store, "fine", "leaf_free")
    runner.drain()
    failed = row(store, "m")
    assert (failed.status, failed.error_code) == ("FAILED", "invalid_added_tasks")


def test_dependents_wait_for_the_last_added_tasks_within_the_dependency_limit(
    app: Flask,
) -> None:
    def wide(ctx: TaskContext) -> Any:
        ctx.add_tasks(
            {"id": f"{ctx.id}.{k}", "type": "leaf_free", "duration_ms": 1} for k in range(1000)
        )

    runner = Runner(app, wide=wide, leaf_free=lambda ctx: None)
    store = runner.store
    _add(store, "w", "wide")
    _add(store, "after", "leaf_free", "w")
    runner.drain()
    refused = row(store, "w")
    assert (refused.status, refused.error_code) == ("FAILED", "validation_error")
    assert "would wait for 1001 tasks" in refused.error
    # With a join, the dependent waits for the join alone.
    _add(store, "m", "map", payload={"n": 50})
    _add(store, "later", "leaf_free", "m")
    runner.drain()
    deps = app.test_client().get("/api/tasks/later").get_json()["dependencies"]
    assert deps == ["m", "m.join"]


@pytest.mark.postgres
def test_a_dependent_submitted_during_the_completion_waits_for_it_to_commit(
    postgres_url: str,
) -> None:
    """A task submitted, naming the adding task, while its completion is being written must
    either be among the dependents that gain the added tasks, or come after the completion
    (and so see the task COMPLETED): never between, left waiting for nothing."""
    app = build_app(postgres_url, {})
    runner = Runner(app)
    store = runner.store
    _add(store, "m", "map", payload={"n": 2})
    runner.scheduler.run_once()
    runner.threads.finish("m")
    at_insert = threading.Event()
    release = threading.Event()

    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "max(other.position)" in statement and not at_insert.is_set():
            at_insert.set()
            assert release.wait(timeout=30)

    event.listen(store.engine, "before_cursor_execute", hold)
    completer = threading.Thread(target=runner.scheduler.run_once)
    completer.start()
    submitted = threading.Event()
    monitor = Monitor(store.engine)
    try:
        assert at_insert.wait(timeout=30)

        def submit_dependent() -> None:
            _add(store, "late", "leaf_free", "m")
            submitted.set()

        submitter = threading.Thread(target=submit_dependent)
        submitter.start()
        deadline = time.monotonic() + 30
        while not monitor.any_waiting_for_lock(exclude=0):
            assert not submitted.is_set(), "the dependent was stored while m's completion was open"
            assert time.monotonic() < deadline, "the submission neither waited nor finished"
            time.sleep(0.01)
    finally:
        release.set()
        completer.join(timeout=30)
        monitor.close()
        event.remove(store.engine, "before_cursor_execute", hold)
    submitter.join(timeout=30)
    assert submitted.is_set()
    late = row(store, "late")
    assert row(store, "m").status == "COMPLETED" and late.created_at >= row(store, "m").finished_at
    store.engine.dispose()


def test_a_replay_of_a_dependent_that_gained_added_tasks_is_still_the_same_submission(
    app: Flask,
) -> None:
    """The added tasks a dependent waits for are the graph's doing, not its submitter's: a
    client replaying the dependent's POST (it never saw the answer), alone or in its batch,
    after the dependency added tasks gets 200 and the task; a different body still 409."""
    runner = Runner(app)
    store = runner.store
    client = app.test_client()
    single = {"id": "after", "type": "join", "duration_ms": 1, "dependencies": ["m"]}
    batch = {
        "tasks": [
            {"id": "n", "type": "map", "duration_ms": 1, "payload": {"n": 2}},
            {"id": "next", "type": "join", "duration_ms": 1, "dependencies": ["n"]},
        ]
    }
    _add(store, "m", "map", payload={"n": 2})
    assert client.post("/api/tasks", json=single).status_code == 201
    assert client.post("/api/tasks/batch", json=batch).status_code == 201
    runner.scheduler.run_once()
    runner.threads.finish("m")
    runner.threads.finish("n")
    runner.scheduler.run_once()  # m and n complete, adding tasks their dependents adopt
    assert client.get("/api/tasks/after").get_json()["dependencies"] == ["m", "m.join"]

    replayed = client.post("/api/tasks", json=single)
    assert replayed.status_code == 200, replayed.get_json()
    assert replayed.get_json()["dependencies"] == ["m", "m.join"]
    again = client.post("/api/tasks/batch", json=batch)
    assert again.status_code == 200, again.get_json()
    for dependencies in (["m", "m.join"], []):
        other = client.post("/api/tasks", json={**single, "dependencies": dependencies})
        assert other.status_code == 409
        assert other.get_json()["details"]["fields"] == ["dependencies"]
