"""The floor under a scheduler pass on SQLite: its statements alone, on the driver.

A pass writes the outcomes of the attempts that ended and claims as many tasks as slots
are free, in one durable commit. Here the same statements (from app.storage.scheduler_sql)
run on a bare sqlite3 connection with the service's settings (WAL, synchronous FULL),
with no Python around them but the loop, on a table the batch API filled: completing the
previous pass's tasks, counting down their dependents, promoting what fell due, claiming
16, committing. What it takes is the least a pass can cost on this machine's disk and CPU,
and so bounds what one scheduler can run at 16 slots: every slot waits for a pass to hand
it a task and for another to write its outcome.

The bare designs go one step further: the same statements driving 16 real threads that
run no-op tasks, or sleep 1 ms, with nothing of the service around them.
- `loop`: the service's design. One thread runs passes; each claim goes to a thread through
  a queue, each thread hands its outcome back and wakes the loop.
- `group`: the alternative of letting each task's thread write its own outcome and claim
  its next task. Those returning together share one transaction and commit, led by the
  first.
What the better of them reaches is what this machine gives the design with no service
code at all: the service's figures are to be read against it, not against the ceilings
computed from one pass.

The e2e figures also count the submission: from the first batch sent to the last task
finished, the batches are stored while the first tasks run. `bare_e2e` adds that to the
loop design: a second thread on its own connection inserts the tasks in batches of 1,000
(the rows and the `submitted` events the service writes, with the statements it uses,
the parameters made before the clock starts), each batch one durable commit that wakes
the loop, while the loop runs them.

`scheduler_alone` runs the bare loop design's figure with the service's own scheduler in
its place (in this process, no HTTP, the tasks stored first), and reads the CPU time a
task of the process and of its loop thread beside the bare design's: what the service's
code adds to the same statements, apart from the requests.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.storage.database import sqlite_time, utcnow
from bench import db as store
from bench import machine
from bench.growth import open_app
from bench.noop_handlers import NOOP
from bench.server import BASE_SETTINGS, migrate

SLOTS = int(BASE_SETTINGS["MAX_CONCURRENT_TASKS"])
PASSES = 400
PAGED_PASSES = 41
WORKER = "floor"
HANDLER_S = 0.001  # the tasks of the `work` figure
BARE_TASKS = 8_000  # tasks of each bare-design run
RUN_TIMEOUT_S = 120.0  # the longest a bare-design run may take


def pass_floor(workdir: Path, passes: int = PASSES) -> dict[str, Any]:
    """Time `passes` bare passes of SLOTS tasks; return the median and what it bounds.

    Every other pass leaves out the task events the service writes with each state change
    (`task_events`): the difference of the medians is what writing them costs a pass.
    """
    conn = _connect(workdir, "floor", SLOTS * (passes + PAGED_PASSES + 1))
    try:
        times: dict[bool, list[float]] = {True: [], False: []}
        previous: list[tuple[str, int]] = []
        for k in range(passes):
            began = time.perf_counter()
            previous = one_pass(conn, previous, events=k % 2 == 0)
            times[k % 2 == 0].append(time.perf_counter() - began)
        pages = _wal_pages(conn, previous)
    finally:
        conn.close()
    pass_s = statistics.median(times[True])
    return {
        "slots": SLOTS,
        "passes": passes,
        "pass_ms": pass_s * 1e3,
        "wal_pages": pages,
        "events_ms": (pass_s - statistics.median(times[False])) * 1e3,
        "noop_ceiling_tasks_per_s": SLOTS / pass_s,
        "work_ceiling_tasks_per_s": SLOTS / (HANDLER_S + pass_s),
    }


def _wal_pages(conn: sqlite3.Connection, previous: list[tuple[str, int]]) -> float:
    """Run PAGED_PASSES more passes from an empty WAL, none checkpointed; return the median
    of the pages each one's commit wrote (its WAL frames), what its fsync waits for."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for _ in range(PAGED_PASSES):
        previous = one_pass(conn, previous)
    path = conn.execute("PRAGMA database_list").fetchone()[2] + "-wal"
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    wal = Path(path).read_bytes()
    frames, per_commit = 0, []
    # After the 32-byte header, each frame is a 24-byte header (page number, then the
    # database size for a transaction's last frame, else 0) and the page.
    for offset in range(32, len(wal) - page_size - 23, page_size + 24):
        frames += 1
        if int.from_bytes(wal[offset + 4 : offset + 8], "big"):
            per_commit.append(frames)
            frames = 0
    return statistics.median(per_commit)


