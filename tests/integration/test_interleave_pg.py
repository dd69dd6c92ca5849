"""Races between two PostgreSQL sessions on every path that reads dependency statuses.

Each scenario builds a small graph, then races two operations: one is paused before each
of its statements (and its commit) in turn while the other runs, in both orders. After
every interleaving the task table must hold its invariants and equal the result of one
of the two serial executions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.services import actions, queues, schedules, submissions
from app.services.batch import submit_batch
from app.statuses import Status
from app.storage import retention
from app.storage.database import utcnow
from app.storage.store import Claim, Outcome, Store
from tests.support.apps import build_app, postgres_schema
from tests.support.interleave import (
    DEADLOCK,
    Explorer,
    Hang,
    Scenario,
    Step,
    read_state,
    sqlstate,
    tune_sessions,
    violations,
)

pytestmark = pytest.mark.postgres

WORKER = "w1"


@dataclass
class Graph:
    """A scenario's world: the engine and the attempts its setup claimed."""

    engine: Engine
    claims: dict[str, Claim] = field(default_factory=dict)

    @property
    def claimed(self) -> set[str]:
        """The tasks the setup claimed."""
        return set(self.claims)

    @property
    def store(self) -> Store:
        """A store on the world's engine."""
        return Store(self.engine)

    def add(self, task_id: str, *dependencies: str, rule: str = "all_success") -> None:
        """Submit a task through the public submission path."""
        body = {"id": task_id, "type": "t", "duration_ms": 1, "trigger_rule": rule}
        submissions.submit(self.engine, {**body, "dependencies": list(dependencies)})

    def register(self) -> None:
        """Register the scheduler instance that claims, once."""
        store = self.store
        if WORKER not in {i.id for i in store.instances()}:
            now = utcnow()
            store.register(
                {"id": WORKER, "hostname": "test", "pid": 0, "started_at": now, "heartbeat_at": now}
            )

    def claim(self, *expected: str) -> None:
        """Claim every ready task; they must be exactly `expected`."""
        self.register()
        claims = self.store.claim(WORKER, 100)
        assert sorted(c.id for c in claims) == sorted(expected)
        self.claims.update((c.id, c) for c in claims)

    def finish(self, task_id: str, status: Status) -> None:
        """End a claimed attempt; it must apply."""
        assert self.store.finish(self.claims[task_id], outcome(status))


def outcome(status: Status) -> Outcome:
    """An attempt's ending with the given status."""
    if status is Status.FAILED:
        return Outcome(Status.FAILED, error="boom", error_code="handler_error")
    return Outcome(status)


# -- the operations ------------------------------------------------------------------


def retry(task_id: str) -> Step:
    """A user retries a task."""
    return Step(f"retry({task_id})", lambda g: actions.retry(g.engine, task_id))


def cancel(task_id: str) -> Step:
    """A user cancels a task."""
    return Step(f"cancel({task_id})", lambda g: actions.cancel(g.engine, task_id))


def finish(task_id: str, status: Status) -> Step:
    """The scheduler records how the claimed attempt of a task ended."""
    return Step(
        f"finish({task_id}, {status.value})",
        lambda g: g.store.finish(g.claims[task_id], outcome(status)),
    )


def requeue(task_id: str) -> Step:
    """The scheduler puts a running attempt back at shutdown."""
    return Step(f"requeue({task_id})", lambda g: g.store.requeue(g.claims[task_id]))


def claim(instance: str = "") -> Step:
    """The scheduler (of `instance`, when two race) claims every ready task."""
    label = f"claim({instance})" if instance else "claim"
    return Step(label, lambda g: g.store.claim(WORKER, 100))


def cycle(task_id: str, status: Status) -> Step:
    """One scheduler pass: record how a claimed attempt ended and claim what is ready."""
    return Step(
        f"cycle(finish {task_id} {status.value}, claim)",
        lambda g: g.store.cycle(WORKER, [(g.claims[task_id], outcome(status))], 100),
    )


def submit(task_id: str, *dependencies: str, rule: str = "all_success") -> Step:
    """A client submits a new task."""
    body = {
        "id": task_id,
        "type": "t",
        "duration_ms": 1,
        "dependencies": list(dependencies),
        "trigger_rule": rule,
    }
    return Step(
        f"submit({task_id} <- {', '.join(dependencies)}, {rule})",
        lambda g: submissions.submit(g.engine, body),
    )


