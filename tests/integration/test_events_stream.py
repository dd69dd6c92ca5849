"""`GET /api/events`: task state changes as server-sent events, on both backends: sent in
order as they commit, filtered, resumed with Last-Event-ID, bounded, and heard across
instances; on PostgreSQL a stream never steps over a number an open transaction holds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy import event as sqlalchemy_event

from app import parts
from app.handlers import HandlerFailed, TaskContext
from app.runtime.pruner import EventPruner
from app.storage import database, eventlog
from app.storage.eventlog import Cursor, Filters
from tests.support.apps import AppFactory, build_app, teardown
from tests.support.client import running_app

DEADLINE_S = 30.0
# An event written by hand, in a session of the test's own: it takes the next number.
INSERT_EVENT = text(
    "INSERT INTO task_events (at, task_id, type, attempt, status, reason)"
    " VALUES (now(), :id, 't', 0, 'QUEUED', 'x') RETURNING seq"
)


class Stream:
    """One open stream read through the test client, event by event."""

    def __init__(self, client: FlaskClient, query: str = "", last: str | None = None) -> None:
        headers = {} if last is None else {"Last-Event-ID": last}
        self.response = client.get("/api/events" + query, headers=headers, buffered=False)
        assert self.response.status_code == 200, self.response.get_data()
        self.chunks: Iterator[bytes] = iter(self.response.response)
        self.first = next(self.chunks).decode()

    def events(self, count: int) -> list[dict[str, Any]]:
        """Read until `count` events came (keepalives aside); fail past the deadline."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < count:
            assert time.monotonic() < deadline, f"only {got} after {DEADLINE_S} s"
            chunk = next(self.chunks).decode()
            got += parse(chunk)
        return got

    def rest(self) -> list[dict[str, Any]]:
        """Read to the end of the stream (it ends after EVENT_STREAM_MAX_S)."""
        return [e for chunk in self.chunks for e in parse(chunk.decode())]

    def close(self) -> None:
        self.response.close()


def read_events(engine: Engine, cursor: Cursor) -> tuple[list[dict[str, Any]], bool]:
    """Read once from `cursor` on a connection of its own, as a stream's read does."""
    with engine.connect() as reader:
        return eventlog.read(reader, cursor, Filters(), 100)


def parse(chunk: str) -> list[dict[str, Any]]:
    """Return the events of a chunk of SSE text, each its data with the `id` it came with."""
    events = []
    for block in chunk.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "data" in lines:
            assert lines["event"] == "task"
            data = json.loads(lines["data"])
            assert int(lines["id"]) == data["seq"]
            events.append(data)
    return events


def submit(client: FlaskClient, task_id: str, **fields: Any) -> None:
    body = {"id": task_id, "type": "simulate", "duration_ms": 1, **fields}
    assert client.post("/api/tasks", json=body).status_code == 201


def changes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["task_id"], e["status"]) for e in events]


def test_a_stream_says_it_is_connected_then_sends_each_change_in_order(
    make_app: AppFactory,
) -> None:
    app = make_app()
    client = app.test_client()
    submit(client, "before")  # older than the stream: not sent
    stream = Stream(client)
    assert stream.first == "retry: 1000\n\n"  # before any event
    assert stream.response.mimetype == "text/event-stream"
    assert stream.response.headers["Cache-Control"] == "no-cache"
    submit(client, "a")
    assert client.post("/api/tasks/a/cancel").status_code == 200
    got = stream.events(2)
    assert changes(got) == [("a", "QUEUED"), ("a", "CANCELLED")]
    assert got[0]["seq"] < got[1]["seq"] and got[0]["attempt"] == 0
    assert got[1]["reason"] and got[1]["at"].endswith("Z") and got[1]["batch_id"] is None
    stream.close()
    assert parts.streams(app).open == 0


def test_a_run_streams_claim_failure_retry_and_completion_with_their_attempts(
    make_app: AppFactory,
) -> None:
    tries: list[int] = []

    def flaky(ctx: TaskContext) -> None:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise HandlerFailed("first try fails")

    app = running_app(make_app, {"flaky": flaky})
    client = app.test_client()
    stream = Stream(client, "?task=f")
    submit(client, "f", type="flaky", max_attempts=2, retry_backoff_ms=0)
    got = stream.events(5)
    assert [(e["status"], e["attempt"]) for e in got] == [
        ("QUEUED", 0),
        ("RUNNING", 1),
        ("QUEUED", 1),  # failed, to be retried
        ("RUNNING", 2),
        ("COMPLETED", 2),
    ]
    assert "first try fails" in got[2]["reason"]
    stream.close()