def bare_designs(workdir: Path, tasks: int = BARE_TASKS) -> dict[str, Any]:
    """Run `tasks` no-op tasks and `tasks` of 1 ms through each bare design, and the
    loop design's e2e with its submission; tasks/s."""
    results: dict[str, Any] = {"tasks": tasks}
    for design, run in (("loop", _loop_design), ("group", _group_design)):
        for kind, handler_s in (("noop", 0.0), ("work", HANDLER_S)):
            conn = _connect(workdir, f"bare-{design}-{kind}", tasks)
            try:
                began, cpu = time.perf_counter(), _own_cpu_s()
                commits = run(conn, tasks, handler_s)
                took, cpu = time.perf_counter() - began, _own_cpu_s() - cpu
            finally:
                conn.close()
            results[f"{design}_{kind}_tasks_per_s"] = tasks / took
            results[f"{design}_{kind}_tasks_per_commit"] = tasks / commits
            results[f"{design}_{kind}_cpu_us_per_task"] = cpu / tasks * 1e6
    submitted = bare_e2e(workdir)
    results["e2e_tasks_per_s"] = submitted["tasks_per_s"]
    results["e2e_submit_s"] = submitted["submit_s"]
    return results


def scheduler_alone(workdir: Path, tasks: int = BARE_TASKS) -> dict[str, Any]:
    """Run `tasks` no-op tasks, stored first through the batch API, with the service's own
    scheduler in this process (16 slots, no HTTP): the bare loop design's run, with ours.

    Besides the rate, the CPU time a task of the process (user and system apart) and of
    the scheduler's loop thread alone; and the CPU time of one pass with nothing to do,
    ours against the floor's (`one_pass`), which is what a pass costs before any task."""
    from app import parts

    db = store.sqlite_database(workdir, "alone")
    migrate(db)
    _fill(db, tasks)
    app = open_app(db)
    scheduler = parts.scheduler(app)
    with _quiet_scheduler():
        ran = _run_alone(scheduler, db, tasks)
        return {"tasks": tasks, **ran, **_empty_passes(workdir)}


@contextmanager
def _quiet_scheduler() -> Iterator[None]:
    """Keep the scheduler's start and stop lines out of the benchmark's output."""
    logger = logging.getLogger("app.scheduler")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_alone(scheduler: Any, db: Any, tasks: int) -> dict[str, float]:
    """Start `scheduler` on `db`'s `tasks` stored tasks; time it until they completed."""
    assert db.path is not None
    watch = sqlite3.connect(db.path)
    try:
        before = set(threading.enumerate())
        began, times = time.perf_counter(), os.times()
        scheduler.start()
        loop = next(t for t in set(threading.enumerate()) - before if t.name == "scheduler")
        clock = time.pthread_getcpuclockid(loop.ident)  # type: ignore[arg-type]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        done = "SELECT count(*) FROM tasks WHERE status = 'COMPLETED'"
        while watch.execute(done).fetchone()[0] < tasks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler alone did not finish {tasks} tasks in time")
            time.sleep(0.005)
        took, ended = time.perf_counter() - began, os.times()
        loop_cpu = time.clock_gettime(clock)
    finally:
        scheduler.stop(5)
        watch.close()
    user, system = ended.user - times.user, ended.system - times.system
    return {
        "tasks_per_s": tasks / took,
        "cpu_us_per_task": (user + system) / tasks * 1e6,
        "user_us_per_task": user / tasks * 1e6,
        "system_us_per_task": system / tasks * 1e6,
        "loop_cpu_us_per_task": loop_cpu / tasks * 1e6,
    }


EMPTY_PASSES = 500


def _empty_passes(workdir: Path) -> dict[str, float]:
    """CPU time of a pass with nothing to claim or finish: ours (`run_once`), the floor's."""
    from app import parts

    db = store.sqlite_database(workdir, "empty")
    migrate(db)
    scheduler = parts.scheduler(open_app(db))
    scheduler.open()
    assert db.path is not None
    conn = bare_connection(db.path)
    register(conn, "floor")
    try:
        ours = _thread_cpu(scheduler.run_once, EMPTY_PASSES)
        floor = _thread_cpu(lambda: one_pass(conn, []), EMPTY_PASSES)
    finally:
        conn.close()
        scheduler.finish_drain()
    return {"empty_pass_us": ours * 1e6, "floor_empty_pass_us": floor * 1e6}


def _thread_cpu(action: Callable[[], Any], runs: int) -> float:
    """Return the median CPU seconds of this thread for one call of `action`, over five
    rounds of `runs` calls."""
    rounds = []
    for _ in range(5):
        began = time.thread_time()
        for _ in range(runs):
            action()
        rounds.append((time.thread_time() - began) / runs)
    return statistics.median(rounds)


def _own_cpu_s() -> float:
    """CPU seconds (user and system) of this process so far."""
    return machine.cpu_seconds([os.getpid()])


