"""Two PostgreSQL sessions interleaved: pause one before its k-th statement, run the other.

One operation runs in a thread on its own connection and stops just before its k-th
database step (each SQL statement, and each COMMIT), its transaction open and its locks
held. The other operation then runs in a second thread until it finishes or waits for a
lock the first one holds; then the first goes on. Every pause point is tried, in both
orders, each on a fresh copy of a scenario's starting state, and each end state is
checked against the task table's invariants and against the two serial executions.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError

from app.errors import ApiError
from app.storage import counts

DEADLOCK = "40P01"
UNFINISHED = ("QUEUED", "RUNNING")
STOPPING = ("FAILED", "UPSTREAM_FAILED", "CANCELLED")
# How long one side may take to pause, finish or block, and both to end once released.
STEP_LIMIT_S = 10.0
JOIN_LIMIT_S = 15.0
POLL_S = 0.002
# A session stuck in a deadlock is found after this long instead of PostgreSQL's 1 s.
DEADLOCK_TIMEOUT = "20ms"


class World(Protocol):
    """What a scenario's setup returns: the engine and the tasks it claimed."""

    @property
    def engine(self) -> Engine: ...

    @property
    def claimed(self) -> set[str]: ...


Setup = Callable[[Engine], World]
Action = Callable[[Any], Any]


@dataclass(frozen=True)
class Step:
    """One operation of a scenario: a label for messages and what it does to the world."""

    label: str
    run: Action
    # Whether two runs must give it the same answer. Not prune's count: it skips the rows
    # another transaction holds, by design, leaving them to its next pass.
    compared: bool = True


@dataclass(frozen=True)
class Scenario:
    """A starting state and the two operations to race on it."""

    name: str
    setup: Setup
    first: Step
    second: Step
    # Run after both operations, before the state is compared.
    then: Step | None = None


class Hang(AssertionError):
    """Raised when an operation neither finishes, pauses nor blocks before its deadline."""


@dataclass
class Track:
    """The database steps of one operation's thread, and where it is told to stop."""

    pause_at: int | None
    labels: list[str] = field(default_factory=list)
    pid: int | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    # The SQLSTATE of every database error raised in this thread, retried or not.
    conflicts: list[str] = field(default_factory=list)

    def step(self, label: str, pid: int) -> None:
        """Count one step; stop before it when it is the chosen one."""
        self.pid = pid
        if self.pause_at == len(self.labels):
            self.paused.set()
            # Bounded, so a controller that gave up never leaves this thread behind.
            if not self.release.wait(STEP_LIMIT_S + JOIN_LIMIT_S):
                raise Hang(f"never released before step {len(self.labels)} ({label})")
        self.labels.append(label)


class Gate:
    """Engine hooks that count (and may stop) the steps of the threads registered here."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tracks: dict[int, Track] = {}
        self._guard = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._before_statement)
        event.listen(engine, "commit", self._before_commit)
        event.listen(engine, "handle_error", self._on_error)

    def close(self) -> None:
        """Remove the hooks."""
        event.remove(self.engine, "before_cursor_execute", self._before_statement)
        event.remove(self.engine, "commit", self._before_commit)
        event.remove(self.engine, "handle_error", self._on_error)

    @contextmanager
    def tracking(self, track: Track) -> Iterator[None]:
        """Count the steps the calling thread takes, on whichever connection."""
        ident = threading.get_ident()
        with self._guard:
            self._tracks[ident] = track
        try:
            yield
        finally:
            with self._guard:
                del self._tracks[ident]

    def _track(self) -> Track | None:
        with self._guard:
            return self._tracks.get(threading.get_ident())

    def _before_statement(self, conn: Connection, cursor: Any, statement: str, *_args: Any) -> None:
        track = self._track()
        if track is not None:
            track.step(_label(statement), cursor.connection.info.backend_pid)

    def _before_commit(self, conn: Connection) -> None:
        track = self._track()
        if track is not None:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            track.step("COMMIT", dbapi.info.backend_pid)

    def _on_error(self, context: ExceptionContext) -> None:
        track = self._track()
        code = getattr(context.original_exception, "sqlstate", None)
        if track is not None and code is not None:
            track.conflicts.append(code)


def _label(statement: str) -> str:
    words = " ".join(statement.split())
    return words if len(words) <= 72 else words[:69] + "..."


class Monitor:
    """A separate autocommit session that watches the others in pg_stat_activity."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url.set(drivername="postgresql")
        self._conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    def close(self) -> None:
        """Close the session."""
        self._conn.close()

    def waits_for_lock(self, pid: int) -> bool:
        """Tell whether backend `pid` is waiting for a lock."""
        row = self._conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        return row is not None and row[0] == "Lock"

    def any_waiting_for_lock(self, exclude: int) -> bool:
        """Tell whether a backend of this database other than `exclude` (and this
        session) waits for a lock."""
        row = self._conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND pid <> %s AND pid <> pg_backend_pid()",
            (exclude,),
        ).fetchone()
        return row is not None and row[0] > 0

    def terminate(self, pid: int | None) -> None:
        """End backend `pid`, so that a thread stuck in it gets an error and stops."""
        if pid is not None:
            self._conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