def batch(*tasks: tuple[str, list[str]]) -> Step:
    """A client submits a batch; each task is (id, dependencies)."""
    body = {
        "tasks": [{"id": i, "type": "t", "duration_ms": 1, "dependencies": d} for i, d in tasks]
    }
    shown = "; ".join(f"{i} <- {', '.join(d)}" for i, d in tasks)
    return Step(f"batch({shown})", lambda g: submit_batch(g.engine, body))


def prune() -> Step:
    """Retention deletes every finished task no unfinished task depends on."""
    return Step(
        "prune",
        lambda g: retention.prune(g.engine, timedelta(0), now=utcnow() + timedelta(days=1)),
        compared=False,
    )


SCHEDULED_AT = datetime(2026, 12, 5, 3, 0, 0)


def fire(instance: str) -> Step:
    """An instance's firer fires what is due a minute after the schedule was made."""

    def run(g: Graph) -> int:
        report = schedules.fire_due(g.engine, now=SCHEDULED_AT + timedelta(minutes=1))
        return len(report.fired)

    return Step(f"fire({instance})", run)


def pause() -> Step:
    """A user pauses the schedule."""
    return Step("pause", lambda g: schedules.edit(g.engine, "tick", {"paused": True})["paused"])


def set_overlap() -> Step:
    """Another user changes the schedule's overlap rule."""
    change = {"overlap": "skip"}
    return Step("overlap", lambda g: schedules.edit(g.engine, "tick", change)["overlap"])


def create_schedule(client: str) -> Step:
    """A client creates the schedule `again`; two clients send the same body at once."""
    body = {"id": "again", "interval_s": 60, "task": {"type": "t", "duration_ms": 1}}
    return Step(
        f"create({client})",
        lambda g: schedules.create(g.engine, schedules.parse_new(body)).created,
    )


def reap() -> Step:
    """A live instance declares the worker dead and ends its attempts."""
    return Step("reap(w1)", lambda g: g.store.reap(WORKER, "declared dead"))


# -- the starting states -------------------------------------------------------------


def schedule_due(engine: Engine) -> Graph:
    """A schedule firing every minute, its first instant due."""
    body = {"id": "tick", "interval_s": 60, "task": {"type": "t", "duration_ms": 1}}
    schedules.create(engine, schedules.parse_new(body), now=SCHEDULED_AT)
    return Graph(engine)


def a_failed_b_running(engine: Engine) -> Graph:
    """T <- A, B (all_success), U <- A, B (all_done); A FAILED so T UPSTREAM_FAILED; B RUNNING."""
    g = Graph(engine)
    g.add("A")
    g.add("B")
    g.add("T", "A", "B")
    g.add("U", "A", "B", rule="all_done")
    g.claim("A", "B")
    g.finish("A", Status.FAILED)
    return g


def both_failed(engine: Engine) -> Graph:
    """T <- A, B; both FAILED, T UPSTREAM_FAILED."""
    g = Graph(engine)
    g.add("A")
    g.add("B")
    g.add("T", "A", "B")
    g.claim("A", "B")
    g.finish("A", Status.FAILED)
    g.finish("B", Status.FAILED)
    return g


def two_failed_one_running(engine: Engine) -> Graph:
    """T <- A, B, C; A and B FAILED, T UPSTREAM_FAILED; C RUNNING."""
    g = Graph(engine)
    for name in ("A", "B", "C"):
        g.add(name)
    g.add("T", "A", "B", "C")
    g.claim("A", "B", "C")
    g.finish("A", Status.FAILED)
    g.finish("B", Status.FAILED)
    return g


def a_running(engine: Engine) -> Graph:
    """A RUNNING, nothing depends on it yet."""
    g = Graph(engine)
    g.add("A")
    g.claim("A")
    return g


def a_queued(engine: Engine) -> Graph:
    """A QUEUED behind a RUNNING D, nothing depends on it yet."""
    g = Graph(engine)
    g.add("D")
    g.claim("D")
    g.add("A", "D")
    return g


def a_failed(engine: Engine) -> Graph:
    """A FAILED, nothing depends on it yet."""
    g = a_running(engine)
    g.finish("A", Status.FAILED)
    return g


