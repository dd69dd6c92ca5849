"""A state-machine model of scheduling, checked against the store after every step.

Hypothesis submits small graphs (single tasks and batches), claims, finishes attempts
(success, failure, cancelled), cancels, retries, crashes and restarts, and drains; all in
the test thread through the Store API and the services, with no scheduler thread, so each
run is deterministic. A plain Python model predicts every status, and every claim.
`FUZZ_EXAMPLES` raises the number of runs, `FUZZ_STEPS` their length, `FUZZ_SEED` the seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select

from app.errors import InvalidState
from app.services import actions, batch, submissions
from app.statuses import TERMINAL, Status
from app.storage import database
from app.storage.store import Claim, Outcome, Store
from app.storage.tables import deps, instances, tasks
from tests.support.apps import build_app, process_engine

SEED = int(os.environ.get("FUZZ_SEED", "20261127"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
STEPS = int(os.environ.get("FUZZ_STEPS", "30"))

QUEUED, RUNNING, COMPLETED = Status.QUEUED, Status.RUNNING, Status.COMPLETED
FAILED, UPSTREAM_FAILED, CANCELLED = Status.FAILED, Status.UPSTREAM_FAILED, Status.CANCELLED
BLOCKING = {FAILED, UPSTREAM_FAILED, CANCELLED}
# Cleanups (all_done) are where a finished dependency can come back: drawn more often.
RULES = ["all_success", "all_done", "all_done"]


@dataclass
class Task:
    """What the model knows of one task."""

    seq: int
    deps: list[str]
    rule: str
    max_attempts: int
    priority: int
    held: bool  # run_at in the future: never ready during a run
    status: Status = QUEUED
    error_code: str | None = None
    attempts: int = 0
    failures: int = 0
    cancel_requested: bool = False
    dependents: list[str] = field(default_factory=list)


def open_store(url: str) -> Store:
    """A new engine and Store on `url`, as a freshly started process would have."""
    return Store(process_engine(url))


class Scheduling(RuleBasedStateMachine):
    """Rules are what users and schedulers do; invariants are what must always hold."""

    url = ""  # set by the test: an empty database with the schema

    def __init__(self) -> None:
        super().__init__()
        self.store = open_store(self.url)
        with database.write(self.store.engine) as conn:
            for table in (deps, tasks, instances):
                conn.execute(delete(table))
        self.tasks: dict[str, Task] = {}
        self.running: dict[str, Claim] = {}  # task id -> the claim this process holds
        self.stale: list[Claim] = []  # claims a restart or a drain took away
        self.claimed: set[tuple[str, int]] = set()
        self.generation = 0
        self.worker = self._join()

    def teardown(self) -> None:
        self.store.engine.dispose()

    def _join(self) -> str:
        self.generation += 1
        worker = f"model-{self.generation}"
        now = database.utcnow()
        self.store.register(
            {"id": worker, "hostname": "model", "pid": 0, "started_at": now, "heartbeat_at": now}
        )
        return worker

    # -- the model --------------------------------------------------------------------

    def ready(self) -> list[str]:
        """Return the tasks a claim may take, best first."""
        found = []
        for task_id, task in self.tasks.items():
            wanted = TERMINAL if task.rule == "all_done" else {COMPLETED}
            statuses = [self.tasks[d].status for d in task.deps]
            if task.status is QUEUED and not task.held and all(s in wanted for s in statuses):
                found.append(task_id)
        return sorted(found, key=lambda t: (-self.tasks[t].priority, self.tasks[t].seq))

    def born(self, task_id: str, deps: list[str], **spec: Any) -> None:
        """Add a submitted task as the service stores it: QUEUED, or dead on arrival."""
        task = Task(seq=len(self.tasks), deps=deps, **spec)
        self.tasks[task_id] = task
        for dependency in deps:
            self.tasks[dependency].dependents.append(task_id)
        statuses = {self.tasks[d].status for d in deps}
        if task.rule == "all_success" and statuses & {FAILED, UPSTREAM_FAILED}:
            task.status, task.error_code = UPSTREAM_FAILED, "upstream_failed"
        elif task.rule == "all_success" and CANCELLED in statuses:
            task.status, task.error_code = CANCELLED, "upstream_cancelled"

    def cut_off(self, ended: list[str], status: Status) -> list[str]:
        """End the QUEUED all_success dependents of `ended` as `status`; return them."""
        code = "upstream_failed" if status is UPSTREAM_FAILED else "upstream_cancelled"
        stopped = []
        for task_id in ended:
            for dependent in self.tasks[task_id].dependents:
                task = self.tasks[dependent]
                if task.status is QUEUED and task.rule == "all_success":
                    task.status, task.error_code = status, code
                    stopped.append(dependent)
        return stopped

    def settle(self, ended: dict[str, Status]) -> None:
        """Cascade to every QUEUED all_success task below; a failure anywhere above a task
        wins over a cancel, so the failures go down first."""
        for kinds, status in (
            ((FAILED, UPSTREAM_FAILED), UPSTREAM_FAILED),
            ((CANCELLED,), CANCELLED),
        ):
            frontier = [t for t, s in ended.items() if s in kinds]
            while frontier:
                frontier = self.cut_off(frontier, status)

    def outcome_status(self, task_id: str, outcome: Outcome) -> Status:
        """Apply one fenced outcome to the model's task; return its new status."""
        task = self.tasks[task_id]
        status = outcome.status
        code = outcome.error_code
        if status is FAILED:
            task.failures += 1
            if task.cancel_requested:
                # Asked to stop, it failed: it ends as asked, never retried.
                status, code = CANCELLED, "cancelled"
            elif task.failures < task.max_attempts:
                status = QUEUED
        task.status, task.error_code = status, code
        return status

    def apply(self, finished: list[tuple[Claim, Outcome]]) -> None:
        ended = {}
        for claim, outcome in finished:
            status = self.outcome_status(claim.id, outcome)
            if status in TERMINAL:
                ended[claim.id] = status
        self.settle(ended)

    def took(self, claims: list[Claim], limit: int) -> None:
        """Check a claim against the model's prediction, then record it."""
        assert [c.id for c in claims] == self.ready()[:limit]
        for claim in claims:
            task = self.tasks[claim.id]
            statuses = [self.tasks[d].status for d in task.deps]
            wanted = TERMINAL if task.rule == "all_done" else {COMPLETED}
            assert all(s in wanted for s in statuses), (claim.id, statuses)
            assert (claim.id, claim.attempt) not in self.claimed
            self.claimed.add((claim.id, claim.attempt))
            task.status, task.attempts = RUNNING, task.attempts + 1
            assert claim.attempt == task.attempts
            self.running[claim.id] = claim

    # -- what users do ----------------------------------------------------------------

    def _spec(self, data: Any) -> dict[str, Any]:
        return {
            "rule": data.draw(st.sampled_from(RULES), label="rule"),
            "max_attempts": data.draw(st.integers(1, 3), label="max_attempts"),
            "priority": data.draw(st.sampled_from([0, 0, 1]), label="priority"),
            "held": data.draw(st.integers(0, 9), label="held") == 0,
        }

    def _body(self, task_id: str, deps: list[str], spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "id": task_id,
            "type": "simulate",
            "duration_ms": 1,
            "dependencies": deps,
            "trigger_rule": spec["rule"],
            "max_attempts": spec["max_attempts"],
            "priority": spec["priority"],
            "retry_backoff_ms": 0,
        }
        if spec["held"]:
            body["run_at"] = database.utcnow() + timedelta(days=1)
        return body

    @staticmethod
    def _some(data: Any, pool: list[str], label: str, most: int = 3) -> list[str]:
        """Draw up to `most` distinct members of `pool`."""
        if not pool:
            return []
        return data.draw(st.lists(st.sampled_from(pool), max_size=most, unique=True), label=label)

    def _existing(self, data: Any, label: str) -> list[str]:
        return self._some(data, sorted(self.tasks), label)

    @rule(data=st.data())
    def submit(self, data: Any) -> None:
        task_id = f"t{len(self.tasks)}"
        deps = self._existing(data, "dependencies")
        spec = self._spec(data)
        submitted = submissions.submit(self.store.engine, self._body(task_id, deps, spec))
        self.born(task_id, deps, **spec)
        assert Status(submitted.task["status"]) is self.tasks[task_id].status

    @initialize(data=st.data(), size=st.integers(2, 4))
    def start(self, data: Any, size: int) -> None:
        """Begin with a small graph, so that the first steps have something to run."""
        self.submit_batch(data, size)

    @rule(data=st.data(), size=st.integers(1, 3))
    def submit_batch(self, data: Any, size: int) -> None:
        first = len(self.tasks)
        ids = [f"t{first + i}" for i in range(size)]
        graph: dict[str, list[str]] = {}
        for index, task_id in enumerate(ids):
            graph[task_id] = self._some(data, ids[:index], f"{task_id} in the batch", most=2)
            outside = self._existing(data, task_id)
            graph[task_id] += [d for d in outside if d not in graph[task_id]]
        specs = {task_id: self._spec(data) for task_id in ids}
        # Sent in any order: the service creates dependencies first.
        sent = data.draw(st.permutations(ids), label="order")
        body = {"tasks": [self._body(t, graph[t], specs[t]) for t in sent]}
        stored = batch.submit_batch(self.store.engine, body)
        born = {}
        for task_id in ids:  # dependencies first; seq follows the order sent
            self.born(task_id, graph[task_id], **specs[task_id])
            born[task_id] = self.tasks[task_id]
        for order, task_id in enumerate(sent):
            born[task_id].seq = first + order
        assert [t["id"] for t in stored.tasks] == sent
        assert all(Status(t["status"]) is self.tasks[t["id"]].status for t in stored.tasks)

    def _target(self, data: Any, likely: list[str], label: str) -> str:
        """Pick a task: one of `likely` (where the interesting cases are) or any."""
        pool = likely if likely and data.draw(st.booleans(), label="likely") else self.tasks
        return data.draw(st.sampled_from(sorted(pool)), label=label)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel(self, data: Any) -> None:
        task_id = self._target(data, list(self.running), "cancel")
        task = self.tasks[task_id]
        if task.status in TERMINAL:
            with pytest.raises(InvalidState):
                actions.cancel(self.store.engine, task_id)
            return
        shown = actions.cancel(self.store.engine, task_id)
        if task.status is QUEUED:
            task.status, task.error_code = CANCELLED, "cancelled"
            self.settle({task_id: CANCELLED})
        else:
            task.cancel_requested = True
            self.settle(dict.fromkeys(self.cut_off([task_id], CANCELLED), CANCELLED))
        assert Status(shown["status"]) is task.status

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def retry(self, data: Any) -> None:
        ended = [t for t, task in self.tasks.items() if task.status in BLOCKING]
        # Above all those with a dependent that already runs (an all_done cleanup).
        busy = [t for t in ended if any(d in self.running for d in self.tasks[t].dependents)]
        task_id = self._target(data, busy or ended, "retry")
        requeued = self.retried(task_id)
        if requeued is None:
            with pytest.raises(InvalidState):
                actions.retry(self.store.engine, task_id)
            return
        shown = actions.retry(self.store.engine, task_id)
        for other in requeued:
            task = self.tasks[other]
            task.status, task.error_code = QUEUED, None
            task.failures, task.cancel_requested = 0, False
        assert Status(shown["status"]) is QUEUED

    def retried(self, root: str) -> set[str] | None:
        """Return what a retry of `root` requeues, or None when it must be refused."""
        task = self.tasks[root]
        if task.status not in BLOCKING:
            return None
        # A task stopped by a dependency that did not complete waits for that one's retry.
        blocked = any(self.tasks[d].status in BLOCKING for d in task.deps)
        if task.rule == "all_success" and blocked:
            return None
        caught = {root}
        frontier = [root]
        while frontier:
            found = [
                d
                for t in frontier
                for d in self.tasks[t].dependents
                if d not in caught and self.was_caught(d)
            ]
            caught.update(found)
            frontier = found
        while True:  # keep those whose every blocking dependency comes back too
            kept = {
                t
                for t in caught
                if t == root
                or all(
                    d in caught or self.tasks[d].status not in BLOCKING for d in self.tasks[t].deps
                )
            }
            if kept == caught:
                return kept
            caught = kept

    def was_caught(self, task_id: str) -> bool:
        task = self.tasks[task_id]
        return task.status is UPSTREAM_FAILED or task.error_code == "upstream_cancelled"

    # -- what a scheduler does --------------------------------------------------------

    @rule(limit=st.integers(1, 3))
    def claim(self, limit: int) -> None:
        self.took(self.store.claim(self.worker, limit), limit)

    def _outcome(self, data: Any, task_id: str) -> Outcome:
        choices = ["success", "result", "failure"]
        if self.tasks[task_id].cancel_requested:
            choices.append("cancelled")  # the handler saw the request and stopped
        kind = data.draw(st.sampled_from(choices), label=f"outcome of {task_id}")
        if kind == "success":
            return Outcome(COMPLETED)
        if kind == "result":
            return Outcome(COMPLETED, result={"of": task_id})
        if kind == "failure":
            return Outcome(FAILED, error="It broke.", error_code="handler_error")
        return Outcome(CANCELLED, error="Cancelled while running.", error_code="cancelled")

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: Any) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.running)), label="finish")
        claim = self.running.pop(task_id)
        outcome = self._outcome(data, task_id)
        assert self.store.finish(claim, outcome)
        self.apply([(claim, outcome)])

    @rule(data=st.data(), limit=st.integers(0, 3))
    def cycle(self, data: Any, limit: int) -> None:
        """A scheduler pass: record several outcomes and claim, in one transaction."""
        ids = self._some(data, sorted(self.running), "finished", most=len(self.running))
        finished = [(self.running.pop(t), self._outcome(data, t)) for t in ids]
        done = self.store.cycle(self.worker, finished, limit)
        assert done.applied == [True] * len(finished)
        self.apply(finished)
        self.took(done.claims, limit)

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def late_write(self, data: Any) -> None:
        """An attempt that was taken away reports: the fence refuses it."""
        claim = data.draw(st.sampled_from(self.stale), label="stale claim")
        assert not self.store.finish(claim, self._outcome(data, claim.id))

    @precondition(lambda self: self.running)
    @rule()
    def crash_and_restart(self) -> None:
        """The process dies; a new one starts on the same database and recovers its work."""
        self.store.engine.dispose()
        self.store = open_store(self.url)
        dead, self.worker = self.worker, self._join()
        reaped = self.store.reap(dead, "the process exited")
        assert sorted(reaped) == sorted(self.running)
        interrupted = []
        for task_id, claim in self.running.items():
            if self.tasks[task_id].cancel_requested:
                # The attempt ended; a user had asked for the task to stop.
                outcome = Outcome(CANCELLED, error_code="cancelled")
            else:
                outcome = Outcome(FAILED, error_code="interrupted")
            interrupted.append((claim, outcome))
        self.stale += self.running.values()
        self.running = {}
        self.apply(interrupted)

    @precondition(lambda self: self.running)
    @rule()
    def drain(self) -> None:
        """A graceful stop: what still runs goes back to QUEUED, without spending budget."""
        ended = {}
        for task_id, claim in self.running.items():
            assert self.store.requeue(claim)
            task = self.tasks[task_id]
            if task.cancel_requested:
                task.status, task.error_code = CANCELLED, "cancelled"
                ended[task_id] = CANCELLED
            else:
                task.status = QUEUED
        self.settle(ended)
        self.stale += self.running.values()
        self.running = {}
        self.store.deregister(self.worker)
        self.worker = self._join()

    # -- what must always hold ----------------------------------------------------------

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        with database.read(self.store.engine) as conn:
            rows = {r.id: r for r in conn.execute(select(tasks))}
            edges = conn.execute(select(deps.c.task_id, deps.c.dependency_id)).all()
        assert sorted(rows) == sorted(self.tasks)
        assert sorted(edges) == sorted((t, d) for t in self.tasks for d in self.tasks[t].deps)
        for task_id, task in self.tasks.items():
            row = rows[task_id]
            assert (Status(row.status), row.attempts) == (task.status, task.attempts), task_id
            if task.status is CANCELLED or task.status is UPSTREAM_FAILED:
                assert row.error_code == task.error_code, task_id
            if task.status is RUNNING:
                assert row.worker == self.worker, task_id

    @invariant()
    def nothing_waits_for_what_cannot_come(self) -> None:
        with database.read(self.store.engine) as conn:
            rows = {r.id: r for r in conn.execute(select(tasks))}
        for task_id, task in self.tasks.items():
            row = rows[task_id]
            if row.status != QUEUED:
                continue
            statuses = [rows[d].status for d in task.deps]
            # A QUEUED task waits for exactly its unfinished dependencies...
            assert row.pending_deps == sum(s not in TERMINAL for s in statuses), task_id
            # ...and never behind one that can no longer complete, unless it runs anyway.
            if task.rule == "all_success":
                assert not any(s in BLOCKING for s in statuses), task_id