class Side(threading.Thread):
    """One operation in its own thread, with its result or exception kept for later."""

    def __init__(self, gate: Gate, step: Step, world: World, pause_at: int | None) -> None:
        super().__init__(name=f"interleave {step.label}", daemon=True)
        self.gate = gate
        self.step = step
        self.world = world
        self.track = Track(pause_at)
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with self.gate.tracking(self.track):
                self.value = self.step.run(self.world)
        except BaseException as exc:  # kept for the oracle: errors are part of the outcome
            self.error = exc
        finally:
            self.done.set()

    @property
    def outcome(self) -> Any:
        """The result or the error, reduced to what two runs must agree on."""
        return summarize(self.error if self.error is not None else self.value)

    @property
    def compared(self) -> Any:
        """The outcome, or a placeholder when the step's answer is not compared."""
        return self.outcome if self.step.compared else "(not compared)"

    @property
    def deadlocked(self) -> bool:
        """Tell whether this side was chosen as a deadlock victim."""
        return sqlstate(self.error) == DEADLOCK


def claimed_by(world: World, *sides: Side) -> set[str]:
    """Return the tasks the setup claimed and those the operations claimed."""
    claimed = set(world.claimed)
    for side in sides:
        claims = getattr(side.value, "claims", side.value)
        if isinstance(claims, list):
            claimed.update(c.id for c in claims if hasattr(c, "attempt"))
    return claimed


def sqlstate(error: BaseException | None) -> str | None:
    """Return the SQLSTATE of a database error, None for anything else."""
    if isinstance(error, DBAPIError):
        return getattr(error.orig, "sqlstate", None)
    return None


def summarize(value: Any) -> Any:
    """Reduce an operation's answer to comparable data: statuses, counts, error codes."""
    if isinstance(value, ApiError):
        return ("error", value.code)
    if isinstance(value, DBAPIError):
        return ("database error", sqlstate(value) or type(value.orig).__name__)
    if isinstance(value, BaseException):
        return ("exception", type(value).__name__, str(value)[:200])
    if isinstance(value, dict) and "status" in value:
        return ("task", value["status"])
    if hasattr(value, "task") and hasattr(value, "created"):
        return ("submitted", value.created, value.task["status"], value.task["pending_deps"])
    if hasattr(value, "tasks") and hasattr(value, "batch_id"):
        return ("batch", value.created, tuple((t["id"], t["status"]) for t in value.tasks))
    if isinstance(value, list) and all(hasattr(c, "attempt") for c in value):
        return ("claims", tuple(sorted(c.id for c in value)))
    if hasattr(value, "applied") and hasattr(value, "claims"):
        return ("cycle", tuple(value.applied), tuple(sorted(c.id for c in value.claims)))
    return value


@dataclass(frozen=True)
class State:
    """The task table as the oracle sees it."""

    tasks: dict[str, tuple[str, int]]
    rules: dict[str, str]
    edges: dict[str, list[str]]
    # The tasks per status as /metrics reads them (app/storage/counts.py).
    counted: dict[str, int] = field(default_factory=dict)

    def brief(self) -> str:
        """Return the tasks as `id=STATUS/pending`, sorted."""
        return " ".join(f"{i}={s}/{p}" for i, (s, p) in sorted(self.tasks.items()))