def a_completed(engine: Engine) -> Graph:
    """A COMPLETED, nothing depends on it."""
    g = a_running(engine)
    g.finish("A", Status.COMPLETED)
    return g


def a_queued_with_siblings(engine: Engine) -> Graph:
    """A <- D; T <- A, B (all_success); U <- A, B (all_done); D and B RUNNING, A QUEUED."""
    g = Graph(engine)
    g.add("D")
    g.add("B")
    g.claim("B", "D")
    g.add("A", "D")
    g.add("T", "A", "B")
    g.add("U", "A", "B", rule="all_done")
    return g


def a_running_with_dependents(engine: Engine) -> Graph:
    """T <- A (all_success), U <- A (all_done); A RUNNING."""
    g = Graph(engine)
    g.add("A")
    g.add("T", "A")
    g.add("U", "A", rule="all_done")
    g.claim("A")
    return g


def all_done_running_before_retried_dependency(engine: Engine) -> Graph:
    """T <- A, B (all_done) RUNNING, claimed once A failed; A retried and RUNNING again."""
    g = Graph(engine)
    g.add("A")
    g.add("B")
    g.add("T", "A", "B", rule="all_done")
    g.claim("A", "B")
    g.finish("A", Status.FAILED)
    g.finish("B", Status.COMPLETED)
    g.claim("T")
    actions.retry(engine, "A")
    g.claim("A")
    return g


def root_failed(engine: Engine) -> Graph:
    """R FAILED, D <- R UPSTREAM_FAILED."""
    g = Graph(engine)
    g.add("R")
    g.add("D", "R")
    g.claim("R")
    g.finish("R", Status.FAILED)
    return g


def root_failed_registered(engine: Engine) -> Graph:
    """R FAILED, D <- R UPSTREAM_FAILED, the claiming instance registered."""
    g = root_failed(engine)
    g.register()
    return g


def two_ready_in_a_limited_queue(engine: Engine) -> Graph:
    """A and B QUEUED and ready in the queue `tight`, whose limit is 1."""
    g = Graph(engine)
    g.register()
    for task_id in ("A", "B"):
        body = {"id": task_id, "type": "t", "duration_ms": 1, "queue": "tight"}
        submissions.submit(engine, body)
    queues.set_limits(engine, "tight", {"concurrency_limit": 1, "rate_limit_per_s": None})
    return g


def pause_queue(name: str) -> Step:
    """A user pauses a queue."""
    return Step(f"pause({name})", lambda g: queues.pause(g.engine, name).queue["paused"])


def a_ready(engine: Engine) -> Graph:
    """A QUEUED and ready, T <- A; the claiming instance registered."""
    g = Graph(engine)
    g.register()
    g.add("A")
    g.add("T", "A")
    return g


def chain_failed_b_running(engine: Engine) -> Graph:
    """A FAILED; T <- A and V <- T, B UPSTREAM_FAILED (two levels down); B RUNNING."""
    g = Graph(engine)
    g.add("A")
    g.add("B")
    g.add("T", "A")
    g.add("V", "T", "B")
    g.claim("A", "B")
    g.finish("A", Status.FAILED)
    return g


def a_running_chain_behind(engine: Engine) -> Graph:
    """A runs; B waits for A and C for B: a cascade from A walks two levels down."""
    g = Graph(engine)
    g.add("A")
    g.add("B", "A")
    g.add("C", "B")
    g.claim("A")
    return g


def a_queued_chain_behind(engine: Engine) -> Graph:
    """A waits for a running D; B waits for A and C for B."""
    g = Graph(engine)
    g.add("D")
    g.claim("D")
    g.add("A", "D")
    g.add("B", "A")
    g.add("C", "B")
    return g


def a_failed_b_queued(engine: Engine) -> Graph:
    """T <- A, B; A FAILED so T UPSTREAM_FAILED; B QUEUED behind a RUNNING E."""
    g = Graph(engine)
    g.add("A")
    g.add("E")
    g.add("B", "E")
    g.add("T", "A", "B")
    g.claim("A", "E")
    g.finish("A", Status.FAILED)
    return g