def test_scheduling_follows_the_model(database_url: str) -> None:
    app = build_app(database_url, {})  # creates the schema
    app.extensions["store"].engine.dispose()
    Scheduling.url = database_url
    run_state_machine_as_test(
        seed(SEED)(Scheduling),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- what the model found, as plain examples ---------------------------------------------


def started(store: Store, worker: str, *ids: str) -> dict[str, Claim]:
    """Claim every ready task as `worker` (registered if need be); return them by id."""
    if worker not in {i.id for i in store.instances()}:
        now = database.utcnow()
        row = {"id": worker, "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
        store.register(row)
    claims = {c.id: c for c in store.claim(worker, 10)}
    assert sorted(claims) == sorted(ids)
    return claims


def status_of(store: Store, task_id: str) -> tuple[str, int, str | None]:
    with database.read(store.engine) as conn:
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
    return row.status, row.pending_deps, row.error_code


def test_a_cleanup_requeued_while_its_dependency_reruns_waits_for_it(database_url: str) -> None:
    store = build_app(database_url, {}).extensions["store"]
    add = {"type": "simulate", "duration_ms": 1, "retry_backoff_ms": 0}
    cleanup = {"dependencies": ["work"], "trigger_rule": "all_done", "max_attempts": 2}
    broke = Outcome(FAILED, error="It broke.", error_code="handler_error")
    submissions.submit(store.engine, {"id": "work", **add})
    submissions.submit(store.engine, {"id": "cleanup", **cleanup, **add})
    assert store.finish(started(store, "w1", "work")["work"], broke)
    running = started(store, "w1", "cleanup")["cleanup"]
    actions.retry(store.engine, "work")  # while the cleanup runs
    assert store.finish(running, broke)
    # Back in the queue, the cleanup waits for the rerun of its dependency again.
    assert status_of(store, "cleanup") == ("QUEUED", 1, "handler_error")
    assert list(started(store, "w1", "work")) == ["work"]
    store.engine.dispose()


@pytest.mark.parametrize("ending", ["crash", "drain"])
def test_an_attempt_asked_to_stop_ends_cancelled_when_it_is_cut_short(
    database_url: str, ending: str
) -> None:
    store = build_app(database_url, {}).extensions["store"]
    task = {"id": "a", "type": "simulate", "duration_ms": 1, "max_attempts": 3}
    submissions.submit(store.engine, task)
    claim = started(store, "w1", "a")["a"]
    actions.cancel(store.engine, "a")
    if ending == "crash":
        assert store.reap("w1", "the process exited") == ["a"]
    else:
        assert store.requeue(claim)
    # Not retried, though its budget allows: a user asked for it to stop.
    assert status_of(store, "a") == ("CANCELLED", 0, "cancelled")
    assert started(store, "w2") == {}
    store.engine.dispose()