def read_state(engine: Engine) -> State:
    """Read every task's status, pending count, trigger rule and dependencies."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status, pending_deps, trigger_rule FROM tasks")).all()
        found = {r.id: (r.status, r.pending_deps) for r in rows}
        rules = {r.id: r.trigger_rule for r in rows}
        edges: dict[str, list[str]] = {}
        for task_id, dependency in conn.execute(
            text("SELECT task_id, dependency_id FROM task_dependencies ORDER BY task_id, position")
        ):
            edges.setdefault(task_id, []).append(dependency)
        counted = counts.by_status(conn)
        conn.rollback()
    return State(found, rules, edges, counted)


def violations(state: State, claimed: set[str]) -> list[str]:
    """Return each broken invariant of `state`, given the tasks the scenario claimed.

    A QUEUED task waits for exactly its unfinished dependencies, and an all_success one
    for none that will never succeed; an UPSTREAM_FAILED task has a dependency that did
    not succeed; only claimed tasks run; the counts by status are those of the rows.
    """
    broken: list[str] = []
    real = Counter(status for status, _ in state.tasks.values())
    if state.counted and {s: n for s, n in state.counted.items() if n} != dict(real):
        broken.append(f"the counts by status are {state.counted}, the rows {dict(real)}")
    for task_id, (status, pending) in sorted(state.tasks.items()):
        dependencies = state.edges.get(task_id, [])
        statuses = [state.tasks[d][0] for d in dependencies if d in state.tasks]
        if status == "QUEUED":
            unfinished = sum(1 for s in statuses if s in UNFINISHED)
            if pending != unfinished:
                broken.append(
                    f"{task_id} is QUEUED with pending_deps {pending} but {unfinished} "
                    f"of its dependencies are unfinished ({_deps(state, dependencies)})"
                )
            stopped = [s for s in statuses if s in STOPPING]
            if state.rules[task_id] == "all_success" and stopped:
                broken.append(
                    f"{task_id} is QUEUED (all_success) behind a dependency that will never "
                    f"succeed ({_deps(state, dependencies)})"
                )
        # Not so for upstream_cancelled: cancelling a RUNNING task stops its dependents
        # at once, while it may still complete.
        if status == "UPSTREAM_FAILED" and statuses and not set(statuses) & set(STOPPING):
            broken.append(
                f"{task_id} is UPSTREAM_FAILED but none of its dependencies failed or was "
                f"cancelled ({_deps(state, dependencies)}): it will never run"
            )
        if status == "RUNNING" and task_id not in claimed:
            broken.append(f"{task_id} is RUNNING but nobody claimed it")
    return broken


def _deps(state: State, dependencies: list[str]) -> str:
    return ", ".join(
        f"{d}={state.tasks[d][0]}" if d in state.tasks else f"{d}=gone" for d in dependencies
    )


@dataclass(frozen=True)
class Ending:
    """How a run ended: each operation's outcome, the state, and the state's flaws."""

    outcomes: tuple[Any, Any]
    state: State
    # The state before the scenario's follow-up step, when it has one.
    raw: State
    broken: list[str]


@dataclass(frozen=True)
class Failure:
    """One interleaving that broke the oracle."""

    paused: str
    running: str
    step: int
    label: str
    problem: str


@dataclass
class Report:
    """What exploring a scenario found."""

    scenario: str
    runs: int = 0
    blocked: int = 0
    # Deadlock victims whose error reached the caller, and those the operation retried.
    deadlocks: list[str] = field(default_factory=list)
    retried_deadlocks: int = 0
    # Interleavings that matched a serial order only after the follow-up step.
    deferred: int = 0
    failures: list[Failure] = field(default_factory=list)
    serial_failures: list[str] = field(default_factory=list)
    steps: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Tell whether any run broke the oracle."""
        return bool(self.failures or self.serial_failures)

    def summary(self) -> str:
        """One line: interleavings run, blocked, deadlocks and failures."""
        return (
            f"{self.scenario}: {self.runs} interleavings, {self.blocked} blocked on a lock, "
            f"{len(self.deadlocks)} deadlock errors, {self.retried_deadlocks} deadlocks "
            f"retried inside an operation, {self.deferred} settled only by the follow-up, "
            f"{len(self.failures)} failures"
        )

    def describe(self) -> str:
        """The summary, then each problem once with the pause points that showed it."""
        lines = [self.summary(), *self.serial_failures]
        grouped: dict[tuple[str, str, str], list[Failure]] = {}
        for failure in self.failures:
            grouped.setdefault((failure.paused, failure.running, failure.problem), []).append(
                failure
            )
        for (paused, running, problem), found in grouped.items():
            points = ", ".join(f"{f.step} [{f.label}]" for f in found)
            lines.append(f"- {paused} paused before step {points}; {running} ran:\n    {problem}")
        return "\n".join(lines)