def test_filters_send_only_the_matching_changes(make_app: AppFactory) -> None:
    app = make_app(MAX_EVENT_STREAMS="5", MAX_WAITING_REQUESTS="1")
    client = app.test_client()
    by_task = Stream(client, "?task_id=b")
    by_status = Stream(client, "?status=cancelled,Failed")  # in any case, as /api/tasks
    by_type = Stream(client, "?type=simulate,other")
    batch = {"tasks": [{"id": "b1", "type": "simulate", "duration_ms": 1}]}
    answer = client.post("/api/tasks/batch", json=batch).get_json()
    by_batch = Stream(client, f"?batch={answer['batch_id']}")
    # As the events and GET /api/tasks name them.
    by_batch_id = Stream(client, f"?batch_id={answer['batch_id']}")
    submit(client, "b")
    assert client.post("/api/tasks/b/cancel").status_code == 200
    assert client.post("/api/tasks/b1/cancel").status_code == 200
    assert changes(by_task.events(2)) == [("b", "QUEUED"), ("b", "CANCELLED")]
    assert changes(by_status.events(2)) == [("b", "CANCELLED"), ("b1", "CANCELLED")]
    assert changes(by_type.events(4)) == [
        ("b1", "QUEUED"),
        ("b", "QUEUED"),
        ("b", "CANCELLED"),
        ("b1", "CANCELLED"),
    ]
    for stream in (by_batch, by_batch_id):
        (only,) = stream.events(1)  # b1's submission came before this stream
        assert (only["task_id"], only["status"], only["batch_id"]) == (
            "b1",
            "CANCELLED",
            answer["batch_id"],
        )
    for stream in (by_task, by_status, by_type, by_batch, by_batch_id):
        stream.close()


def test_a_client_reconnecting_with_last_event_id_misses_nothing(make_app: AppFactory) -> None:
    app = make_app(EVENT_STREAM_MAX_S="1")
    client = app.test_client()
    first = Stream(client)
    submit(client, "r1")
    (seen,) = first.events(1)
    first.close()
    # While it is away: two more changes.
    submit(client, "r2")
    assert client.post("/api/tasks/r1/cancel").status_code == 200
    again = Stream(client, last=str(seen["seq"]))
    assert changes(again.events(2)) == [("r2", "QUEUED"), ("r1", "CANCELLED")]
    # The stream ends after EVENT_STREAM_MAX_S; nothing more was sent.
    assert again.rest() == []
    # From the start of what is retained: everything.
    assert changes(Stream(client, last="0").rest())[:1] == [("r1", "QUEUED")]
    # A number this database never gave (another's, or all pruned), however large (past
    # 2**63 too, refused as "not digits" before): from the newest.
    for k, beyond_any in enumerate(("999999", "9" * 26)):
        beyond = Stream(client, last=beyond_any)
        submit(client, f"r3{k}")
        assert changes(beyond.events(1)) == [(f"r3{k}", "QUEUED")]
        beyond.close()
    # An empty header, or blanks alone, is as if absent: from now; blanks around a number
    # are HTTP's and go.
    for empty in ("", " \t"):
        now = Stream(client, last=empty)
        submit(client, f"r4{len(empty)}")
        assert changes(now.events(1)) == [(f"r4{len(empty)}", "QUEUED")]
        now.close()
    assert changes(Stream(client, last=" 0 ").rest())[:1] == [("r1", "QUEUED")]


def test_streams_past_the_cap_are_refused_with_retry_after_until_one_closes(
    make_app: AppFactory,
) -> None:
    app = make_app(MAX_EVENT_STREAMS="2")
    client = app.test_client()
    held = [Stream(client), Stream(client)]
    refused = client.get("/api/events")
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "too_many_streams"
    assert int(refused.headers["Retry-After"]) >= 1
    held.pop().close()
    Stream(client).close()
    held[0].close()


