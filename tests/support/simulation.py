"""A deterministic simulation of several scheduler instances sharing one database.

In the manner of FoundationDB's simulation testing and TigerBeetle's VOPR: one thread
plays every scheduler instance, every handler thread and every user, following a schedule
drawn from one seeded random generator: submissions (single tasks and graphs, both
trigger rules, run_at, retries, timeouts), scheduler passes, handlers that return, fail,
ignore a cancel or outlive their timeout, cancels and retries, prunes, heartbeats and
reaps, count folds, recurring schedules (created, fired by any instance, paused, resumed,
retimed, deleted; an instance dying in the middle of a firing), crashes and restarts,
pauses past the lease, drains, and faults at the named
points of `app.faults` (a commit whose acknowledgement is lost, a crash as a handler
thread starts, a failed requeue, a failed prune chunk). Time is a simulated clock, handler
threads are simulated (`SimExecutor` starts them at once and ends them when the schedule
says), so nothing waits and a seed replays exactly.

After every step `check()` tests the invariants against the database and the instances'
memory; at the end every instance is healed and the run must settle with every task
finished. A violation raises `Violation` with the seed, the step and the trace.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, delete, event, func, select
from sqlalchemy.exc import OperationalError

from app import events, faults
from app.errors import ApiError
from app.events import Change
from app.handlers import HandlerFailed, Registry, TaskContext
from app.runtime.attempt import Job
from app.runtime.metrics import Metrics
from app.runtime.scheduler import LOST, Scheduler
from app.services import (
    actions,
    batch,
    batches,
    blockers,
    fanout,
    queues,
    schedules,
    submissions,
)
from app.statuses import BLOCKING, TERMINAL, UNFINISHED, Status
from app.storage import counts, database, retention
from app.storage.queues import DEFAULT_QUEUE
from app.storage.store import Store
from app.storage.tables import deps, instances, task_attempts, task_events, tasks
from app.storage.tables import queues as queue_rows
from app.storage.tables import schedules as schedule_rows

LEASE_S = 30.0
# The leases instances run with: each is judged by its own (an instance of the longer
# one heartbeats every 33 s, which one of the shorter must not take for a death).
LEASES = (LEASE_S, 100.0)
POLL_S = 1.0
HEARTBEAT_S = LEASE_S / 3  # the shortest period
REAP_S = 3.0
FOLD_S = 5.0
FIRE_S = 1.0
GRACE_S = 5.0
START = datetime(2030, 1, 1)
# The queues tasks name (None: the default), and the choices of queues a node serves.
QUEUES = [None, None, "q1", "q2"]
SERVED = [(), (), ("q1",), ("default", "q2")]
# A RUNNING row that no live attempt holds is recovered by others within this long of its
# owner's last heartbeat; its owner, if it lives, recovers it at a pass within a lease/3.
RECOVERY_BOUND_S = max(LEASES) + 2 * REAP_S + 2 * POLL_S
SETTLE_ROUNDS = 400


class Violation(AssertionError):
    """An invariant did not hold."""


class LostAcknowledgement(OperationalError):
    """The commit happened, but its answer never reached the client."""

    def __init__(self) -> None:
        super().__init__("COMMIT", {}, Exception("connection lost after the commit"))


class SimCrash(Exception):
    """The instance's process died at a fault point."""


class Recorder(events.Events):
    """Hands every committed state change to the simulation instead of the log."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__()
        self.sim = sim

    def add(self, changes: Sequence[Change]) -> None:
        self.sim.committed(list(changes))


class SimClock:
    """Simulated time: a monotonic clock and the wall time, moved only by the schedule.

    The wall clock can also step (NTP, a resumed VM) while the monotonic clock does not.
    """

    def __init__(self) -> None:
        self.elapsed = 0.0
        self.stepped = 0.0

    def monotonic(self) -> float:
        return self.elapsed

    def now(self) -> datetime:
        return START + timedelta(seconds=self.elapsed + self.stepped)


@dataclass
class SimExecutor:
    """Handler threads as the simulation sees them: started at once, ended when told."""

    sim: Simulation
    node: Node
    workers: int
    live: list[Job] = field(default_factory=list)

    def start(self, job: Job) -> None:
        self.sim.starting(self.node, job)
        self.live.append(job)
        job.begin()

    def shutdown(self) -> None:
        return None


@dataclass
class Node:
    """One scheduler process: its instance, its threads, and what state it is in."""

    index: int
    generation: int
    scheduler: Scheduler
    executor: SimExecutor | None = None
    paused_until: float | None = None
    draining_since: float | None = None
    next_heartbeat: float = 0.0
    next_reap: float = 0.0
    next_pass: float = 0.0
    next_fold: float = 0.0
    next_fire: float = 0.0
    last_good_pass: float = -1.0  # serving time of the last pass that did not fail
    paused_since_beat: bool = False  # frozen at some point since its last heartbeat
    # A stop that came during a pass found the instance idle: it ends once the pass does.
    stop_found_idle: bool = False
    lease_s: float = LEASE_S

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3

    @property
    def retry_s(self) -> float:
        """How soon a failed heartbeat is tried again, as the scheduler's own thread does."""
        return min(1.0, self.heartbeat_s)

    @property
    def name(self) -> str:
        return f"n{self.index}.{self.generation}"


@dataclass
class Seen:
    """What the checker remembers of a task between steps."""

    status: str
    attempts: int
    failures: int
    starts: int = 0  # handler starts since the task was last queued by a user
    free_requeues: int = 0  # requeues since then that spent no budget
    unowned_since: float | None = None  # RUNNING with no live attempt, since when