class Explorer:
    """Runs a scenario serially both ways, then at every pause point in both orders."""

    def __init__(
        self, engine: Engine, step_limit: float = STEP_LIMIT_S, join_limit: float = JOIN_LIMIT_S
    ) -> None:
        self.engine = engine
        self.gate = Gate(engine)
        self.monitor = Monitor(engine)
        self.step_limit = step_limit
        self.join_limit = join_limit

    def close(self) -> None:
        """Remove the hooks and close the watching session."""
        self.gate.close()
        self.monitor.close()

    def fresh(self, scenario: Scenario) -> World:
        """Delete every row, then build the scenario's starting state again."""
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM task_dependencies"))
            conn.execute(text("DELETE FROM tasks"))
            conn.execute(text("DELETE FROM scheduler_instances"))
            conn.execute(text("DELETE FROM schedules"))
            conn.execute(text("DELETE FROM queues"))
        return scenario.setup(self.engine)

    def run_alone(self, world: World, step: Step) -> Side:
        """Run one operation to its end in a tracked thread, counting its steps."""
        side = Side(self.gate, step, world, None)
        side.start()
        side.join(self.join_limit)
        if side.is_alive():
            self.monitor.terminate(side.track.pid)
            raise Hang(f"{step.label} alone did not finish within {self.join_limit} s")
        return side

    def ending(self, scenario: Scenario, world: World, first: Side, second: Side) -> Ending:
        """Read the state both sides left, run the follow-up, read it again; check both."""
        claimed = claimed_by(world, first, second)
        raw = read_state(self.engine)
        broken = violations(raw, claimed)
        state = raw
        if scenario.then is not None:
            self.run_alone(world, scenario.then)
            state = read_state(self.engine)
            broken += [f"after {scenario.then.label}: {v}" for v in violations(state, claimed)]
        return Ending((first.compared, second.compared), state, raw, broken)

    def serial(self, scenario: Scenario, order: tuple[Step, Step]) -> tuple[Ending, list[str]]:
        """Run the two operations one after the other on a fresh start.

        Return how it ended (outcomes in the scenario's order) and the steps the operation
        that ran first took: it ran alone, uninterrupted.
        """
        world = self.fresh(scenario)
        before = self.run_alone(world, order[0])
        after = self.run_alone(world, order[1])
        first, second = (before, after) if order[0] is scenario.first else (after, before)
        return self.ending(scenario, world, first, second), before.track.labels

    def explore(self, scenario: Scenario) -> Report:
        """Try every pause point of each operation against the other; collect failures."""
        report = Report(scenario.name)
        one_two, first_steps = self.serial(scenario, (scenario.first, scenario.second))
        two_one, second_steps = self.serial(scenario, (scenario.second, scenario.first))
        report.steps = {scenario.first.label: first_steps, scenario.second.label: second_steps}
        serials = {"first then second": one_two, "second then first": two_one}
        for name, serial in serials.items():
            report.serial_failures += [f"serially, {name}: {v}" for v in serial.broken]
        orders = [
            (scenario.first, scenario.second, first_steps),
            (scenario.second, scenario.first, second_steps),
        ]
        for paused, running, steps in orders:
            for k, label in enumerate(steps):
                try:
                    problems = self._once(scenario, paused, running, k, serials, report)
                except Hang as exc:
                    problems = [f"HANG: {exc}"]
                if problems:
                    report.failures.append(
                        Failure(paused.label, running.label, k, label, "; ".join(problems))
                    )
        return report

    def _once(
        self,
        scenario: Scenario,
        paused: Step,
        running: Step,
        k: int,
        serials: dict[str, Ending],
        report: Report,
    ) -> list[str]:
        world = self.fresh(scenario)
        held, other, blocked = self.interleave(world, paused, running, k)
        report.runs += 1
        report.blocked += blocked
        report.retried_deadlocks += sum(
            s.track.conflicts.count(DEADLOCK) - s.deadlocked for s in (held, other)
        )
        first, second = (held, other) if paused is scenario.first else (other, held)
        got = self.ending(scenario, world, first, second)
        victims = [s for s in (first, second) if s.deadlocked]
        if victims:
            (victim,) = victims
            survivor = other if victim is held else held
            report.deadlocks.append(f"{paused.label} paused before step {k}: {victim.step.label}")
            return got.broken + self._after_deadlock(scenario, got, survivor, victim, serials)
        matched = [
            e for e in serials.values() if (e.state, e.outcomes) == (got.state, got.outcomes)
        ]
        if not matched:
            return [*got.broken, _not_serializable(scenario, got, serials)]
        if not any(e.raw == got.raw for e in matched):
            report.deferred += 1
        return got.broken

    def _after_deadlock(
        self,
        scenario: Scenario,
        got: Ending,
        survivor: Side,
        victim: Side,
        serials: dict[str, Ending],
    ) -> list[str]:
        """Check that a victim changed nothing and, retried, gives the serial result."""
        broken: list[str] = []
        world = self.fresh(scenario)
        alone = self.run_alone(world, survivor.step)
        alone_state = read_state(self.engine)
        if (survivor.compared, got.raw) != (alone.compared, alone_state):
            broken.append(
                f"after the deadlock the state is {got.raw.brief()} "
                f"({survivor.step.label} -> {survivor.compared!r}), but {survivor.step.label} "
                f"alone gives {alone_state.brief()} ({alone.compared!r})"
            )
        # A client retries the victim once the survivor is done: a serial order.
        again = self.run_alone(world, victim.step)
        if survivor.step is scenario.first:
            name, retried = "first then second", self.ending(scenario, world, alone, again)
        else:
            name, retried = "second then first", self.ending(scenario, world, again, alone)
        broken += [f"after retrying the victim: {v}" for v in retried.broken]
        expected = serials[name]
        if (expected.state, expected.outcomes) != (retried.state, retried.outcomes):
            broken.append(
                f"retrying the victim gives {retried.state.brief()} {retried.outcomes!r}, "
                f"but {name} gives {expected.state.brief()} {expected.outcomes!r}"
            )
        return broken

    def interleave(
        self, world: World, paused: Step, running: Step, k: int
    ) -> tuple[Side, Side, bool]:
        """Pause `paused` before step k, run `running` until done or blocked, then resume.

        Return both sides and whether the running one waited for a lock.
        """
        held = Side(self.gate, paused, world, k)
        other = Side(self.gate, running, world, None)
        blocked = False
        hang: Hang | None = None
        try:
            held.start()
            if not _first_of((held.track.paused, held.done), self.step_limit):
                raise Hang(f"{paused.label} neither paused nor finished in {self.step_limit} s")
            other.start()
            if held.track.paused.is_set():
                blocked = self._run_until_blocked(other)
        except Hang as exc:
            hang = exc
        finally:
            held.track.release.set()
        deadline = time.monotonic() + self.join_limit
        for side in (held, other):
            if side.ident is not None:
                side.join(max(0.0, deadline - time.monotonic()))
        stuck = [s for s in (held, other) if s.is_alive()]
        for side in stuck:
            # Its session may hold locks the next interleaving needs: end it.
            self.monitor.terminate(side.track.pid)
        if hang is not None:
            raise hang
        if stuck:
            names = ", ".join(s.step.label for s in stuck)
            raise Hang(f"{names} still running {self.join_limit} s after the release")
        return held, other, blocked

    def _run_until_blocked(self, other: Side) -> bool:
        deadline = time.monotonic() + self.step_limit
        while not other.done.wait(POLL_S):
            pid = other.track.pid
            if pid is not None and self.monitor.waits_for_lock(pid):
                return True
            if time.monotonic() > deadline:
                raise Hang(
                    f"{other.step.label} neither finished nor waited for a lock within "
                    f"{self.step_limit} s while the other operation was paused"
                )
        return False