E2E_TASKS = 20_000  # as the e2e figure
E2E_BATCH = 1_000


def bare_e2e(workdir: Path, tasks: int = E2E_TASKS, batch: int = E2E_BATCH) -> dict[str, Any]:
    """Submit `tasks` no-op tasks in batches on one bare connection while the bare loop
    design runs them on another; from the first insert to the last finish, tasks/s."""
    batches = _bare_batches(tasks, batch)
    conn = _connect(workdir, "bare-e2e", 0)
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    submitted: list[float] = []

    def submit(wake: threading.Event) -> None:
        writer = bare_connection(path)
        try:
            for statements in batches:
                writer.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    writer.execute(sql, params)
                writer.execute("COMMIT")
                wake.set()
        finally:
            writer.close()
            submitted.append(time.perf_counter())

    try:
        began = time.perf_counter()
        passes = _loop_design(conn, tasks, 0.0, submit)
        took = time.perf_counter() - began
    finally:
        conn.close()
    return {
        "tasks": tasks,
        "batch": batch,
        "tasks_per_s": tasks / took,
        "submit_s": submitted[0] - began,
        "tasks_per_commit": tasks / passes,
    }


def _bare_batches(tasks: int, batch: int) -> list[list[tuple[str, Any]]]:
    """Each batch's statements, with their parameters: its tasks' inserts, then its
    events', made as the service makes them."""
    from app.services.submissions import new_row, normalise
    from app.storage import database
    from app.storage import tasks as task_rows

    now = database.utcnow()
    at = database.sqlite_time(now)
    made = []
    for start in range(0, tasks, batch):
        ids = [f"bare-{i}" for i in range(start, min(start + batch, tasks))]
        rows = [new_row(normalise({"id": i, "type": NOOP, "duration_ms": 1}), {}, now) for i in ids]
        statements: list[tuple[str, Any]] = list(task_rows.sqlite_inserts(rows))
        for part in range(0, len(ids), database.EVENT_ROWS):
            events = ids[part : part + database.EVENT_ROWS]
            params = [v for i in events for v in (i, NOOP, 0, "QUEUED", "submitted", at)]
            statements.append((database.events_insert_sql("sqlite", len(events)), params))
        made.append(statements)
    return made


def _handler(handler_s: float) -> Callable[[], None]:
    return (lambda: time.sleep(handler_s)) if handler_s else (lambda: None)


def _loop_design(
    conn: sqlite3.Connection,
    tasks: int,
    handler_s: float,
    submit: Callable[[threading.Event], None] | None = None,
) -> int:
    """One loop makes every pass; SLOTS threads run the claims it hands them. With
    `submit`, a thread runs it meanwhile, given the event that wakes the loop."""
    handle = _handler(handler_s)
    todo: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
    ended: list[tuple[str, int]] = []
    lock = threading.Lock()
    wake = threading.Event()

    def thread() -> None:
        while (claim := todo.get()) is not None:
            handle()
            with lock:
                ended.append(claim)
            wake.set()

    threads = [threading.Thread(target=thread, daemon=True) for _ in range(SLOTS)]
    if submit is not None:
        threads.append(threading.Thread(target=submit, args=(wake,), daemon=True))
    for t in threads:
        t.start()
    finished = running = passes = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while finished < tasks:
        if time.monotonic() > deadline:  # a submission that failed leaves tasks unstored
            raise RuntimeError(f"the bare loop finished {finished} of {tasks} tasks in time")
        wake.clear()
        with lock:
            previous = ended[:]
            ended.clear()
        finished += len(previous)
        running -= len(previous)
        claims = one_pass(conn, previous, SLOTS - running)
        passes += 1
        running += len(claims)
        for claim in claims:
            todo.put(claim)
        if finished < tasks:
            wake.wait(1.0)  # for a thread to return
    for _ in range(SLOTS):
        todo.put(None)
    return passes