COMPLETED, FAILED = Status.COMPLETED, Status.FAILED
SCENARIOS = [
    # A retry brings back dependents while their other dependencies change.
    Scenario("retry_vs_finish", a_failed_b_running, retry("A"), finish("B", COMPLETED)),
    Scenario("retry_vs_finish_failed", a_failed_b_running, retry("A"), finish("B", FAILED)),
    Scenario("retry_vs_reap", a_failed_b_running, retry("A"), reap()),
    Scenario("retry_vs_cancel_running", a_failed_b_running, retry("A"), cancel("B")),
    Scenario("retry_vs_cancel_queued", a_failed_b_queued, retry("A"), cancel("B")),
    Scenario("retry_vs_retry", both_failed, retry("A"), retry("B")),
    Scenario("retry_vs_retry_with_running", two_failed_one_running, retry("A"), retry("B")),
    Scenario("retry_vs_finish_third", two_failed_one_running, retry("A"), finish("C", COMPLETED)),
    Scenario("retry_chain_vs_finish", chain_failed_b_running, retry("A"), finish("B", COMPLETED)),
    # A new task reads its dependencies' statuses while they change.
    Scenario("submit_vs_finish_completed", a_running, submit("T", "A"), finish("A", COMPLETED)),
    Scenario("submit_vs_finish_failed", a_running, submit("T", "A"), finish("A", FAILED)),
    Scenario("submit_vs_cancel_queued", a_queued, submit("T", "A"), cancel("A")),
    Scenario("submit_vs_cancel_running", a_running, submit("T", "A"), cancel("A")),
    Scenario("submit_vs_retry", a_failed, submit("T", "A"), retry("A")),
    Scenario("submit_vs_reap", a_running, submit("T", "A"), reap()),
    Scenario("submit_behind_upstream_failed_vs_retry", root_failed, submit("V", "D"), retry("R")),
    # A submission names a task deep in the path of a cascade, read before it is locked.
    Scenario(
        "submit_below_vs_finish_failed",
        a_running_chain_behind,
        submit("T", "C"),
        finish("A", FAILED),
    ),
    Scenario(
        "submit_all_done_below_vs_finish_failed",
        a_running_chain_behind,
        submit("T", "C", rule="all_done"),
        finish("A", FAILED),
    ),
    Scenario("submit_below_vs_cancel_queued", a_queued_chain_behind, submit("T", "C"), cancel("A")),
    Scenario(
        "submit_all_done_below_vs_cancel_running",
        a_running_chain_behind,
        submit("T", "B", rule="all_done"),
        cancel("A"),
    ),
    Scenario(
        "batch_vs_finish_failed", a_running, batch(("T", ["A"]), ("V", ["T"])), finish("A", FAILED)
    ),
    Scenario("batch_vs_cancel_queued", a_queued, batch(("T", ["A"]), ("V", ["T"])), cancel("A")),
    Scenario("batch_vs_retry", a_failed, batch(("T", ["A"]), ("V", ["T"])), retry("A")),
    Scenario(
        "batch_behind_upstream_failed_vs_retry",
        root_failed,
        batch(("V", ["D"]), ("W", ["V"])),
        retry("R"),
    ),
    # A cancel cascades while a dependency of the same dependents ends.
    Scenario(
        "cancel_queued_vs_finish_sibling",
        a_queued_with_siblings,
        cancel("A"),
        finish("B", COMPLETED),
    ),
    Scenario(
        "cancel_queued_vs_finish_sibling_failed",
        a_queued_with_siblings,
        cancel("A"),
        finish("B", FAILED),
    ),
    Scenario(
        "cancel_queued_vs_finish_its_dependency",
        a_queued_with_siblings,
        cancel("A"),
        finish("D", COMPLETED),
    ),
    Scenario(
        "cancel_running_vs_finish_completed",
        a_running_with_dependents,
        cancel("A"),
        finish("A", COMPLETED),
    ),
    Scenario(
        "cancel_running_vs_finish_failed",
        a_running_with_dependents,
        cancel("A"),
        finish("A", FAILED),
    ),
    # An all_done task goes back to the queue while the dependency it must wait for ends.
    Scenario(
        "requeue_all_done_vs_finish",
        all_done_running_before_retried_dependency,
        requeue("T"),
        finish("A", COMPLETED),
    ),
    Scenario(
        "requeue_all_done_vs_finish_failed",
        all_done_running_before_retried_dependency,
        requeue("T"),
        finish("A", FAILED),
    ),
    Scenario(
        "requeue_all_done_vs_cancel",
        all_done_running_before_retried_dependency,
        requeue("T"),
        cancel("A"),
    ),
    # Retention deletes finished tasks while they gain dependents or come back. A later
    # pass deletes what this one skipped; what it deleted cannot come back.
    Scenario("prune_vs_retry", root_failed, prune(), retry("R"), then=prune()),
    Scenario("prune_vs_submit", a_completed, prune(), submit("T", "A"), then=prune()),
    Scenario("prune_vs_submit_behind_failed", a_failed, prune(), submit("T", "A"), then=prune()),
    Scenario("prune_vs_batch", a_completed, prune(), batch(("T", ["A"])), then=prune()),
    # The scheduler claims what pending counts say is ready.
    Scenario("claim_vs_retry", root_failed_registered, claim(), retry("R")),
    Scenario("claim_vs_cancel", a_ready, claim(), cancel("A")),
    # Two instances claim from a queue with one free slot: one takes it.
    Scenario("claim_vs_claim_limited", two_ready_in_a_limited_queue, claim("one"), claim("two")),
    Scenario("claim_vs_pause_queue", two_ready_in_a_limited_queue, claim(), pause_queue("tight")),
    Scenario("cycle_vs_retry", a_failed_b_running, cycle("B", COMPLETED), retry("A")),
    Scenario("cycle_vs_cancel", a_running_with_dependents, cycle("A", COMPLETED), cancel("T")),
    # Two instances fire the same instant: one stores its task, the other nothing.
    Scenario("fire_vs_fire", schedule_due, fire("one"), fire("two")),
    Scenario("fire_vs_pause", schedule_due, fire("one"), pause()),
    # Two clients create the same schedule: one creates it, the other is answered a replay.
    Scenario("create_vs_create", schedule_due, create_schedule("one"), create_schedule("two")),
]


