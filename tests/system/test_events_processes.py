"""`GET /api/events` through real processes: a client that disconnects mid-run and
reconnects to another server with `Last-Event-ID` receives every event it missed, once,
in order, on both backends.

Each test starts two web servers on one database and a client that streams from the first
one. A run of 200 simulated tasks (5-20 ms each, in layers, each task after 1-2 of the
layer before) is submitted in three parts, by queue: the first runs while the client
listens; the second, its queue paused until the client has disconnected, runs to its end
while nobody listens; the third, its queue paused until the client has reconnected to the
*other* server, runs while it listens again. The queues make "mid-run" certain, not a
matter of timing. At the end the events the client received, over both connections, must
be exactly the rows of `task_events`: none missing, none twice, numbers strictly
increasing across the reconnection, the missed ones replayed first, and each task's
history QUEUED (attempt 0), RUNNING (1), COMPLETED (1).

- SQLite, the README's layout: two API-only gunicorn servers and one `flask scheduler run`
  on the same file (a web process hears the scheduler's changes by reading every
  POLLING_INTERVAL).
- PostgreSQL: two instances, each a gunicorn running its own scheduler, on one schema
  (one hears the other's changes by NOTIFY). Their transactions commit out of the order
  of their event numbers, so a stream meets holes it must wait out, never step over.

A stream that the server ends (EVENT_STREAM_MAX_S) is resumed on the same server with
`Last-Event-ID`, as a browser's EventSource would. The same rules in one process:
tests/integration/test_events_stream.py.
"""

from __future__ import annotations

import codecs
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.support.apps import postgres_schema
from tests.support.servers import (
    REQUEST_TIMEOUT_S,
    Launcher,
    Server,
    database_url,
    poll,
    run_flask,
)

# Read from every process: a web process on SQLite learns of another process's changes
# this often (milliseconds); a scheduler looks for ready tasks as often.
SETTINGS = {"POLLING_INTERVAL": "200", "MAX_CONCURRENT_TASKS": "4", "SHUTDOWN_GRACE_S": "5"}
# A socket read waits this long at most; a quiet stream sends a keepalive every 5 s.
READ_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 30.0
# The three parts of the run: (queue, layers, tasks per layer); 200 tasks in all.
PARTS = (("default", 2, 20), ("missed", 4, 25), ("live", 3, 20))
# The fields of an event that `task_events` holds, compared one to one.
FIELDS = ("seq", "task_id", "type", "attempt", "status", "reason")
EVENTS_SQL = "SELECT seq, task_id, type, attempt, status, reason FROM task_events ORDER BY seq"
HISTORY = [("QUEUED", 0), ("RUNNING", 1), ("COMPLETED", 1)]

Event = dict[str, Any]


# -- the client ---------------------------------------------------------------------------


class Connection:
    """One `GET /api/events` request, read as server-sent events as they arrive."""

    def __init__(self, server: Server, last_event_id: str | None) -> None:
        self.server = server
        self.last_event_id = last_event_id
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        self.response = requests.get(
            server.base_url + "/api/events",
            headers=headers,
            stream=True,
            timeout=(REQUEST_TIMEOUT_S, READ_TIMEOUT_S),
        )
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.chunks: Iterator[bytes] = self.response.iter_content(chunk_size=None)
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buffer = ""
        self.events: list[Event] = []
        self.retry: str | None = None

    def next_block(self) -> str | None:
        """Return the next block of lines (up to a blank line); None once the stream ended."""
        while "\n\n" not in self.buffer:
            chunk = next(self.chunks, None)
            if chunk is None:
                return None
            self.buffer += self.decoder.decode(chunk)
        block, self.buffer = self.buffer.split("\n\n", 1)
        return block

    def next_event(self, deadline: float, what: str) -> Event | None:
        """Return the next event, past `retry:` lines and comments; None once it ended.
        Fail past `deadline` (checked as each block arrives: a keepalive every 5 s)."""
        while (block := self.next_block()) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            lines = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if "retry" in lines:
                self.retry = lines["retry"]
            if "data" not in lines:
                continue  # a keepalive comment, or the `retry:` line the stream opens with
            assert lines["event"] == "task", block
            event: Event = json.loads(lines["data"])
            assert lines["id"] == str(event["seq"]), block
            self.events.append(event)
            return event
        return None

    def close(self) -> None:
        """Hang up, as a client that goes away does."""
        self.response.close()