class Simulation:
    """One seeded run."""

    def __init__(self, engine: Engine, seed: int, steps: int = 80, nodes: int = 3) -> None:
        # The events checked so far: each task's last status, and the newest number read.
        self._last_event: dict[str, str] = {}
        self._events_read = 0
        self.engine = engine
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.trace: list[str] = []
        self.nodes: list[Node | None] = [None] * nodes
        self.generations = [0] * nodes
        self.task_count = 0
        self.behaviour: dict[tuple[str, int], str] = {}
        self.returns: dict[tuple[str, int], tuple[str, Any]] = {}
        self.cancelled: set[str] = set()
        # Every task's dependencies as submitted, and the last status of each pruned task:
        # a start is checked against them, not against what retention left of the graph.
        self.deps_of: dict[str, list[str]] = {}
        self.gone: dict[str, str] = {}
        self.run_at_of: dict[str, datetime] = {}
        self.started: set[tuple[str, int]] = set()
        self.seen: dict[str, Seen] = {}
        self.armed: dict[str, str] = {}  # fault point -> instance id it strikes
        self.step_no = 0
        # Simulated seconds during which some instance was up: recovery needs one.
        self.serving = 0.0
        # Serving time of each instance id's last proof of life (registration, heartbeat).
        self.beat_at: dict[str, float] = {}
        # The same on the monotonic clock: no instance may be declared dead sooner.
        self.beat_mono: dict[str, float] = {}
        # Time outside database outages, and its value at each instance's last proof of
        # life: a silence the database imposed on everyone proves no death.
        self.available = 0.0
        self.beat_avail: dict[str, float] = {}
        # Serving time of the last event after which instances first spend a lease in
        # touch with the database before they judge others' silence: a boot, the end of
        # an outage, a pause's end.
        self.disturbed = -1e9
        # A database outage: every statement of the instances and users fails until then.
        self.outage_until = -1.0
        self.reading = False  # the checker's own reads see through an outage
        # Notifications (NOTIFY) wake every instance for a pass, unless lost until then.
        self.deaf_until = -1.0
        self.announced = False
        # Schedules: each task name a firing creates, its schedule and its dependencies
        # (names of the same firing); the instants each schedule's committed firings hold;
        # the fired count last read of each.
        self.schedule_count = 0
        self.schedule_ids: list[str] = []
        self.fired_names: dict[str, tuple[str, list[str]]] = {}
        self.firings: dict[str, set[str]] = {}
        self.fired_seen: dict[str, int] = {}
        self.firing_node: Node | None = None
        self.settling = False
        # Queues: the simulated start times in each rate-limited queue since its rate was
        # last set (a new rate starts from a full bucket).
        self.queue_starts: dict[str, list[float]] = {}
        self.bucket_time = 0.0
        # Tasks added by handlers (dynamic fan-out): by the attempt that added them, and
        # the task that added each.
        self.added: dict[tuple[str, int], list[str]] = {}
        self.added_by: dict[str, str] = {}
        with database.write(engine) as conn:
            for table in (deps, tasks, instances, schedule_rows, queue_rows):
                conn.execute(delete(table))
        events.attach(engine, Recorder(self))

    # -- running --------------------------------------------------------------------

    def run(self) -> list[str]:
        """Run the schedule, then heal and settle; return the trace."""
        with ExitStack() as stack:
            for name in ("cycle.committed", "thread.started", "requeue.before_write"):
                stack.enter_context(faults.injected(name, self._fault(name)))
            stack.enter_context(faults.injected("prune.chunk", self._prune_fault))
            stack.enter_context(faults.injected("notify.announce", self._announced))
            stack.enter_context(faults.injected("schedule.firing", self._firing_fault))
            event.listen(self.engine, "before_cursor_execute", self._outage)
            stack.callback(event.remove, self.engine, "before_cursor_execute", self._outage)
            for index in range(len(self.nodes)):
                self.boot(index)
            for step in range(1, self.steps + 1):
                self.step_no = step
                self.random_step()
                self.deliver_notifications()
                self.check()
            self.settle()
        return self.trace

    def outage(self) -> bool:
        return self.clock.elapsed < self.outage_until

    def note(self, text: str) -> None:
        self.trace.append(f"{self.step_no:4d} t={self.clock.elapsed:8.2f} {text}")

    def fail(self, message: str) -> None:
        tail = "\n".join(self.trace[-40:])
        raise Violation(
            f"seed {self.seed}, step {self.step_no}: {message}\n"
            f"replay: SIM_SEED={self.seed}\nlast steps:\n{tail}"
        )

    def random_step(self) -> None:
        actions_ = [
            (10, self.submit),
            (5, self.submit_batch),
            (14, self.pass_),
            (24, self.handler_returns),
            (8, self.tick),
            (2, self.tick_long),
            (4, self.cancel),
            (4, self.retry),
            (1, self.prune),
            (2, self.reap),
            (1, self.crash),
            (2, self.restart),
            (1, self.pause),
            (1, self.lose_acknowledgement),
            (1, self.crash_at_thread_start),
            (1, self.fail_requeue),
            (1, self.drain),
            (1, self.database_outage),
            (1, self.step_clock),
            (1, self.lose_notifications),
            (2, self.add_schedule),
            (3, self.fire),
            (1, self.edit_schedule),
            (3, self.change_queue),
            (2, self.edit_task),
            (1, self.delete_task),
            (1, self.batch_action),
            (1, self.ask_blockers),
        ]
        weights = [w for w, _ in actions_]
        (action,) = self.rng.choices([a for _, a in actions_], weights)
        action()

    # -- nodes ------------------------------------------------------------------------

    def boot(self, index: int) -> None:
        self.generations[index] += 1
        generation = self.generations[index]
        names = iter(f"n{index}.{generation}-{k}" for k in range(1000))
        registry = Registry()
        registry.register("sim", self.handler)
        store = Store(
            self.engine,
            clock=self.clock.now,
            rng=random.Random(self.rng.random()),
            monotonic=self.clock.monotonic,
        )
        store.spawn = fanout.spawn
        lease_s = self.rng.choice(LEASES)
        scheduler = Scheduler(
            store,
            registry,
            max_concurrent=self.rng.randint(1, 3),
            poll_interval_s=POLL_S,
            lease_s=lease_s,
            metrics=Metrics(),
            clock=self.clock.monotonic,
            name=lambda: next(names),
            executor=lambda workers: self._executor(index, workers),
            fire=partial(schedules.fire_due, self.engine),
            # The first node serves every queue, so that every task can finish.
            queues=self.rng.choice(SERVED) if index else (),
        )
        node = Node(index, generation, scheduler, lease_s=lease_s)
        # The beat its reaper makes after a failed run is a heartbeat like the others.
        scheduler.reaper.beat = partial(self.beat, node)
        self.nodes[index] = node
        now = self.clock.elapsed
        node.next_heartbeat, node.next_reap, node.next_pass = now + node.heartbeat_s, now, now
        try:
            scheduler.open(self.clock.now())
        except OperationalError:
            self.nodes[index] = None  # cannot register: the process exits, to be restarted
            self.note(f"boot {node.name} failed: the database is unavailable")
            return
        self.beat_mono[scheduler.id or ""] = now
        self.beat_avail[scheduler.id or ""] = self.available
        self.disturbed = self.serving
        serves = ",".join(scheduler.queues) or "every queue"
        self.note(
            f"boot {node.name} as {scheduler.id} cap {scheduler.max_concurrent} for {serves},"
            f" lease {lease_s:g} s"
        )

    def _executor(self, index: int, workers: int) -> SimExecutor:
        node = self.nodes[index]
        assert node is not None
        node.executor = SimExecutor(self, node, workers)
        return node.executor

    def active(self) -> list[Node]:
        """Nodes that run: up, not paused."""
        return [n for n in self.nodes if n is not None and n.paused_until is None]

    def pick(self, nodes: list[Node]) -> Node | None:
        return self.rng.choice(nodes) if nodes else None

    def run_pass(self, node: Node) -> None:
        node.next_pass = self.clock.elapsed + POLL_S
        identity = node.scheduler.id
        try:
            started = node.scheduler.run_once(self.clock.now())
            node.last_good_pass = self.serving
            self.note(f"pass {node.name}: started {started}")
        except OperationalError as error:
            # What the loop does with a failed pass: log it and try again at the next.
            self.note(f"pass {node.name}: failed ({error.orig})")
        except SimCrash:
            self.down(node, "crashed as a handler thread started")
            return
        if node.stop_found_idle and self.nodes[node.index] is node:
            # The stop's thread went on while the pass ran: it halted the loop, and now
            # that the pass is over it ends the drain, writing back what is unfinished.
            left = sorted(r.key for r in node.scheduler.attempts())
            if left:
                self.fail(
                    f"a stop during {node.name}'s pass found it idle, so its drain requeues "
                    f"what that pass just started without waiting for it: {left}"
                )
            node.scheduler.finish_drain()
            self.down(node, "stopped, idle")
            return
        if node.scheduler.id != identity:
            self.declared_dead(node, identity)
            self.beat_mono[node.scheduler.id or ""] = self.clock.elapsed
            self.beat_avail[node.scheduler.id or ""] = self.available
        # The loop sleeps as long as the scheduler says (a timeout, a due task, the poll).
        node.next_pass = self.clock.elapsed + node.scheduler.sleep_for()

    def declared_dead(self, node: Node, identity: str | None) -> None:
        """An instance found itself declared dead: it must have been silent a whole lease."""
        silent = self.clock.elapsed - self.beat_mono.get(identity or "", self.clock.elapsed)
        if silent <= node.lease_s:
            self.fail(f"{identity} declared dead {silent:.2f} s after its last heartbeat")
        if node.paused_since_beat:
            return  # really silent: frozen, whatever the database did meanwhile
        # Its judge waits a lease in touch with the database after an outage; the live
        # instance beats again within a heartbeat period of the outage's end.
        heard = self.available - self.beat_avail.get(identity or "", self.available)
        if heard < node.lease_s - node.heartbeat_s:
            self.fail(f"{identity} declared dead, silent only {heard:.2f} s outside outages")

    def down(self, node: Node, why: str) -> None:
        """The process is gone: its threads with it, its rows left for the others."""
        self.nodes[node.index] = None
        self.note(f"{node.name} down: {why}")

    # -- what can happen ------------------------------------------------------------

    def new_id(self) -> str:
        self.task_count += 1
        return f"t{self.task_count}"

    def body(self, task_id: str, dependencies: list[str]) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {
            "id": task_id,
            "type": "sim",
            "duration_ms": 1,
            "dependencies": dependencies,
            "trigger_rule": rng.choice(["all_success", "all_success", "all_done"]),
            "max_attempts": rng.choice([1, 1, 2, 3]),
            "retry_backoff_ms": rng.choice([0, 500, 3000]),
            "priority": rng.choice([0, 0, 0, 5]),
            "queue": rng.choice(QUEUES),
        }
        if rng.random() < 0.3:
            body["timeout_ms"] = rng.choice([500, 2000, 8000])
        if rng.random() < 0.3:
            body["run_at"] = self.clock.now() + timedelta(seconds=rng.uniform(0.5, 40))
            self.run_at_of[task_id] = body["run_at"]
        self.deps_of[task_id] = list(dependencies)
        return body

    def existing(self, most: int, before: int | None = None) -> list[str]:
        last = self.task_count if before is None else before - 1
        ids = [f"t{i}" for i in range(1, last + 1)]
        return self.rng.sample(ids, min(len(ids), self.rng.randint(0, most)))

    def submit(self) -> None:
        dependencies = self.existing(3)
        task_id = self.new_id()
        try:
            task = submissions.submit(self.engine, self.body(task_id, dependencies)).task
        except ApiError as error:
            self.note(f"submit {task_id}: refused {error.code}")  # a pruned dependency
            return
        except OperationalError:
            self.note(f"submit {task_id}: the database is unavailable")
            return
        self.note(f"submit {task_id} <- {dependencies}: {task['status']}")

    def submit_batch(self) -> None:
        first = self.task_count + 1
        ids = [self.new_id() for _ in range(self.rng.randint(2, 5))]
        bodies = []
        for position, task_id in enumerate(ids):
            inside = self.rng.sample(ids[:position], min(position, self.rng.randint(0, 2)))
            body = self.body(task_id, inside + self.existing(1, before=first))
            if "run_at" in body:  # as a client sends it
                body["run_at"] = body["run_at"].isoformat() + "Z"
            bodies.append(body)
        self.rng.shuffle(bodies)
        try:
            stored = batch.submit_batch(self.engine, {"tasks": bodies})
        except ApiError as error:
            self.note(f"batch {ids}: refused {error.code}")
            return
        except OperationalError:
            self.note(f"batch {ids}: the database is unavailable")
            return
        shown = {t["id"]: t["status"] for t in stored.tasks}
        self.note(f"batch {shown}")

    def add_schedule(self) -> None:
        self.schedule_count += 1
        sid = f"S{self.schedule_count}"
        rng = self.rng
        body: dict[str, Any] = {
            "id": sid,
            "interval_s": rng.choice([1, 3, 10, 30]),
            "catch_up": rng.choice(["skip", "last", 2]),
            "overlap": rng.choice(["skip", "allow"]),
        }
        task = {"type": "sim", "duration_ms": 1, "max_attempts": rng.choice([1, 2])}
        if rng.random() < 0.5:
            body["task"] = task
            names = {sid: []}
        else:
            first, second = f"{sid}a", f"{sid}b"
            body["batch"] = {
                "tasks": [
                    {**task, "id": first},
                    {**task, "id": second, "dependencies": [first]},
                ]
            }
            names = {first: [], second: [first]}
        try:
            schedules.create(self.engine, schedules.parse_new(body), now=self.clock.now())
        except OperationalError:
            self.note(f"schedule {sid}: the database is unavailable")
            return
        for name, dependencies in names.items():
            self.fired_names[name] = (sid, dependencies)
        self.schedule_ids.append(sid)
        self.firings[sid] = set()
        self.note(f"schedule {sid} every {body['interval_s']} s, {list(names)}")

    def fire(self) -> None:
        """An instance's firer runs out of turn (it runs every second in `tick`)."""
        node = self.pick([n for n in self.active() if n.draining_since is None])
        if node is not None:
            self.fire_with(node)

    def fire_with(self, node: Node) -> None:
        if node.scheduler.firer is None:
            return
        self.firing_node = node
        try:
            report = node.scheduler.firer.run_once(self.clock.now())
        except OperationalError:
            self.note(f"fire by {node.name}: the database is unavailable")
            return
        except SimCrash:
            self.down(node, "crashed in the middle of a firing")
            return
        finally:
            self.firing_node = None
        fired = [f"{sid}@{schedules.stamp(i)}" for sid, i, _ in report.fired]
        self.note(
            f"fire by {node.name}: fired {fired}, skipped {len(report.skipped)}, "
            f"missed {sum(n for _, n in report.missed)}, lost {report.lost}"
        )

    def _firing_fault(self, **_context: Any) -> None:
        if self.firing_node is not None and not self.settling and self.rng.random() < 0.1:
            self.note(f"fault schedule.firing strikes {self.firing_node.name}")
            raise SimCrash()

    def edit_schedule(self) -> None:
        if not self.schedule_ids:
            return
        sid = self.rng.choice(self.schedule_ids)
        change = self.rng.choice(["pause", "resume", "retime", "delete"])
        try:
            if change == "delete":
                schedules.delete(self.engine, sid)
            else:
                edit = {
                    "pause": {"paused": True},
                    "resume": {"paused": False},
                    "retime": {"interval_s": self.rng.choice([2, 5, 20])},
                }[change]
                schedules.edit(self.engine, sid, edit, now=self.clock.now())
        except ApiError as error:
            self.note(f"{change} {sid}: refused {error.code}")
            return
        except OperationalError:
            self.note(f"{change} {sid}: the database is unavailable")
            return
        self.note(f"{change} {sid}")

    def change_queue(self) -> None:
        """Pause or resume a queue, or set its limits, as a user would, at any moment."""
        rng = self.rng
        name = rng.choice(["default", "q1", "q2"])
        kind = rng.choice(["pause", "resume", "resume", "limits", "delete"])
        try:
            if kind == "delete":
                try:
                    queues.delete(self.engine, name)
                except ApiError as exc:  # default, holding tasks, or gone already
                    self.note(f"queue {name}: not deleted ({exc.code})")
                    return
                self.queue_starts.pop(name, None)
                self.note(f"queue {name}: deleted")
            elif kind == "limits":
                limits = {
                    "concurrency_limit": rng.choice([None, 1, 2, 3]),
                    "rate_limit_per_s": rng.choice([None, None, 0.5, 2.0]),
                }
                changed = queues.set_limits(self.engine, name, limits)
                if changed.change is not None:
                    self.queue_starts[name] = []
                self.note(f"queue {name}: limits {limits}")
            else:
                getattr(queues, kind)(self.engine, name)
                self.note(f"queue {name}: {kind}")
        except OperationalError:
            self.note(f"queue {name}: {kind} failed, the database is unavailable")

    def pass_(self) -> None:
        node = self.pick(self.active())
        if node is not None:
            self.run_pass(node)

    def handler_returns(self) -> None:
        candidates = [(n, j) for n in self.active() if n.executor for j in n.executor.live]
        if not candidates:
            return
        node, job = self.rng.choice(candidates)
        key = job.running.key  # type: ignore[attr-defined]
        running = job.running  # type: ignore[attr-defined]
        late = running.deadline is not None and running.deadline <= node.scheduler.clock()
        if late and running.outcome is None and not running.settled:
            self.fail(f"{key} returns past its timeout, on {node.name}, never stopped at it")
        self.behaviour[key] = self.rng.choices(
            ["result", "none", "fail", "honour", "map"], [40, 15, 25, 15, 10]
        )[0]
        assert node.executor is not None
        node.executor.live.remove(job)
        outcome = None
        try:
            outcome = job.run()
        finally:
            job.end(outcome)
        self.note(f"{node.name} handler {key} returned {self.returns.get(key, ('?',))[0]}")

    def handler(self, ctx: TaskContext) -> Any:
        key = (ctx.id, ctx.attempt)
        behaviour = self.behaviour.pop(key, "result")
        if behaviour == "honour" and ctx.cancel.is_set():
            self.returns[key] = ("failed", "stopped on request")
            raise HandlerFailed("stopped on request")
        if behaviour == "fail":
            self.returns[key] = ("failed", f"fail {ctx.id}#{ctx.attempt}")
            raise HandlerFailed(f"fail {ctx.id}#{ctx.attempt}")
        result = None if behaviour == "none" else {"task": ctx.id, "attempt": ctx.attempt}
        if behaviour == "map":
            self._add_tasks(ctx)
        self.returns[key] = ("completed", result)
        return result

    def _add_tasks(self, ctx: TaskContext) -> None:
        """Add 1 to 3 tasks depending on this one: they must exist if and only if this
        attempt's completion commits, and this task's dependents must wait for them."""
        n = self.rng.randint(1, 3)
        added = ctx.add_tasks(
            {
                "id": f"{ctx.id}.{ctx.attempt}.{k}",
                "type": "sim",
                "duration_ms": 1,
                "dependencies": [ctx.id],
            }
            for k in range(n)
        )
        self.added[(ctx.id, ctx.attempt)] = added
        for child in added:
            self.added_by[child] = ctx.id
            self.deps_of[child] = [ctx.id]

    def tick(self, seconds: float | None = None) -> None:
        """Let time pass; what runs on a timer in production runs when it falls due."""
        step = seconds if seconds is not None else self.rng.uniform(0.05, 2.0)
        was_out = self.outage()
        start = self.clock.elapsed
        # The part of this step outside the outage (which may end within it).
        out = max(0.0, min(start + step, self.outage_until) - start)
        if self.active():
            self.serving += step - out  # time in which instances could do their work
        self.available += step - out
        self.clock.elapsed += step
        if (was_out and not self.outage()) or step > HEARTBEAT_S:
            # An outage's end, or a stall of every thread long enough that a heartbeat
            # comes two periods after the one before (a gap in every instance's beats).
            self.disturbed = self.serving
        now = self.clock.elapsed
        for node in list(self.nodes):
            if node is None:
                continue
            if node.paused_until is not None:
                if now < node.paused_until:
                    continue
                node.paused_until = None
                self.disturbed = self.serving
                self.note(f"{node.name} resumes")
            # The timeouts' thread: on time, whatever the database and the loop are doing.
            if node.scheduler.expire_timeouts():
                self.note(f"{node.name} ends attempts at their timeout")
            if now >= node.next_heartbeat:
                # After a failure, again within a second (Periodic's retry_s).
                beat = self.heartbeat(node)
                node.next_heartbeat = now + (node.heartbeat_s if beat else node.retry_s)
            if now >= node.next_reap:
                node.next_reap = now + REAP_S
                self.reap_with(node)
            if now >= node.next_fold:
                node.next_fold = now + FOLD_S
                self.fold(node)
            if now >= node.next_fire and node.draining_since is None:
                node.next_fire = now + FIRE_S
                self.fire_with(node)
            if self.nodes[node.index] is node and now >= node.next_pass:
                self.run_pass(node)
            if node.draining_since is not None and self.nodes[node.index] is node:
                idle = node.scheduler.idle()
                if idle or now - node.draining_since >= GRACE_S:
                    if self.outage():
                        node.scheduler.hurry()  # its writes fail at once, not for seconds
                    node.scheduler.finish_drain()
                    self.down(node, "drained and stopped")
        self.note(f"tick {step:.2f} s")

    def heartbeat(self, node: Node) -> bool:
        """Beat on the heartbeat's own schedule; tell whether the database took it."""
        try:
            self.beat(node)
        except OperationalError:
            self.note(f"heartbeat {node.scheduler.id}: the database is unavailable")
            return False
        return True

    def beat(self, node: Node) -> None:
        """Heartbeat once and book it; raise what the heartbeat raises."""
        identity = node.scheduler.id
        alive = node.scheduler.heartbeat.run_once(self.clock.now())
        if alive:
            node.paused_since_beat = False
        if alive and identity is not None:
            self.beat_at[identity] = self.serving
            self.beat_mono[identity] = self.clock.elapsed
            self.beat_avail[identity] = self.available
        if not alive:
            self.declared_dead(node, identity)
        self.note(f"heartbeat {identity}: {'ok' if alive else 'declared dead'}")

    def tick_long(self) -> None:
        self.tick(self.rng.uniform(HEARTBEAT_S, LEASE_S))

    def cancel(self) -> None:
        target = self.target({"QUEUED", "RUNNING"})
        if target is None:
            return
        task_id, _ = target
        try:
            task = actions.cancel(self.engine, task_id)
        except ApiError as error:
            self.note(f"cancel {task_id}: {error.code}")
            return
        except OperationalError:
            self.note(f"cancel {task_id}: the database is unavailable")
            return
        self.cancelled.add(task_id)
        self.cancelled.update(self.statuses_now({"CANCELLED"}))
        if task["status"] == "RUNNING" and self.rng.random() < 0.5:
            # Asked through the API of the process that runs it: it hears at once.
            for node in self.active():
                node.scheduler.cancel_running(task_id, task["attempts"])
        self.note(f"cancel {task_id}: {task['status']}")

    def retry(self) -> None:
        # Above all a task with a dependent that already runs (an all_done cleanup): when
        # it comes back, that dependent must wait for it again if it is requeued.
        rows = self.rows()
        running = {i for i, r in rows.items() if r.status == "RUNNING"}
        busy = sorted(
            d
            for t in running
            for d in self.deps_of.get(t, [])
            if d in rows and rows[d].status in BLOCKING
        )
        target = (self.rng.choice(busy), "") if busy and self.rng.random() < 0.5 else None
        target = target or self.target(set(BLOCKING))
        if target is None:
            return
        task_id, _ = target
        before = self.statuses_now(set(TERMINAL))
        try:
            actions.retry(self.engine, task_id)
        except ApiError as error:
            root = (error.details or {}).get("root")
            self.note(f"retry {task_id}: {error.code} {root}")
            if root is not None:
                self._check_retry_root(task_id, root)
            return
        except OperationalError:
            self.note(f"retry {task_id}: the database is unavailable")
            return
        back = before & self.statuses_now({"QUEUED"})
        self.cancelled -= back
        self.note(f"retry {task_id}: requeued {sorted(back)}")

    def _check_retry_root(self, task_id: str, root: str) -> None:
        """A refused retry names the task whose retry works, as the model finds it."""
        rows, edges = self.snapshot()
        expected = model_retry_root(task_id, rows, edges)
        if root != expected or rows[root].status not in BLOCKING:
            self.fail(f"retry {task_id} named {root} ({rows[root].status}); model: {expected}")

    def ask_blockers(self) -> None:
        """Ask why a task is not running; its root causes must be the model's."""
        target = self.target({"QUEUED", Status.UPSTREAM_FAILED.value, "CANCELLED"})
        if target is None:
            return
        task_id, _ = target
        try:
            answer = blockers.blockers(self.engine, task_id)
        except OperationalError:
            self.note(f"blockers {task_id}: the database is unavailable")
            return
        rows, edges = self.snapshot()
        expected = model_root_causes(task_id, rows, edges)
        if (answer["root_causes"], answer["root_causes_truncated"]) != (expected, False):
            self.fail(f"blockers {task_id}: {answer}; model's root causes: {expected}")
        self.note(f"blockers {task_id}: {answer['root_causes']}")

    def edit_task(self) -> None:
        """Change a QUEUED task's priority, run_at or queue, as a user would."""
        target = self.target({"QUEUED"})
        if target is None:
            return
        task_id, _ = target
        rng = self.rng
        field_ = rng.choice(["priority", "run_at", "queue"])
        value: Any = {
            "priority": rng.choice([-5, 0, 9]),
            "run_at": rng.choice(
                [None, self.clock.now() + timedelta(seconds=rng.uniform(0.5, 20))]
            ),
            "queue": rng.choice(["default", "q1", "q2"]),
        }[field_]
        try:
            task = actions.edit(self.engine, task_id, {field_: value})
        except ApiError as error:
            self.note(f"edit {task_id} {field_}: {error.code}")
            return
        except OperationalError:
            self.note(f"edit {task_id}: the database is unavailable")
            return
        if field_ == "run_at":
            if value is None:
                self.run_at_of.pop(task_id, None)
            else:
                self.run_at_of[task_id] = value
        self.note(f"edit {task_id}: {field_} {value} -> {task['status']}")

    def delete_task(self) -> None:
        """Delete a finished task (with what is below it, sometimes), as a user would."""
        target = self.target(set(TERMINAL))
        if target is None:
            return
        task_id, _ = target
        before = self.rows()
        below = self.rng.random() < 0.3
        try:
            deleted = actions.delete(self.engine, task_id, with_dependents=below)
        except ApiError as error:
            self.note(f"delete {task_id}: {error.code} {(error.details or {}).get('blocking')}")
            return
        except OperationalError:
            self.note(f"delete {task_id}: the database is unavailable")
            return
        for gone in deleted:
            if before[gone].status not in TERMINAL:
                self.fail(f"delete {task_id} removed {gone}, which was {before[gone].status}")
            self.gone[gone] = before[gone].status
            self.seen.pop(gone, None)
        self.note(f"delete {task_id}{' with what is below' if below else ''}: {deleted}")

    def batch_action(self) -> None:
        """Cancel or retry a whole batch, as a user would."""
        with self.checker_reads() as conn:
            # In the order the batches were stored: their ids are random, the seed's
            # choice must not be.
            query = (
                select(tasks.c.batch_id)
                .where(tasks.c.batch_id.is_not(None))
                .group_by(tasks.c.batch_id)
                .order_by(func.min(tasks.c.seq))
            )
            found = [b for (b,) in conn.execute(query)]
        if not found:
            return
        batch_id = self.rng.choice(found)
        kind = self.rng.choice(["cancel", "retry"])
        before = self.statuses_now(set(TERMINAL))
        try:
            answer = getattr(batches, kind)(self.engine, batch_id)
        except ApiError as error:
            self.note(f"batch {kind} {batch_id}: {error.code}")
            return
        except OperationalError:
            self.note(f"batch {kind} {batch_id}: the database is unavailable")
            return
        if kind == "cancel":
            self.cancelled.update(self.statuses_now({"CANCELLED"}))
        else:
            self.cancelled -= before & self.statuses_now({"QUEUED"})
        self.note(f"batch {kind} {batch_id}: {answer['changed']}")

    def target(self, statuses: set[str]) -> tuple[str, str] | None:
        rows = self.rows()
        likely = sorted(i for i, r in rows.items() if r.status in statuses)
        pool = likely if likely and self.rng.random() < 0.8 else sorted(rows)
        if not pool:
            return None
        task_id = self.rng.choice(pool)
        return task_id, rows[task_id].status

    def prune(self) -> None:
        before = self.rows()
        try:
            removed = retention.prune(self.engine, timedelta(0), now=START + timedelta(days=3650))
        except OperationalError:
            self.note("prune: failed in a chunk, which rolled back")
            return
        for task_id in set(before) - set(self.rows()):
            self.gone[task_id] = before[task_id].status
            self.seen.pop(task_id, None)
        self.note(f"prune: {removed} removed")

    def fold(self, node: Node) -> None:
        folder = node.scheduler.folder
        if not folder.needed:
            return
        try:
            moved = folder.run_once(self.clock.now())
        except OperationalError:
            self.note(f"fold by {node.name}: the database is unavailable")
            return
        self.note(f"fold by {node.name}: {moved} delta(s)")

    def reap(self) -> None:
        node = self.pick(self.active())
        if node is not None:
            self.reap_with(node)

    def reap_with(self, node: Node) -> None:
        try:
            recovered = node.scheduler.reaper.run_once(self.clock.now())
        except OperationalError:
            self.note(f"reap by {node.name}: the database is unavailable")
            return
        if recovered:
            self.note(f"reap by {node.name}: {recovered} attempt(s) ended")

    def crash(self) -> None:
        node = self.pick([n for n in self.nodes if n is not None])
        if node is not None:
            self.down(node, "killed")

    def restart(self) -> None:
        down = [i for i, n in enumerate(self.nodes) if n is None]
        if down:
            self.boot(self.rng.choice(down))

    def pause(self) -> None:
        node = self.pick(self.active())
        if node is not None:
            node.paused_until = self.clock.elapsed + node.lease_s + self.rng.uniform(1, 10)
            node.paused_since_beat = True
            self.note(f"{node.name} paused")

    def drain(self) -> None:
        node = self.pick([n for n in self.active() if n.draining_since is None])
        if node is None:
            return
        if self.rng.random() < 0.5 and node.scheduler.id is not None:
            # SIGTERM while a pass that claims tasks has committed, before their threads.
            self.armed["drain.mid_pass"] = node.scheduler.id
            self.note(f"armed a drain during {node.scheduler.id}'s next claiming pass")
            return
        self.start_drain(node)

    def start_drain(self, node: Node) -> None:
        node.draining_since = self.clock.elapsed
        node.scheduler.begin_drain()
        self.note(f"{node.name} drains")

    def drain_mid_pass(self, worker: str, claimed: int) -> None:
        """What the stop's thread does while the pass goes on: begin the drain, then wait
        while the instance is busy, or end at once if it finds it idle."""
        del self.armed["drain.mid_pass"]
        (node,) = [n for n in self.active() if n.scheduler.id == worker]
        self.note(f"a stop comes while {worker}'s pass has claimed {claimed}")
        self.start_drain(node)
        node.stop_found_idle = node.scheduler.idle()

    def database_outage(self) -> None:
        """The database stops answering (a restart, a network cut) for up to 1.5 leases."""
        self.outage_until = self.clock.elapsed + self.rng.uniform(0.5, 1.5 * LEASE_S)
        self.note(f"database outage until t={self.outage_until:.2f}")

    def step_clock(self) -> None:
        """The wall clock jumps forward (NTP, a resumed VM); the monotonic one does not."""
        jump = self.rng.uniform(1, 3) * LEASE_S
        self.clock.stepped += jump
        self.note(f"wall clock steps {jump:.2f} s forward")

    def lose_notifications(self) -> None:
        """Notifications are lost for a while (the LISTEN connection is down)."""
        self.deaf_until = self.clock.elapsed + self.rng.uniform(2, 60)
        self.note(f"notifications lost until t={self.deaf_until:.2f}")

    def _announced(self, **_context: Any) -> None:
        if self.clock.elapsed >= self.deaf_until:
            self.announced = True

    def deliver_notifications(self) -> None:
        """A committed NOTIFY wakes every running instance for a pass at once."""
        if not self.announced:
            return
        self.announced = False
        for node in self.active():
            node.next_pass = min(node.next_pass, self.clock.elapsed)

    def _outage(self, *_args: Any, **_kwargs: Any) -> None:
        if self.outage() and not self.reading:
            raise OperationalError("statement", {}, Exception("the database is unavailable"))

    def lose_acknowledgement(self) -> None:
        self._arm("cycle.committed")

    def crash_at_thread_start(self) -> None:
        self._arm("thread.started")

    def fail_requeue(self) -> None:
        self._arm("requeue.before_write")

    def _arm(self, point: str) -> None:
        node = self.pick(self.active())
        if node is not None and node.scheduler.id is not None:
            self.armed[point] = node.scheduler.id
            self.note(f"armed {point} for {node.scheduler.id}")

    def _fault(self, point: str) -> Any:
        def hook(**context: Any) -> None:
            worker = context.get("worker")
            if worker is None and "claim" in context:
                worker = context["claim"].worker
            if worker is None and "scheduler" in context:
                worker = context["scheduler"].id
            if (
                point == "cycle.committed"
                and self.armed.get("drain.mid_pass") == worker
                and context["cycle"].claims
            ):
                self.drain_mid_pass(worker, len(context["cycle"].claims))
            if self.armed.get(point) != worker:
                return
            del self.armed[point]
            self.note(f"fault {point} strikes {worker}")
            if point == "cycle.committed":
                raise LostAcknowledgement()
            if point == "thread.started":
                raise SimCrash()
            raise OperationalError("UPDATE", {}, Exception("the database went away"))

        return hook

    def _prune_fault(self, **context: Any) -> None:
        if self.rng.random() < 0.2:
            self.note("fault prune.chunk strikes")
            raise OperationalError("DELETE", {}, Exception("the database went away"))

    # -- the checker ----------------------------------------------------------------

    @contextmanager
    def checker_reads(self) -> Iterator[Connection]:
        """A read of the checker's own, which sees through an outage."""
        self.reading = True
        try:
            with database.read(self.engine) as conn:
                yield conn
        finally:
            self.reading = False

    @contextmanager
    def checker_snapshot(self) -> Iterator[Connection]:
        """A read of the checker's own in which every statement sees the same snapshot."""
        self.reading = True
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        finally:
            self.reading = False

    def rows(self) -> dict[str, Any]:
        with self.checker_reads() as conn:
            return {r.id: r for r in conn.execute(select(tasks))}

    def snapshot(self) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """Every task row and every task's dependencies, read in one transaction."""
        edges: dict[str, list[str]] = {}
        with self.checker_reads() as conn:
            rows = {r.id: r for r in conn.execute(select(tasks))}
            for task_id, dependency in conn.execute(select(deps.c.task_id, deps.c.dependency_id)):
                edges.setdefault(task_id, []).append(dependency)
        return rows, edges

    def statuses_now(self, statuses: set[str]) -> set[str]:
        return {i for i, r in self.rows().items() if r.status in statuses}

    def starting(self, node: Node, job: Job) -> None:
        """Check a handler thread as it starts: what must hold before any task runs."""
        running = job.running  # type: ignore[attr-defined]
        claim = running.claim
        executor = node.executor
        assert executor is not None
        if len(executor.live) >= executor.workers:
            self.fail(f"{node.name} started {claim.key} with every thread busy")
        if any(j.running.claim.id == claim.id for j in executor.live):  # type: ignore[attr-defined]
            self.fail(f"{node.name} holds two live threads for task {claim.id}")
        rows, edges = self.snapshot()
        row = rows[claim.id]
        if (row.status, row.attempts, row.worker) != ("RUNNING", claim.attempt, claim.worker):
            self.fail(f"{claim.key} started, but its row is {row.status} {row.attempts}")
        original = self.deps_of.get(claim.id, [])
        if sorted(edges.get(claim.id, [])) != sorted(d for d in original if d in rows):
            self.fail(f"{claim.id} has lost dependencies that still exist: {original}")
        statuses = [rows[d].status if d in rows else self.gone[d] for d in original]
        wanted = set(TERMINAL) if row.trigger_rule == "all_done" else {"COMPLETED"}
        if not all(s in wanted for s in statuses):
            self.fail(f"{claim.key} ({row.trigger_rule}) started with dependencies {statuses}")
        now = self.clock.now()
        submitted = self.run_at_of.get(claim.id)
        if submitted is not None and (submitted > now or row.run_at != submitted):
            self.fail(f"{claim.key} started at {now}; run_at {submitted}, now {row.run_at}")
        if row.not_before is not None and row.not_before > now:
            self.fail(f"{claim.key} started before the end of its backoff {row.not_before}")
        if claim.id in self.cancelled:
            self.fail(f"{claim.key} started after a user cancelled it")
        self._check_queue(claim.key, row.queue, rows)
        if row.failures >= row.max_attempts:
            self.fail(f"{claim.key} started with its budget spent: {row.failures} failures")
        seen = self.seen.setdefault(claim.id, Seen(row.status, row.attempts, row.failures))
        seen.starts += 1
        self.started.add(claim.key)
        if seen.starts > row.max_attempts + seen.free_requeues:
            self.fail(
                f"{claim.id} started {seen.starts} times since queued by a user; "
                f"max_attempts {row.max_attempts}, free requeues {seen.free_requeues}"
            )

    def _check_queue(self, key: tuple[str, int], name: str, rows: dict[str, Any]) -> None:
        """A start honours its queue as it stands: not paused, within its concurrency
        limit (its RUNNING rows, this one included), within its rate."""
        with self.checker_reads() as conn:
            (queue,) = conn.execute(select(queue_rows).where(queue_rows.c.name == name)).all() or [
                None
            ]
        if queue is None:
            return
        worker = rows[key[0]].worker
        node = next(n for n in self.nodes if n is not None and n.scheduler.id == worker)
        serves = node.scheduler.queues
        if serves and name not in serves:
            self.fail(f"{key} of queue {name} started by {node.name}, which serves {serves}")
        if queue.paused:
            self.fail(f"{key} started in the paused queue {name}")
        running = sum(1 for r in rows.values() if r.queue == name and r.status == "RUNNING")
        if queue.concurrency_limit is not None and running > queue.concurrency_limit:
            self.fail(f"{key} started as {running} run in {name}, limit {queue.concurrency_limit}")
        rate = queue.rate_limit_per_s
        # Buckets refill by the claimers' wall clock, which never goes back for them: a
        # clock stepped forward refills a bucket (one burst at most), one stepped back
        # refills nothing until it passes the last spend.
        starts = self.queue_starts.setdefault(name, [])
        self.bucket_time = max(self.bucket_time, (self.clock.now() - START).total_seconds())
        now = self.bucket_time
        starts.append(now)
        if rate is not None:
            burst = max(1.0, rate)
            for k, since in enumerate(starts):
                if len(starts) - k > burst + rate * (now - since) + 1e-6:
                    self.fail(
                        f"{len(starts) - k} starts in {name} in {now - since:.2f}s; rate {rate}/s"
                    )

    def committed(self, changes: list[Change]) -> None:
        """Follow every state change as it commits: who may start again, and why."""
        for task_id, _type, attempt, status, reason in changes:
            parent = self.added_by.get(task_id)
            if parent is not None and reason == "submitted":
                # Added with its parent's completion: the parent's dependents wait for it.
                for dependent, dependencies in self.deps_of.items():
                    adopted = parent in dependencies and self.added_by.get(dependent) != parent
                    if adopted and task_id not in dependencies:
                        dependencies.append(task_id)
            name, _, stamp = task_id.rpartition(".")
            if name in self.fired_names and task_id not in self.deps_of:
                # Born by a firing: its dependencies are its siblings of the same instant.
                sid, dependencies = self.fired_names[name]
                self.deps_of[task_id] = [f"{d}.{stamp}" for d in dependencies]
                self.firings[sid].add(stamp)
            seen = self.seen.setdefault(task_id, Seen(status, attempt, 0))
            if reason.startswith(("retried by a user", "its dependency ", "its batch ")):
                seen.starts = seen.free_requeues = 0
            elif status == "QUEUED" and reason.startswith("back in the queue"):
                key = (task_id, attempt)
                if reason == LOST and key in self.started:
                    self.fail(f"{key} ran, yet was requeued as a claim that never started")
                if reason != LOST and key in self.returns:
                    self.fail(f"{key} had returned, yet was requeued at shutdown")
                seen.free_requeues += 1

    def live_attempts(self) -> set[tuple[str, str, int]]:
        """(worker, task, attempt) of every attempt some process still holds."""
        held = set()
        for node in self.nodes:
            if node is None:
                continue
            for running in node.scheduler.attempts():
                if not running.settled:
                    held.add((running.claim.worker, *running.key))
        return held

    def check(self) -> None:
        for node in self.nodes:
            if node is not None and node.scheduler.id not in self.beat_at:
                self.beat_at[node.scheduler.id or ""] = self.serving  # registered just now
        self._check_schedules()
        rows, edges = self.snapshot()
        self._check_added(rows)
        held = self.live_attempts()
        now = self.serving
        for task_id, row in rows.items():
            seen = self.seen.setdefault(task_id, Seen(row.status, row.attempts, row.failures))
            self._check_task(task_id, row, rows, edges.get(task_id, []), held, seen, now)
            seen.status, seen.attempts, seen.failures = row.status, row.attempts, row.failures
        for node in self.nodes:
            if node is None or node.executor is None:
                continue
            live = node.executor.live
            if len(live) > node.executor.workers:
                self.fail(f"{node.name} runs {len(live)} threads; cap {node.executor.workers}")
            ids = Counter(j.running.claim.id for j in live)  # type: ignore[attr-defined]
            doubled = [t for t, n in ids.items() if n > 1]
            if doubled:
                self.fail(f"{node.name} holds two live threads for {doubled}")
        self._check_counts()
        self._check_attempts()
        self._check_events()

    def _check_events(self) -> None:
        """Every committed state change is an event: each task's last event (the stream's
        view of it) names the status it has now, and one exists for every task."""
        # Read on from the last check: a step's transactions have all ended by now, so no
        # number below the newest read can still appear.
        newer = (
            select(task_events.c.seq, task_events.c.task_id, task_events.c.status)
            .where(task_events.c.seq > self._events_read)
            .order_by(task_events.c.seq)
        )
        last = self._last_event
        with self.checker_reads() as conn:
            rows = dict(conn.execute(select(tasks.c.id, tasks.c.status)).all())
            for seq, task_id, status in conn.execute(newer):
                last[task_id] = status
                self._events_read = seq
        for task_id, status in rows.items():
            if last.get(task_id) != status:
                self.fail(f"{task_id} is {status}, its last event says {last.get(task_id)}")

    def _check_attempts(self) -> None:
        """Every attempt that ended is in the history, exactly once, and the last one
        agrees with the task; the one running now is not there yet."""
        with self.checker_reads() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.status, tasks.c.attempts)).all()
            recorded: dict[str, dict[int, str]] = {}
            for task_id, number, outcome in conn.execute(
                select(task_attempts.c.task_id, task_attempts.c.attempt, task_attempts.c.outcome)
            ):
                recorded.setdefault(task_id, {})[number] = outcome
        for task_id, status, attempts in rows:
            history = recorded.pop(task_id, {})
            ended = set(range(1, attempts + 1)) - ({attempts} if status == "RUNNING" else set())
            if set(history) != ended:
                self.fail(f"{task_id} ({status}, {attempts} attempts) records {sorted(history)}")
            last = history.get(attempts)
            if status in ("COMPLETED", "FAILED") and last != status:
                self.fail(f"{task_id} is {status}, its last attempt recorded {last}")
        if recorded:
            self.fail(f"attempts recorded for tasks that are gone: {sorted(recorded)}")

    def _check_counts(self) -> None:
        """The counts by status, as /metrics and the dashboard read them, are exact."""
        with self.checker_snapshot() as conn:
            shown = counts.by_status(conn)
            real = dict.fromkeys((s.value for s in Status), 0)
            query = select(tasks.c.status, func.count()).group_by(tasks.c.status)
            real.update({status: int(n) for status, n in conn.execute(query)})
            per_queue = counts.by_queue(conn)
            query = select(tasks.c.queue, tasks.c.status, func.count()).group_by(
                tasks.c.queue, tasks.c.status
            )
            real_per_queue = {(q, st): int(n) for q, st, n in conn.execute(query)}
        if shown != real:
            self.fail(f"the counts by status are {shown}, the tasks {real}")
        kept = {(q, st): n for q, by in per_queue.items() for st, n in by.items() if n}
        if kept != real_per_queue:
            self.fail(f"the counts by queue are {kept}, the tasks {real_per_queue}")
        # A task in a queue without a row would never be claimed: a deletion must leave
        # none behind.
        with self.checker_reads() as conn:
            named = {name for (name,) in conn.execute(select(queue_rows.c.name))}
        homeless = {q for q, _ in real_per_queue if q not in named and q != DEFAULT_QUEUE}
        if homeless:
            self.fail(f"tasks of the queues {sorted(homeless)}, which have no row")

    def _check_task(
        self,
        task_id: str,
        row: Any,
        rows: dict[str, Any],
        dependencies: list[str],
        held: set[tuple[str, str, int]],
        seen: Seen,
        now: float,
    ) -> None:
        statuses = [rows[d].status for d in dependencies]
        if row.status == "QUEUED":
            unfinished = sum(s in UNFINISHED for s in statuses)
            if row.pending_deps != unfinished:
                self.fail(f"{task_id} counts {row.pending_deps} pending, has {unfinished}")
            if row.trigger_rule == "all_success" and any(s in BLOCKING for s in statuses):
                behind = dict(zip(dependencies, statuses, strict=True))
                self.fail(f"{task_id} QUEUED forever behind {behind}")
        if row.failures > row.max_attempts:
            self.fail(f"{task_id} failed {row.failures} times; max_attempts {row.max_attempts}")
        if row.status == "RUNNING":
            if (row.worker, task_id, row.attempts) in held:
                seen.unowned_since = None
            elif seen.unowned_since is None or seen.attempts != row.attempts:
                seen.unowned_since = now
            else:
                self._check_recovery(task_id, row, seen.unowned_since, now)
        else:
            seen.unowned_since = None
        self._check_fence(task_id, row)

    def _check_recovery(self, task_id: str, row: Any, since: float, now: float) -> None:
        """A RUNNING row no live attempt holds: its owner or, once it is dead, the others
        must end it in time."""
        owner = next(
            (n for n in self.nodes if n is not None and n.scheduler.id == row.worker), None
        )
        if owner is not None and owner.last_good_pass >= since + owner.heartbeat_s + POLL_S:
            self.fail(f"{task_id} RUNNING under {row.worker}, which passes without running it")
        last_beat = max(since, self.beat_at.get(row.worker, since))
        # After a boot, an outage or a pause the others first spend a lease in touch.
        last_beat = max(last_beat, self.disturbed + HEARTBEAT_S)
        if now - last_beat > RECOVERY_BOUND_S:
            self.fail(f"{task_id} RUNNING under {row.worker} with no live attempt")

    def _check_added(self, rows: dict[str, Any]) -> None:
        """The tasks an attempt added exist if and only if its completion committed."""
        for (parent, attempt), added in self.added.items():
            row = rows.get(parent)
            if row is None:
                continue  # pruned: what it added may be too
            completed = row.status == "COMPLETED" and row.attempts == attempt
            for child in added:
                exists = child in rows or child in self.gone
                if completed and not exists:
                    self.fail(f"{parent} completed as attempt {attempt}, but {child} is missing")
                if exists and not completed:
                    self.fail(f"{child} exists, but {parent} attempt {attempt} did not complete")

    def _check_fence(self, task_id: str, row: Any) -> None:
        """The outcome a row shows came from the attempt the row holds, never a stale one."""
        key = (task_id, row.attempts)
        if row.status == "COMPLETED":
            kind, result = self.returns.get(key, ("missing", None))
            if kind != "completed" or row.result != result:
                self.fail(f"{task_id} COMPLETED as attempt {row.attempts}, which returned {kind}")
        if row.error_code == "handler_error" and row.status in ("FAILED", "QUEUED"):
            kind, error = self.returns.get(key, ("missing", None))
            if kind != "failed" or row.error != error:
                self.fail(f"{task_id} failed as attempt {row.attempts}, which returned {kind}")

    def _check_schedules(self) -> None:
        """A firing's tasks and its record commit together, and no instant fires twice."""
        with self.checker_reads() as conn:
            found = list(conn.execute(select(schedule_rows)))
        for row in found:
            if row.failed:
                # Nothing here can make a firing fail but its ids already being taken:
                # an instant fired a second time.
                self.fail(f"schedule {row.id} failed to fire: {row.last_error}")
            if row.fired != len(self.firings[row.id]):
                self.fail(
                    f"schedule {row.id} records {row.fired} firings; their tasks were "
                    f"committed for {sorted(self.firings[row.id])}"
                )
            if row.fired < self.fired_seen.get(row.id, 0):
                self.fail(f"schedule {row.id} forgot firings: {row.fired}")
            self.fired_seen[row.id] = row.fired
            if not row.paused and row.next_fire_at is None:
                self.fail(f"schedule {row.id} runs, but has no next firing")

    # -- the end: heal, and everything must finish -----------------------------------

    def settle(self) -> None:
        self.step_no += 1
        self.note("settle: faults off, every node healed")
        self.armed.clear()
        self.outage_until = self.deaf_until = -1.0
        self.settling = True
        for name in ("default", "q1", "q2"):  # every queue open, so that everything ends
            queues.resume(self.engine, name)
            queues.set_limits(
                self.engine, name, {"concurrency_limit": None, "rate_limit_per_s": None}
            )
        for sid in self.schedule_ids:  # no new tasks while the rest finishes
            with suppress(ApiError):  # deleted
                schedules.edit(self.engine, sid, {"paused": True}, now=self.clock.now())
        for node in self.nodes:
            if node is not None:
                node.paused_until = None
        for _ in range(SETTLE_ROUNDS):
            for index, node in enumerate(self.nodes):
                if node is None:
                    self.boot(index)
            for node in self.active():
                while node.executor and node.executor.live:
                    self.behaviour_all(node)
            self.tick(self.rng.uniform(0.5, 3.0))
            self.check()
            rows = self.rows()
            if all(r.status in TERMINAL for r in rows.values()) and not any(
                node.scheduler.attempts() for node in self.active()
            ):
                return
        stuck = {i: r.status for i, r in self.rows().items() if r.status not in TERMINAL}
        self.fail(f"did not settle: {stuck}")

    def behaviour_all(self, node: Node) -> None:
        assert node.executor is not None
        job = node.executor.live.pop(0)
        key = job.running.key  # type: ignore[attr-defined]
        self.behaviour[key] = self.rng.choice(["result", "fail", "honour"])
        outcome = None
        try:
            outcome = job.run()
        finally:
            job.end(outcome)