def _first_of(events: tuple[threading.Event, ...], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not any(e.is_set() for e in events):
        if time.monotonic() > deadline:
            return False
        events[-1].wait(POLL_S)
    return True


def _not_serializable(scenario: Scenario, got: Ending, serials: dict[str, Ending]) -> str:
    names = (scenario.first.label, scenario.second.label)
    lines = [f"not serializable: got {_show(got, names)}"]
    lines += [f"{name} gives {_show(e, names)}" for name, e in serials.items()]
    return "\n    ".join(lines)


def _show(ending: Ending, names: tuple[str, str]) -> str:
    answers = ", ".join(f"{n} -> {o!r}" for n, o in zip(names, ending.outcomes, strict=True))
    return f"{ending.state.brief() or '(no tasks)'} with {answers}"


def tune_sessions(engine: Engine) -> None:
    """Make the engine's new sessions quick to test with; locking is left as it is.

    A deadlock is found after DEADLOCK_TIMEOUT instead of PostgreSQL's 1 s, and a commit
    does not wait for its WAL flush: the thousands of small transactions of an exploration
    need no durability across a server crash.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
            try:
                cursor.execute(f"SET deadlock_timeout = '{DEADLOCK_TIMEOUT}'")
            except psycopg.errors.InsufficientPrivilege:
                # Only a superuser may lower it: deadlocks are then found after 1 s.
                dbapi_connection.rollback()
                cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()

    # Sessions opened before the hook keep the defaults: open new ones.
    engine.dispose()