@dataclass
class Subscriber:
    """A client of the event stream that resumes as a browser's EventSource does: it
    remembers the id of the last event received and names it in `Last-Event-ID`."""

    connections: list[Connection] = field(default_factory=list)
    last_id: str | None = None

    @property
    def received(self) -> list[Event]:
        """Every event received, over every connection, in the order of arrival."""
        return [event for conn in self.connections for event in conn.events]

    def connect(self, server: Server) -> Connection:
        """Open a stream on `server`, after the last event received if any."""
        conn = Connection(server, self.last_id)
        self.connections.append(conn)
        return conn

    def read_until(self, done: Callable[[list[Event]], bool], what: str) -> None:
        """Read events until `done(received)` holds; fail after PHASE_TIMEOUT_S. A stream
        the server ends is resumed on the same server."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not done(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            current = self.connections[-1]
            event = current.next_event(deadline, what)
            if event is None:  # EVENT_STREAM_MAX_S: resume where it stopped
                self.connect(current.server)
                continue
            self.last_id = str(event["seq"])

    def disconnect(self) -> None:
        """Hang up the current connection."""
        self.connections[-1].close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        """Hang up every connection (those already closed stay so)."""
        for conn in self.connections:
            conn.close()


def statuses(events: list[Event]) -> dict[str, str]:
    """Return the last status each task's events show."""
    return {event["task_id"]: event["status"] for event in events}


# -- the run ------------------------------------------------------------------------------