def seeds(first: int, count: int) -> Iterator[int]:
    """The seeds of one run: `count` of them from `first`."""
    return iter(range(first, first + count))


def model_retry_root(task_id: str, rows: dict[str, Any], edges: dict[str, list[str]]) -> str:
    """The task a retry of `task_id` names, from the rows alone: down the lowest
    dependency that did not complete, through all_success tasks that have one."""

    def stopped(i: str) -> list[str]:
        return sorted(d for d in edges.get(i, []) if rows[d].status in BLOCKING)

    if rows[task_id].trigger_rule != "all_success" or not stopped(task_id):
        return task_id
    current = stopped(task_id)[0]
    while rows[current].trigger_rule == "all_success" and stopped(current):
        current = stopped(current)[0]
    return current


def model_root_causes(task_id: str, rows: dict[str, Any], edges: dict[str, list[str]]) -> list[str]:
    """A task's root causes from the rows alone: for a QUEUED task, the tasks its
    unfinished dependencies wait for that wait for none; for one a dependency stopped,
    the tasks that failed or were cancelled on their own below it."""
    row = rows[task_id]
    dependencies = edges.get(task_id, [])
    if row.status == "QUEUED":
        start = [d for d in dependencies if rows[d].status in UNFINISHED]
        follow, only_stopped = set(UNFINISHED), False
    elif row.error_code in ("upstream_failed", "upstream_cancelled"):
        start = [d for d in dependencies if rows[d].status != "COMPLETED"]
        follow, only_stopped = set(BLOCKING), True
    else:
        return []
    seen, frontier, roots = set(start), list(dict.fromkeys(start)), set()
    while frontier:
        onward: list[str] = []
        for i in frontier:
            r = rows[i]
            stopped = (
                r.status == Status.UPSTREAM_FAILED.value or r.error_code == "upstream_cancelled"
            )
            goes_on = stopped or not only_stopped
            below = [d for d in edges.get(i, []) if rows[d].status in follow] if goes_on else []
            if not below:
                roots.add(i)
            onward.extend(d for d in below if d not in seen)
            seen.update(below)
        frontier = list(dict.fromkeys(onward))
    return sorted(roots)