def test_a_stopping_worker_ends_its_streams(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    stream = Stream(client)
    parts.streams(app).close()
    assert stream.rest() == []  # ended, rather than waiting
    late = client.get("/api/events")
    assert late.status_code == 200 and late.get_data() == b"retry: 1000\n\n"


def test_a_change_another_instance_commits_reaches_the_stream(make_app: AppFactory) -> None:
    """On PostgreSQL, only the other instance's NOTIFY can wake the stream here (its
    safety-net read is an hour away); on SQLite (the scheduler in another process) the
    read every polling interval finds it."""
    writer = make_app()
    postgresql = writer.extensions["store"].engine.dialect.name == "postgresql"
    reader = make_app(POLLING_INTERVAL="3600000" if postgresql else "100")
    stream = Stream(reader.test_client())
    if postgresql:
        listener = parts.streams(reader)._listening.listener
        assert listener is not None and listener.listening.wait(DEADLINE_S)
    submit(writer.test_client(), "elsewhere")
    assert changes(stream.events(1)) == [("elsewhere", "QUEUED")]
    stream.close()


def test_events_older_than_the_retention_are_pruned(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    for k in range(3):
        submit(client, f"p{k}")
    store = parts.store(app)
    pruner = EventPruner(store, retention_s=60)
    assert pruner.run_once() == 0  # all younger than a minute
    assert pruner.run_once(store.database_now() + timedelta(seconds=61)) == 3
    with database.read(store.engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM task_events")).scalar() == 0


@pytest.mark.postgres
def test_a_number_held_by_an_open_transaction_is_waited_for_then_sent_in_order(
    postgres_url: str,
) -> None:
    """Two sessions: the first takes number n and stays open, the second takes n + 1 and
    commits. A reader sends nothing past n - 1 until the first commits, then n and n + 1
    in order; had it sent n + 1, a client resuming after it would never get n."""
    app = build_app(postgres_url, {})
    app_engine = parts.store(app).engine
    insert = INSERT_EVENT
    first, second = app_engine.connect(), app_engine.connect()
    try:
        first.begin()
        held = first.execute(insert, {"id": "held"}).scalar_one()
        with second.begin():
            later = second.execute(insert, {"id": "later"}).scalar_one()
        assert later == held + 1
        cursor = Cursor(held - 1)
        rows, waiting = read_events(app_engine, cursor)
        assert rows == [] and waiting and cursor.seq == held - 1
        first.commit()
        rows, waiting = read_events(app_engine, cursor)
        assert [r["task_id"] for r in rows] == ["held", "later"] and not waiting
        # A number whose transaction rolled back is skipped once that transaction ended.
        first.begin()
        gone = first.execute(insert, {"id": "gone"}).scalar_one()
        with second.begin():
            second.execute(insert, {"id": "after"})
        rows, waiting = read_events(app_engine, cursor)
        assert rows == [] and waiting and cursor.hole == gone
        first.rollback()
        # Once every transaction as old as the hole has ended (others of the cluster,
        # such as parallel tests', may still run for a moment).
        deadline = time.monotonic() + DEADLINE_S
        while True:
            rows, waiting = read_events(app_engine, cursor)
            if rows or time.monotonic() > deadline:
                break
            assert waiting and cursor.hole == gone
            time.sleep(0.01)
        assert [r["task_id"] for r in rows] == ["after"] and not waiting
    finally:
        first.close()
        second.close()
        teardown([app])


def test_a_hole_held_by_a_transaction_newer_than_every_ended_one_is_waited_for(
    postgres_url: str,
) -> None:
    """A snapshot's xmax is one past the newest transaction that *ended*, not the next to
    begin: a running transaction whose id is above every ended one's is not below it. When
    such a transaction holds the hole, a rule "step over once xmin reaches the xmax noted"
    steps over while it still runs (its id is then both), and its event is never sent."""
    app = build_app(postgres_url, {})
    app_engine = parts.store(app).engine
    insert = INSERT_EVENT
    xid = text("SELECT pg_current_xact_id()::text::bigint")
    later_one, holder = app_engine.connect(), app_engine.connect()
    try:
        later_one.begin()
        holder.begin()
        later_one.execute(xid)  # the older id: it ends first
        holder.execute(xid)  # the newer id: above every ended one's once the other ends
        held = holder.execute(insert, {"id": "held"}).scalar_one()
        later_one.execute(insert, {"id": "later"})
        later_one.commit()
        cursor = Cursor(held - 1)
        for _ in range(3):  # the hole is noted, then read again while its holder runs
            rows, waiting = read_events(app_engine, cursor)
            assert rows == [] and waiting and cursor.seq == held - 1
        holder.commit()
        rows, waiting = read_events(app_engine, cursor)
        assert [r["task_id"] for r in rows] == ["held", "later"] and not waiting
    finally:
        later_one.close()
        holder.close()
        teardown([app])


def test_a_hole_filled_between_the_readers_statements_is_still_sent(
    postgres_url: str,
) -> None:
    """The reader sees number n missing, its holder commits, and only then does the reader
    learn that every transaction as old as the hole has ended: it must send n, not step
    over it. It does because it reads the rows it sends after the snapshot that let it
    step over the hole: whatever that snapshot saw ended is visible to them."""
    app = build_app(postgres_url, {})
    app_engine = parts.store(app).engine
    insert = INSERT_EVENT
    first, second = app_engine.connect(), app_engine.connect()
    committed: list[bool] = []

    def commit_the_holder(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Between the reader's statement that found the hole and the one that looks at
        # the snapshot: the holder commits.
        if "pg_current_snapshot" in statement and not committed:
            committed.append(True)
            first.commit()

    try:
        first.begin()
        held = first.execute(insert, {"id": "held"}).scalar_one()
        with second.begin():
            second.execute(insert, {"id": "later"})
        cursor = Cursor(held - 1)
        rows, waiting = read_events(app_engine, cursor)
        assert rows == [] and waiting and cursor.hole == held
        # Every transaction older than the reader's note must have ended for it to step
        # over the hole: wait until the holder is the only one left (other sessions of
        # the cluster, parallel tests', may be running).
        assert cursor.horizon is not None
        holder = first.exec_driver_sql("SELECT pg_current_xact_id()::text::bigint").scalar_one()
        running = text("SELECT x::text::bigint FROM pg_snapshot_xip(pg_current_snapshot()) AS x")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            with app_engine.connect() as probe:
                older = {x for (x,) in probe.execute(running) if x < cursor.horizon}
            if older <= {holder} or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        sqlalchemy_event.listen(app_engine, "before_cursor_execute", commit_the_holder)
        try:
            rows, waiting = read_events(app_engine, cursor)
        finally:
            sqlalchemy_event.remove(app_engine, "before_cursor_execute", commit_the_holder)
        assert committed
        assert [r["task_id"] for r in rows] == ["held", "later"] and not waiting
    finally:
        first.close()
        second.close()
        teardown([app])


def test_a_large_batch_streams_one_event_per_task_in_submission_order(
    make_app: AppFactory,
) -> None:
    """Past 100 events PostgreSQL's transaction writes them by COPY, stamped alike."""
    app = make_app()
    client = app.test_client()
    stream = Stream(client)
    ids = [f"big{k:03d}" for k in range(150)]
    body = {"tasks": [{"id": i, "type": "simulate", "duration_ms": 1} for i in ids]}
    answer = client.post("/api/tasks/batch", json=body).get_json()
    got = stream.events(150)
    assert [e["task_id"] for e in got] == ids
    assert {(e["status"], e["batch_id"], e["attempt"]) for e in got} == {
        ("QUEUED", answer["batch_id"], 0)
    }
    assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)
    stream.close()


def test_a_worker_with_no_stream_slots_says_so(make_app: AppFactory) -> None:
    app = make_app(GUNICORN_THREADS="2")  # one waits, one serves: none left to stream
    refused = app.test_client().get("/api/events")
    assert refused.status_code == 503
    assert "serves no event streams" in refused.get_json()["error"]


@pytest.mark.postgres
def test_a_stream_opened_while_a_lower_number_is_open_gets_it_when_it_commits(
    postgres_url: str,
) -> None:
    """Number n is held by an open transaction while n + 1 commits; a stream opens (no
    Last-Event-ID). n commits after the stream opened: it is sent; n + 1, committed
    before, is not."""
    app = build_app(postgres_url, {})
    engine = parts.store(app).engine
    insert = INSERT_EVENT
    with engine.begin() as conn:
        conn.execute(insert, {"id": "before"})
    first, second = engine.connect(), engine.connect()
    try:
        first.begin()
        first.execute(insert, {"id": "held"})
        with second.begin():
            second.execute(insert, {"id": "committed"})
        with engine.connect() as reader:
            cursor = eventlog.opening(reader)
        first.commit()
        deadline = time.monotonic() + DEADLINE_S
        sent: list[str] = []
        while not sent and time.monotonic() < deadline:
            with engine.connect() as reader:
                rows, _ = eventlog.read(reader, cursor, Filters(), 100)
            sent += [r["task_id"] for r in rows]
        assert sent == ["held"]
    finally:
        first.close()
        second.close()
        teardown([app])


@pytest.mark.postgres
def test_a_filtered_stream_far_behind_reads_on_without_waiting(postgres_url: str) -> None:
    """Past a whole walk of other tasks' events, the read says more follows at once, so
    a filtered stream resuming far behind never waits a safety-net interval per walk."""
    app = build_app(postgres_url, {})
    engine = parts.store(app).engine
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task_events (at, task_id, type, attempt, status, reason)"
                " SELECT now(), 'other' || g, 't', 0, 'QUEUED', 'x'"
                " FROM generate_series(1, :n) AS g"
            ),
            {"n": eventlog.WALK + 10},
        )
        conn.execute(
            text(
                "INSERT INTO task_events (at, task_id, type, attempt, status, reason)"
                " VALUES (now(), 'needle', 't', 0, 'QUEUED', 'x')"
            )
        )
    cursor = Cursor(0)
    with engine.connect() as reader:
        rows, _ = eventlog.read(reader, cursor, Filters(task_id="needle"), 100)
    assert rows == [] and cursor.more
    with engine.connect() as reader:
        rows, _ = eventlog.read(reader, cursor, Filters(task_id="needle"), 100)
    assert [r["task_id"] for r in rows] == ["needle"]
    teardown([app])