def _group_design(conn: sqlite3.Connection, tasks: int, handler_s: float) -> int:
    """Each thread writes its outcome and claims its next task; those waiting commit as one."""
    handle = _handler(handler_s)
    lock = threading.Lock()
    writer = threading.Lock()
    waiting: list[tuple[tuple[str, int] | None, list[tuple[str, int] | None]]] = []
    finished = [0]
    commits = [0]

    def commit_group() -> None:
        with writer:
            with lock:
                group = waiting[:]
                waiting.clear()
            if not group:
                return  # an earlier leader took this thread's entry
            previous = [ended for ended, _ in group if ended is not None]
            claims = one_pass(conn, previous, len(group))
            commits[0] += 1
            with lock:
                finished[0] += len(previous)
            for k, (_, answer) in enumerate(group):
                answer.append(claims[k] if k < len(claims) else None)

    def thread() -> None:
        ended: tuple[str, int] | None = None
        while True:
            answer: list[tuple[str, int] | None] = []
            with lock:
                waiting.append((ended, answer))
            while not answer:
                commit_group()
            ended = answer[0]
            if ended is None:
                with lock:
                    if finished[0] >= tasks:
                        return
                time.sleep(0.0005)  # the others still run the last tasks
                continue
            handle()

    threads = [threading.Thread(target=thread) for _ in range(SLOTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return commits[0]


def _connect(workdir: Path, name: str, tasks: int) -> sqlite3.Connection:
    """A database holding `tasks` no-op tasks, and a bare connection registered to claim."""
    db = store.sqlite_database(workdir, name)
    migrate(db)
    _fill(db, tasks)
    assert db.path is not None
    conn = bare_connection(db.path)
    register(conn, "floor")
    return conn


def register(conn: sqlite3.Connection, host: str) -> None:
    """Register WORKER, as a claim requires, under this process (again, if it was)."""
    now = sqlite_time(utcnow())
    conn.execute("DELETE FROM scheduler_instances WHERE id = ?", (WORKER,))
    conn.execute(
        "INSERT INTO scheduler_instances (id, hostname, pid, started_at, heartbeat_at,"
        " heartbeat_monotonic, state) VALUES (?, ?, ?, ?, ?, 0, 'running')",
        (WORKER, host, os.getpid(), now, now),
    )


def bare_connection(path: str) -> sqlite3.Connection:
    """A driver connection with the service's settings (one more writer waits its turn)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "temp_store=MEMORY"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def one_pass(
    conn: sqlite3.Connection,
    previous: list[tuple[str, int]],
    limit: int = SLOTS,
    events: bool = True,
    sleeps: dict[str, float] | None = None,
) -> list[tuple[str, int]]:
    """Complete `previous`, claim up to `limit`, in one commit; return the claims. With
    `sleeps`, note in it the seconds (`duration_ms`) of each claimed task of another type
    than no-op, as its claim's row gives them."""
    from app.storage import database
    from app.storage import queues as queue_rows
    from app.storage import scheduler_sql as sql
    from app.storage.queues import DEFAULT_QUEUE

    now = sql.sqlite_time(utcnow())
    conn.execute("BEGIN IMMEDIATE")
    if previous:
        params: dict[str, Any] = {"w": WORKER, "now": now}
        for k, (task_id, attempt) in enumerate(previous):
            params[f"i{k}"], params[f"a{k}"] = task_id, attempt
        done = conn.execute(sql.complete_sql("sqlite", len(previous)), params).fetchall()
        ended = {f"e{k}": task_id for k, (task_id, _) in enumerate(done)}
        if done:  # their history rows, read from the rows just completed
            history = {f"i{k}": task_id for k, (task_id, _) in enumerate(done)}
            history.update(w=WORKER, host="bench")
            conn.execute(sql.completed_history_sql(len(done)), history)
        conn.execute(sql.count_down_sql("sqlite", len(ended)), ended).fetchall()
    conn.execute(sql.promote_sql("sqlite"), {"now": now, "limit": 1000})
    conn.execute(queue_rows.ALL_ROWS_SQL).fetchall()  # what each queue may start
    claim = {"now": now, "limit": limit, "w": WORKER, "q0": DEFAULT_QUEUE, "l0": limit}
    rows = conn.execute(sql.claim_sql("sqlite"), claim).fetchall() if limit else []
    if events:  # one per completion and per claim, as the service's pass writes them
        logged: list[Any] = []
        for task_id, attempt in previous:
            logged += [task_id, NOOP, attempt, "COMPLETED", "the handler returned", now]
        for row in rows:
            logged += [row[1], NOOP, row[5], "RUNNING", f"claimed by {WORKER}", now]
        if logged:
            conn.execute(database.events_insert_sql("sqlite", len(logged) // 6), logged)
    conn.execute("COMMIT")
    if sleeps is not None:
        sleeps.update((row[1], row[3] / 1000) for row in rows if row[2] != NOOP)
    return [(row[1], row[5]) for row in rows]  # id, attempts


def _fill(db: Any, n: int) -> None:
    """Submit `n` no-op tasks through the batch API, as the e2e figures do."""
    app = open_app(db)
    client = app.test_client()
    for start in range(0, n, 1000):
        body = {
            "tasks": [
                {"id": f"floor-{i}", "type": NOOP, "duration_ms": 1}
                for i in range(start, min(start + 1000, n))
            ]
        }
        response = client.post("/api/tasks/batch", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"batch: {response.status_code} {response.get_data()[:200]!r}")