def layered(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Return the tasks of each part of the run, by queue: layers of simulated tasks, each
    after 1-2 of the layer before (the first layer of a part after the last of the part
    before)."""
    parts: dict[str, list[dict[str, Any]]] = {}
    previous: list[str] = []
    for queue, layers, width in PARTS:
        parts[queue] = []
        for layer in range(layers):
            current = [f"{queue}-{layer}-{i}" for i in range(width)]
            for task_id in current:
                deps = rng.sample(previous, rng.randint(1, 2)) if previous else []
                body = {"id": task_id, "type": "simulate", "duration_ms": rng.randint(5, 20)}
                parts[queue].append({**body, "dependencies": deps, "queue": queue})
            previous = current
    return parts


class Database:
    """The test's database, read directly, bypassing the service."""

    def __init__(self, db: Path | str) -> None:
        self.engine = create_engine(database_url(db), pool_size=1)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Run one query; return its rows as dicts."""
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params)]

    def events(self) -> list[Event]:
        """Return every row of `task_events`, in order."""
        return self.query(EVENTS_SQL)

    def count_unfinished(self, queue: str) -> int:
        """Count the tasks of `queue` that are not COMPLETED."""
        sql = "SELECT count(*) AS n FROM tasks WHERE queue = :queue AND status <> 'COMPLETED'"
        return int(self.query(sql, queue=queue)[0]["n"])

    def close(self) -> None:
        """Let go of the database."""
        self.engine.dispose()


def queue_action(server: Server, queue: str, action: str) -> None:
    """Pause or resume a queue through `server`."""
    url = f"{server.base_url}/api/queues/{queue}/{action}"
    resp = requests.post(url, timeout=REQUEST_TIMEOUT_S)
    assert resp.status_code == 200, f"{action} {queue}: {resp.status_code} {resp.text}"


def project(events: list[Event]) -> list[tuple[Any, ...]]:
    """Return the fields `task_events` holds of each event, in order."""
    return [tuple(event[key] for key in FIELDS) for event in events]


def disconnect_and_resume_elsewhere(database: Database, first: Server, second: Server) -> None:
    """Run the three parts of the run; the client streams from `first`, disconnects while
    the second part runs, and resumes on `second`. Check what it received against the
    database."""
    with Subscriber() as client:
        try:
            run_and_check(client, database, first, second)
        except AssertionError as exc:
            # A wait that timed out: say which events the stream stepped over, if any.
            got = {event["seq"] for event in client.received}
            last = int(client.last_id or 0)
            lost = [row for row in database.events() if row["seq"] < last and row["seq"] not in got]
            exc.add_note(f"stored below the last event received ({last}) but never sent: {lost}")
            raise


def run_and_check(client: Subscriber, database: Database, first: Server, second: Server) -> None:
    """The body of `disconnect_and_resume_elsewhere`, with `client` not yet connected."""
    parts = layered(random.Random(1729))
    ids = {task["id"] for tasks in parts.values() for task in tasks}
    early, missed, live = (parts[queue] for queue, _, _ in PARTS)
    queue_action(first, "missed", "pause")
    queue_action(first, "live", "pause")
    client.connect(first)
    # The stream starts after what is committed now: it is open before anything is submitted.
    batch = first.submit_batch(early + missed + live)

    # 1. Listening to `first`: every task submitted, the first part run to its end.
    def first_part_seen(events: list[Event]) -> bool:
        seen = statuses(events)
        return len(seen) == len(ids) and all(seen[t["id"]] == "COMPLETED" for t in early)

    client.read_until(first_part_seen, "the first part's events on the first server")
    client.disconnect()
    before = int(client.last_id or 0)
    # Mid-run for certain: the rest of the run waits behind its paused queues.
    waiting = database.query("SELECT status, count(*) AS n FROM tasks GROUP BY status")
    assert {(row["status"], row["n"]) for row in waiting} == {
        ("COMPLETED", len(early)),
        ("QUEUED", len(missed) + len(live)),
    }, waiting

    # 2. Nobody listening: the second part runs to its end.
    queue_action(second, "missed", "resume")
    unfinished = database.count_unfinished
    poll(lambda: unfinished("missed") == 0, PHASE_TIMEOUT_S, "the second part to complete")
    between = [row for row in database.events() if row["seq"] > before]
    assert between, "nothing happened while the client was away"
    assert {row["task_id"] for row in between} == {t["id"] for t in missed}
    assert [row["status"] for row in between].count("COMPLETED") == len(missed)

    # 3. Reconnected to `second` with Last-Event-ID: the missed events come first, all of
    # them, then the third part live.
    resumed = client.connect(second)
    assert resumed.last_event_id == str(before)
    last_missed = between[-1]["seq"]
    client.read_until(lambda _: int(client.last_id or 0) >= last_missed, "the missed events")
    # (A stream the server ended is resumed on `second` too: every connection after the
    # first counts.)
    later = client.connections[1:]
    replayed = [event for conn in later for event in conn.events if event["seq"] <= last_missed]
    assert project(replayed) == project(between)
    queue_action(first, "live", "resume")

    def all_seen(events: list[Event]) -> bool:
        seen = statuses(events)
        return all(seen[task_id] == "COMPLETED" for task_id in ids)

    client.read_until(all_seen, "every task to complete, on the second server")
    later = client.connections[1:]
    assert all(conn.server is second and conn.retry == "1000" for conn in later)
    assert any(event["task_id"].startswith("live-") for conn in later for event in conn.events)

    # The union of both connections is exactly the table: nothing missed, nothing twice.
    received = client.received
    seqs = [event["seq"] for event in received]
    assert all(a < b for a, b in pairwise(seqs)), "out of order or twice"
    assert client.connections[0].events[-1]["seq"] == before
    stored = [row for row in database.events() if row["task_id"] in ids]
    assert len(stored) == len(database.events()) == 3 * len(ids)
    assert project(received) == project(stored)
    assert {event["batch_id"] for event in received} == {batch["batch_id"]}
    history: dict[str, list[tuple[str, int]]] = {task_id: [] for task_id in ids}
    for event in received:
        history[event["task_id"]].append((event["status"], event["attempt"]))
    wrong = {task_id: seen for task_id, seen in history.items() if seen != HISTORY}
    assert not wrong, list(wrong.items())[:5]


def web_server(launcher: Launcher, db: Path | str, *, scheduler: bool) -> Server:
    """Start a gunicorn on `db`: running its own scheduler, or serving the API only."""
    if scheduler:
        return launcher.gunicorn(db, ready="running", port=0, **SETTINGS)
    return launcher.gunicorn(db, ready="disabled", port=0, SCHEDULER_ENABLED="false", **SETTINGS)


# -- SQLite: two API-only gunicorn servers, one `flask scheduler run` -----------------------


def test_on_sqlite_a_client_resumed_on_another_api_server_misses_nothing(
    launcher: Launcher, db: Path
) -> None:
    first = web_server(launcher, db, scheduler=False)
    second = web_server(launcher, db, scheduler=False)
    scheduler = launcher.scheduler(db, **SETTINGS)
    database = Database(db)
    try:
        disconnect_and_resume_elsewhere(database, first, second)
        # Every task ran in the scheduler process; neither web process ran any.
        workers = database.query("SELECT DISTINCT worker FROM tasks")
        assert len(workers) == 1 and f"-{scheduler.proc.pid}-" in workers[0]["worker"], workers
    finally:
        database.close()


# -- PostgreSQL: two instances, each a gunicorn with its own scheduler ----------------------


@pytest.fixture
def pg_db() -> Iterator[str]:
    """Return the URL of a fresh, migrated PostgreSQL schema (skipped without
    TEST_DATABASE_URL). Asked for before `launcher`, so the processes die first."""
    with contextmanager(postgres_schema)() as url:
        done = run_flask(url, "db", "upgrade")
        assert done.returncode == 0, done.stdout + done.stderr
        yield url


@pytest.mark.postgres
def test_on_postgresql_a_client_resumed_on_another_instance_misses_nothing(
    pg_db: str, launcher: Launcher
) -> None:
    first = web_server(launcher, pg_db, scheduler=True)
    second = web_server(launcher, pg_db, scheduler=True)
    database = Database(pg_db)
    try:
        registered = "SELECT id FROM scheduler_instances"
        poll(lambda: len(database.query(registered)) == 2, 30, "two registered instances")
        instances = database.query(registered)
        disconnect_and_resume_elsewhere(database, first, second)
        # Both instances ran tasks: the stream on each carried the other's changes.
        workers = {row["worker"] for row in database.query("SELECT DISTINCT worker FROM tasks")}
        assert workers == {row["id"] for row in instances}, (workers, instances)
    finally:
        database.close()