USER_ACTIONS_ONLY = {
    "retry_vs_cancel_running",
    "retry_vs_cancel_queued",
    "retry_vs_retry",
    "retry_vs_retry_with_running",
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with postgres_engine() as found:
        yield found


@contextmanager
def postgres_engine() -> Iterator[Engine]:
    """An app's engine on a fresh PostgreSQL schema, its scheduler not started."""
    with contextmanager(postgres_schema)() as url:
        app = build_app(url, {})
        engine: Engine = app.extensions["store"].engine
        tune_sessions(engine)
        try:
            yield engine
        finally:
            app.extensions["scheduler"].stop(0)
            engine.dispose()


@pytest.fixture
def explorer(engine: Engine) -> Iterator[Explorer]:
    found = Explorer(engine)
    yield found
    found.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_interleaving_is_serializable(explorer: Explorer, scenario: Scenario) -> None:
    report = explorer.explore(scenario)
    print(report.summary())
    # Every pause point of both operations ran: the exploration itself is not vacuous.
    assert report.runs == sum(len(steps) for steps in report.steps.values()) > 0
    if report.failed:
        pytest.fail(report.describe(), pytrace=False)
    if scenario.name in USER_ACTIONS_ONLY:
        # Cancels and retries wait for each other in line: never a deadlock to retry.
        assert (report.deadlocks, report.retried_deadlocks) == ([], 0), report.summary()


def test_prune_leaves_a_task_whose_dependency_a_paused_retry_holds(explorer: Explorer) -> None:
    """R FAILED, D <- R UPSTREAM_FAILED, both old enough to go. A retry of R holds R's row
    and has not yet looked for its dependents: a prune meanwhile must leave D, which the
    retry is about to bring back, rather than delete it from under the retry."""
    scenario = Scenario("prune_inside_retry", root_failed, retry("R"), prune())
    steps = explorer.run_alone(explorer.fresh(scenario), retry("R")).track.labels
    # Its walk down the dependency edges: R is locked by then, D not yet.
    k = next(i for i, label in enumerate(steps) if label.startswith("WITH RECURSIVE below"))
    world = explorer.fresh(scenario)
    held, other, blocked = explorer.interleave(world, retry("R"), prune(), k)
    assert (blocked, other.error, held.outcome) == (False, None, ("task", "QUEUED"))
    assert other.value == 0  # R is the retry's; D waits for a prune that can hold R
    state = read_state(explorer.engine)
    assert state.tasks == {"R": ("QUEUED", 0), "D": ("QUEUED", 1)}
    assert violations(state, world.claimed) == []


# -- the harness itself --------------------------------------------------------------


def test_a_paused_lock_holder_blocks_the_other_session(explorer: Explorer) -> None:
    """Cancelling A twice: the second waits on the first's row lock, then sees CANCELLED."""
    world = explorer.fresh(Scenario("twice", a_queued, cancel("A"), cancel("A")))
    # Step 0 is the row lock; pausing before step 1 leaves the lock held.
    held, other, blocked = explorer.interleave(world, cancel("A"), cancel("A"), 1)
    assert blocked
    assert held.outcome == ("task", "CANCELLED")
    assert other.outcome == ("error", "invalid_state")
    state = read_state(explorer.engine)
    assert state.tasks["A"][0] == "CANCELLED"
    assert violations(state, world.claimed) == []


def test_a_session_that_needs_no_lock_of_the_other_runs_to_its_end(explorer: Explorer) -> None:
    """A submission of an unrelated task does not wait for the paused transaction."""
    world = explorer.fresh(Scenario("apart", a_queued, cancel("A"), submit("X")))
    held, other, blocked = explorer.interleave(world, cancel("A"), submit("X"), 1)
    assert not blocked
    assert held.outcome == ("task", "CANCELLED")
    assert other.outcome == ("submitted", True, "QUEUED", 0)


def test_an_operation_that_never_ends_is_reported_not_waited_for(engine: Engine) -> None:
    """A hang ends the interleaving with a clear failure instead of a stuck suite."""
    release = threading.Event()

    def stuck(_: Any) -> None:
        release.wait(30)

    explorer = Explorer(engine, step_limit=0.3, join_limit=1.0)
    try:
        world = explorer.fresh(Scenario("stuck", a_queued, cancel("A"), cancel("A")))
        with pytest.raises(Hang, match="stuck neither finished nor waited for a lock"):
            explorer.interleave(world, cancel("A"), Step("stuck", stuck), 1)
    finally:
        release.set()
        explorer.close()
    # The paused side was released and committed; nothing was left holding a lock.
    assert read_state(engine).tasks["A"][0] == "CANCELLED"


def bump(*ids: str) -> Step:
    """Raise the priority of the given tasks, one statement each, in this order."""

    def run(g: Graph) -> None:
        with g.engine.begin() as conn:
            for task_id in ids:
                conn.execute(
                    text("UPDATE tasks SET priority = priority + 1 WHERE id = :i"), {"i": task_id}
                )

    return Step(f"bump({', '.join(ids)})", run)


def test_a_deadlock_is_recorded_and_its_victim_retried(explorer: Explorer) -> None:
    """Two sessions locking A and B in opposite orders deadlock; the victim's retry is serial."""
    scenario = Scenario("opposite", a_queued, bump("A", "D"), bump("D", "A"))
    world = explorer.fresh(scenario)
    held, other, blocked = explorer.interleave(world, bump("A", "D"), bump("D", "A"), 1)
    assert blocked
    assert sorted([held.deadlocked, other.deadlocked]) == [False, True]
    assert sqlstate(held.error or other.error) == DEADLOCK
    report = explorer.explore(scenario)
    assert report.deadlocks
    assert not report.failed, report.describe()


def test_two_edits_of_a_schedule_both_stay_whatever_the_interleaving(
    explorer: Explorer,
) -> None:
    """A pause and another edit at once: each waits for the other's row lock, so neither
    is answered 200 for a change the other then overwrites."""
    scenario = Scenario("edit_vs_edit", schedule_due, pause(), set_overlap())
    for paused, running in ((pause(), set_overlap()), (set_overlap(), pause())):
        steps = explorer.run_alone(explorer.fresh(scenario), paused).track.labels
        for k in range(len(steps)):
            world = explorer.fresh(scenario)
            held, other, _ = explorer.interleave(world, paused, running, k)
            assert (held.error, other.error) == (None, None), (k, steps[k])
            with explorer.engine.connect() as conn:
                row = conn.execute(text("SELECT paused, overlap FROM schedules")).one()
            assert (row.paused, row.overlap) == (True, "skip"), (paused.label, k, steps[k])
