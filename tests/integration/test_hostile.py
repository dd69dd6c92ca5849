"""Hostile requests, one table: each gets a clear, small JSON answer and changes nothing.

Every row is a request (method, path, headers, raw body) and what must come back: the
status, the error code, and a pattern the message (with its details) must match so that a
person knows what to fix. One app per backend serves the whole table, seeded with a small
graph in every state; the tasks and dependency rows are compared before and after each
request. The scheduler is disabled, so nothing but the request can change them.
"""

# ruff: noqa: E501 -- the table below keeps one request per line, however long
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, select, update
from werkzeug.test import TestResponse

from app.storage.tables import deps, queues, schedules, tasks
from tests.support.apps import build_app, postgres_schema, teardown
from tests.support.client import MAX_ERROR_BYTES

MIB = 1024 * 1024
JSON = {"Content-Type": "application/json"}
ERROR_KEYS = {"error", "code", "details"}
NEW = "new-1"  # an id no seeded task has: a request that stored it would show in the snapshot
ID_RULE = r"1 to 128 characters from A-Z a-z 0-9"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


# -- the seeded database ---------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """One backend's app, with a graph in every state and a real cursor of its listing."""

    app: Flask
    client: FlaskClient
    engine: Engine
    cursor: str


def _task(task_id: str, *dependencies: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "simulate", "duration_ms": 10, **fields} | (
        {"dependencies": list(dependencies)} if dependencies else {}
    )


SEED_BATCH = {"tasks": [_task("p2", "p1"), _task("p1", payload={"n": 1})]}
SEED_QUEUE = {"concurrency_limit": 2, "rate_limit_per_s": 5}
SEED_SCHEDULE = {"id": "s1", "cron": "*/5 * * * *", "task": {"type": "simulate", "duration_ms": 10}}


def _seed(client: FlaskClient, engine: Engine) -> str:
    """Store a small graph in every state; return the cursor of its second page."""
    for body in [
        _task("a", payload={"n": 1}),
        _task("b", "a"),
        _task("c", "a", "b", priority=5),
        _task("f"),
        _task("x"),
        _task("e1"),
        _task("e2", "e1"),
    ]:
        assert client.post("/api/tasks", json=body).status_code == 201
    with engine.begin() as conn:  # as a last failed attempt would leave it
        conn.execute(
            update(tasks)
            .where(tasks.c.id == "f")
            .values(status="FAILED", attempts=1, error="boom", error_code="handler_error")
        )
    assert client.post("/api/tasks", json=_task("g", "f")).get_json()["status"] == "UPSTREAM_FAILED"
    assert client.post("/api/tasks/x/cancel").get_json()["status"] == "CANCELLED"
    assert client.post("/api/tasks/batch", json=SEED_BATCH).status_code == 201
    with engine.begin() as conn:  # a batch id the table can name
        conn.execute(
            update(tasks).where(tasks.c.id.in_(["p1", "p2"])).values(batch_id="seed-batch")
        )
    assert client.post("/api/schedules", json=SEED_SCHEDULE).status_code == 201
    assert client.put("/api/queues/mail", json=SEED_QUEUE).status_code == 200
    assert client.post("/api/queues/held/pause").status_code == 200
    link = client.get("/api/tasks?limit=2").headers["Link"]
    found = re.search(r"[?&]cursor=([^&>]+)", link)
    assert found, link
    return found.group(1)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """Build one app per backend for the whole table, its scheduler never started."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('hostile')}/tasks.db"])
    else:
        urls = postgres_schema()
    url = next(urls)
    app = build_app(url, {"EVENT_STREAM_MAX_S": "1"})  # a GET of the stream ends
    assert not app.config["SCHEDULER_ENABLED"]
    engine = app.extensions["store"].engine
    client = app.test_client()
    try:
        yield Seeded(app, client, engine, _seed(client, engine))
    finally:
        teardown([app])
        next(urls, None)  # drops the PostgreSQL schema


@dataclass(frozen=True)
class Snapshot:
    """Counts and a checksum of every column of every task and dependency row."""

    task_count: int
    dep_count: int
    checksum: str
    rows: tuple[Any, ...] = field(compare=False, repr=False)


def snapshot(engine: Engine) -> Snapshot:
    with engine.connect() as conn:
        task_rows = conn.execute(select(tasks).order_by(tasks.c.id)).all()
        dep_rows = conn.execute(select(deps).order_by(deps.c.task_id, deps.c.dependency_id)).all()
        schedule_rows = conn.execute(select(schedules).order_by(schedules.c.id)).all()
        queue_rows = conn.execute(select(queues).order_by(queues.c.name)).all()
    rows = tuple(tuple(r) for r in task_rows) + tuple(tuple(r) for r in dep_rows)
    rows += tuple(tuple(r) for r in schedule_rows) + tuple(tuple(r) for r in queue_rows)
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()
    return Snapshot(len(task_rows), len(dep_rows), digest, rows)


def changed(before: Snapshot, after: Snapshot) -> str:
    """Say which rows a request added, removed or changed."""
    old, new = set(map(repr, before.rows)), set(map(repr, after.rows))
    return f"gone: {sorted(old - new)[:5]}; new: {sorted(new - old)[:5]}"


# -- the table -------------------------------------------------------------------------

Path = str | Callable[[Seeded], str]
Body = bytes | Callable[[], bytes]


@dataclass(frozen=True)
class Case:
    """One hostile request and the answer it must get."""

    name: str
    method: str
    path: Path
    status: int
    code: str | None  # None: a success that must still change nothing (a replay)
    message: str  # a regex searched in the message and its details
    body: Body = b""
    headers: dict[str, str] = field(default_factory=dict)
    environ: dict[str, Any] = field(default_factory=dict)
    chunked: bool = False
    allow: frozenset[str] = frozenset()  # for 405: the methods the Allow header names


def post(
    name: str, body: Body, status: int, code: str | None, message: str, **options: Any
) -> Case:
    """A JSON POST to /api/tasks unless `path` says otherwise."""
    path = options.pop("path", "/api/tasks")
    headers = {**JSON, **options.pop("headers", {})}
    return Case(name, "POST", path, status, code, message, body, headers, **options)


def get(name: str, path: Path, status: int, code: str, message: str) -> Case:
    return Case(name, "GET", path, status, code, message)


def task(**fields: Any) -> bytes:
    """A new task's body with `fields` changed; a field set to ... is left out."""
    base: dict[str, Any] = {"id": NEW, "type": "simulate", "duration_ms": 10}
    merged = {k: v for k, v in {**base, **fields}.items() if v is not ...}
    return json.dumps(merged).encode()


def with_raw(name: str, raw: str) -> bytes:
    """A new task's body whose field `name` is the raw JSON text `raw`."""
    fields = {"id": NEW, "type": "simulate", "duration_ms": 10}
    fields.pop(name, None)
    head = json.dumps(fields)[:-1]
    return f'{head}, "{name}": {raw}}}'.encode()


def batch(*items: Any, **extra: Any) -> bytes:
    return json.dumps({"tasks": list(items), **extra}).encode()


def padded(raw: bytes, size: int) -> bytes:
    """`raw` followed by spaces up to `size` bytes: still valid JSON."""
    return raw + b" " * (size - len(raw))


def nested(depth: int) -> bytes:
    """A new task nesting `depth` levels in all: the top-level object, then its payload's."""
    return with_raw("payload", '{"a": ' * (depth - 1) + "1" + "}" * (depth - 1))


# fmt: off
INVALID = "validation_error"
BAD_JSON = "invalid_json"
NOT_OBJECT = r"must be a JSON object"
TOO_DEEP = r"deeper than 32 levels"

SUBMIT_FIELDS = [
    # id: 1 to 128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit
    post("id-empty", task(id=""), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-129-chars", task(id="a" * 129), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-with-slash", task(id="a/b"), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-dot-dot", task(id=".."), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-with-nul", task(id="a\u0000b"), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-with-space", task(id="a b"), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-leading-dash", task(id="-a"), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-trailing-newline", task(id="a\n"), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-fullwidth-letter", task(id="\uff21"), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("id-number", task(id=5), 400, INVALID, r'"id": "Not a valid string'),
    post("id-100kb", task(id="i" * 100_000), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    # type: 1 to 64 characters of the same set
    post("type-65-chars", task(type="t" * 65), 400, INVALID, r'"type": "Use 1 to 64 characters'),
    post("type-with-space", task(type="run it"), 400, INVALID, r'"type": "Use 1 to 64'),
    post("type-with-nul", task(type="t\u0000"), 400, INVALID, r'"type": "Use 1 to 64'),
    post("type-empty", task(type=""), 400, INVALID, r'"type": "Use 1 to 64'),
    post("type-missing", task(type=...), 400, INVALID, r'"type": "Missing data'),
    # duration_ms: a strict JSON integer from 1 to 86,400,000
    post("duration-true", task(duration_ms=True), 400, INVALID, r'"duration_ms": "Must be a JSON integer'),
    post("duration-float", task(duration_ms=10.0), 400, INVALID, r'"duration_ms": "Must be a JSON integer'),
    post("duration-exponent", with_raw("duration_ms", "1e2"), 400, INVALID, r'"duration_ms": "Must be a JSON integer'),
    post("duration-string", task(duration_ms="10"), 400, INVALID, r'"duration_ms": "Must be a JSON integer'),
    post("duration-null", task(duration_ms=None), 400, INVALID, r'"duration_ms": "Field may not be null'),
    post("duration-missing", task(duration_ms=...), 400, INVALID, r'"duration_ms": "Missing data'),
    post("duration-zero", task(duration_ms=0), 400, INVALID, r'"duration_ms": "Must be between 1 and 86400000'),
    post("duration-negative", task(duration_ms=-1), 400, INVALID, r'"duration_ms": "Must be between 1 and'),
    post("duration-over-a-day", task(duration_ms=86_400_001), 400, INVALID, r'"duration_ms": "Must be between 1 and'),
    post("duration-1e400", with_raw("duration_ms", "1e400"), 400, BAD_JSON, r"1e400 does not fit in a double"),
    post("duration-NaN", with_raw("duration_ms", "NaN"), 400, BAD_JSON, r"NaN is not valid JSON"),
    post("duration-Infinity", with_raw("duration_ms", "Infinity"), 400, BAD_JSON, r"Infinity is not valid JSON"),
    post("duration-minus-Infinity", with_raw("duration_ms", "-Infinity"), 400, BAD_JSON, r"-Infinity is not valid"),
    post("duration-2-pow-63", with_raw("duration_ms", str(2**63)), 400, BAD_JSON, r"9223372036854775808 does not fit in 64 bits"),
    post("duration-5000-digits", with_raw("duration_ms", "7" * 5000), 400, BAD_JSON, r"integer 7{20}\.\.\. \(5,000 digits\) does not fit in 64 bits\."),
    # dependencies: an array of at most 1,000 ids, never the task's own
    post("deps-a-string", task(dependencies="a"), 400, INVALID, r'"dependencies": "Must be a JSON array of task ids'),
    post("deps-an-object", task(dependencies={"a": 1}), 400, INVALID, r'"dependencies": "Must be a JSON array of task ids'),
    post("deps-a-number-inside", task(dependencies=[1]), 400, INVALID, r'"dependencies": "item 0: Not a valid string'),
    post("deps-null-inside", task(dependencies=["a", None]), 400, INVALID, r'"dependencies": "item 1: Field may not be null'),
    post("deps-bad-id-inside", task(dependencies=["a", "../b"]), 400, INVALID, rf'"dependencies": "item 1: .*{ID_RULE}'),
    post("deps-1001", task(dependencies=[f"d{i}" for i in range(1001)]), 400, INVALID, r'"dependencies": "At most 1000 dependencies'),
    post("deps-self", task(dependencies=["a", NEW]), 400, INVALID, r"cannot depend on itself.*own id 'new-1'"),
    post("deps-self-twice", task(dependencies=[NEW, NEW]), 400, INVALID, r"cannot depend on itself"),
    post("deps-unknown", task(dependencies=["a", "ghost"]), 400, "unknown_dependency", r'1 dependency does not exist.*"missing": \["ghost"\]'),
    post("deps-unknown-duplicated", task(dependencies=["ghost", "ghost", "nope"]), 400, "unknown_dependency", r'2 dependencies do not exist.*"missing": \["ghost", "nope"\]'),
    # the other fields
    post("a-batch-sent-as-one-task", json.dumps({"tasks": [{"type": "t", "duration_ms": 1}]}).encode(), 400, INVALID, r'this route takes one task; a batch goes to POST /api/tasks/batch.*"tasks": "A batch\'s field'),
    post("unknown-field-status", task(status="COMPLETED"), 400, INVALID, r'"status": "Set by the server; a submission cannot give it\."'),
    post("unknown-field-attempts", task(attempts=0), 400, INVALID, r'"attempts": "Set by the server'),
    post("unknown-field-misspelt", task(dependencis=[]), 400, INVALID, r'"dependencis": "Unknown field; did you mean \'dependencies\'\?"'),
    post("unknown-field-unlike-any", task(colour="red"), 400, INVALID, r'"colour": "Unknown field\."'),
    post("unknown-field-unit-left-out", task(timeout=30), 400, INVALID, r'"timeout": "Unknown field; did you mean \'timeout_ms\' \(in milliseconds\)\?"'),
    post("unknown-field-as-celery-names-it", task(countdown=30), 400, INVALID, r'"countdown": "Unknown field; did you mean \'run_at\'\?"'),
    post("unknown-field-args", task(kwargs={"a": 1}), 400, INVALID, r'"kwargs": "Unknown field; did you mean \'payload\'\?"'),
    post("batch-task-server-set", json.dumps({"tasks": [json.loads(task(worker="w"))]}).encode(), 400, INVALID, r'"tasks\.0\.worker": "Set by the server', path="/api/tasks/batch"),
    post("unknown-field-100kb-name", task(**{"k" * 100_000: 1}), 400, INVALID, r"Unknown field"),
    post("payload-a-list", task(payload=[1]), 400, INVALID, r'"payload": "Must be a JSON object'),
    post("payload-over-64kib", task(payload={"k": "x" * 65_536}), 400, INVALID, r'"payload": "Must be at most 65536 bytes as compact UTF-8 JSON'),
    post("payload-over-64kib-utf8", task(payload={"k": "é" * 33_000}), 400, INVALID, r'"payload": "Must be at most 65536 bytes'),
    post("payload-lone-surrogate", task(payload={"k": "\ud800"}), 400, INVALID, r'"payload": "Must hold no lone UTF-16 surrogate'),
    post("payload-lone-surrogate-key", task(payload={"\udfff": 1}), 400, INVALID, r'"payload": "Must hold no lone UTF-16 surrogate'),
    post("batch-payload-lone-surrogate", batch(_task("s1", payload={"k": "\udfff"})), 400, INVALID, r'"tasks\.0\.payload": "Must hold no lone UTF-16 surrogate', path="/api/tasks/batch"),
    post("priority-1001", task(priority=1001), 400, INVALID, r'"priority": "Must be between -1000 and 1000'),
    post("max-attempts-zero", task(max_attempts=0), 400, INVALID, r'"max_attempts": "Must be between 1 and 100'),
    post("timeout-zero", task(timeout_ms=0), 400, INVALID, r'"timeout_ms": "Must be between 1 and'),
    post("run-at-words", task(run_at="tomorrow"), 400, INVALID, r'"run_at": "Must be an ISO 8601 time'),
    post("run-at-past-year-9999-utc", task(run_at="9999-12-31T23:59:59-14:00"), 400, INVALID, r'"run_at": "Must be a time from year 1 to 9999 in UTC'),
    post("run-at-before-year-1-utc", task(run_at="0001-01-01T00:00:00+14:00"), 400, INVALID, r'"run_at": "Must be a time from year 1 to 9999 in UTC'),
    post("trigger-rule-unknown", task(trigger_rule="any"), 400, INVALID, r'"trigger_rule": "Must be all_success or all_done'),
]

REPLAYS = [
    # the same id again: 200 with the stored task when identical, 409 naming what differs
    post("replay-different-duration", json.dumps(_task("a", payload={"n": 1}, duration_ms=99)).encode(), 409, "duplicate_id", r"'a' already exists with a different body; it differs in duration_ms\."),
    post("replay-different-payload", json.dumps(_task("a", payload={"n": 1.0})).encode(), 409, "duplicate_id", r"differs in payload\."),
    post("replay-different-deps-and-priority", json.dumps(_task("c", "b", priority=6)).encode(), 409, "duplicate_id", r"differs in dependencies, priority\..*\"fields\": \[\"dependencies\", \"priority\"\]"),
    post("replay-without-deps", json.dumps(_task("b")).encode(), 409, "duplicate_id", r"differs in dependencies\."),
    post("replay-identical", json.dumps(_task("a", payload={"n": 1})).encode(), 200, None, ""),
    post("replay-deps-reordered-and-repeated", json.dumps(_task("c", "b", "a", "a", priority=5)).encode(), 200, None, ""),
]

MEDIA = [
    # Content-Type: JSON only
    post("content-type-text-plain", task(), 415, "unsupported_media_type", r"Content-Type: application/json", headers={"Content-Type": "text/plain"}),
    post("content-type-form", b"id=new-1&type=simulate&duration_ms=10", 415, "unsupported_media_type", r"Content-Type: application/json", headers={"Content-Type": "application/x-www-form-urlencoded"}),
    post("content-type-multipart", task(), 415, "unsupported_media_type", r"application/json", headers={"Content-Type": "multipart/form-data; boundary=x"}),
    post("content-type-jsonp", task(), 415, "unsupported_media_type", r"application/json", headers={"Content-Type": "application/jsonp"}),
    post("content-type-100kb", task(), 415, "unsupported_media_type", r"application/json", headers={"Content-Type": "application/" + "x" * 100_000}),
    Case("content-type-missing", "POST", "/api/tasks", 415, "unsupported_media_type", r"Content-Type: application/json", task()),
    post("batch-content-type-text", batch(_task(NEW)), 415, "unsupported_media_type", r"application/json", path="/api/tasks/batch", headers={"Content-Type": "text/plain"}),
    # size: 1 MiB for one task, 32 MiB for a batch
    post("body-2-mib", lambda: padded(task(), 2 * MIB), 413, "body_too_large", r"larger than 1048576 bytes"),
    post("body-2-mib-chunked", lambda: padded(task(), 2 * MIB), 413, "body_too_large", r"larger than 1048576 bytes", chunked=True),
    post("batch-body-over-32-mib", lambda: padded(batch(_task(NEW)), 32 * MIB + 1), 413, "body_too_large", r"larger than 33554432 bytes", path="/api/tasks/batch"),
    post("batch-body-over-32-mib-chunked", lambda: padded(batch(_task(NEW)), 32 * MIB + 1), 413, "body_too_large", r"larger than 33554432 bytes", path="/api/tasks/batch", chunked=True),
    # what the body holds
    post("body-empty", b"", 400, BAD_JSON, r"body is empty"),
    post("body-whitespace", b" \r\n\t ", 400, BAD_JSON, r"body is empty"),
    post("body-invalid-utf8", b'{"id": "\xff", "type": "simulate", "duration_ms": 10}', 400, BAD_JSON, r"not valid UTF-8"),
    post("body-overlong-utf8-nul", b'{"id": "a\xc0\x80", "type": "simulate", "duration_ms": 10}', 400, BAD_JSON, r"not valid UTF-8"),
    post("body-utf8-encoded-surrogate", b'{"id": "\xed\xa0\x80", "type": "simulate", "duration_ms": 10}', 400, BAD_JSON, r"not valid UTF-8"),
    post("body-utf16", task().decode().encode("utf-16"), 415, "unsupported_media_type", r"UTF-8 JSON: charset=utf-16 is not read here", headers={"Content-Type": "application/json; charset=utf-16"}),
    post("body-latin-1", task(), 415, "unsupported_media_type", r"UTF-8 JSON: charset=latin-1 is not read here", headers={"Content-Type": "application/json; charset=latin-1"}),
    post("body-byte-order-mark", b"\xef\xbb\xbf" + task(), 400, BAD_JSON, r"byte order mark"),
    post("json-truncated", task()[:-5], 400, BAD_JSON, r"not valid JSON: .* at position \d+"),
    post("json-single-quotes", b"{'type': 'simulate', 'duration_ms': 10}", 400, BAD_JSON, r"not valid JSON: Expecting property name"),
    post("json-trailing-comma", task()[:-1] + b",}", 400, BAD_JSON, r"not valid JSON"),
    post("json-comment", b"// a task\n" + task(), 400, BAD_JSON, r"not valid JSON"),
    post("json-trailing-garbage", task() + b" x", 400, BAD_JSON, r"not valid JSON: Extra data"),
    post("json-two-objects", task() + task(), 400, BAD_JSON, r"not valid JSON: Extra data"),
    post("json-duplicate-key", task()[:-1] + b', "duration_ms": 20}', 400, BAD_JSON, r"'duration_ms' appears twice"),
    post("json-lone-surrogate-escape", with_raw("id", '"\\ud800"'), 400, INVALID, rf'"id": ".*{ID_RULE}'),
    post("top-level-NaN", b"NaN", 400, BAD_JSON, r"NaN is not valid JSON"),
    post("top-level-array", b"[" + task() + b"]", 400, BAD_JSON, NOT_OBJECT),
    post("batch-a-bare-array", b"[" + task() + b"]", 400, BAD_JSON, r'must be a JSON object: \{"tasks": \[\.\.\.\]\}\.', path="/api/tasks/batch"),
    post("top-level-empty-array", b"[]", 400, BAD_JSON, NOT_OBJECT),
    post("top-level-string", b'"task"', 400, BAD_JSON, NOT_OBJECT),
    post("top-level-number", b"42", 400, BAD_JSON, NOT_OBJECT),
    post("top-level-true", b"true", 400, BAD_JSON, NOT_OBJECT),
    post("top-level-null", b"null", 400, BAD_JSON, NOT_OBJECT),
    post("nesting-33-levels", nested(33), 400, BAD_JSON, TOO_DEEP),
    post("nesting-2kb-open-brackets", b"[" * 2048, 400, BAD_JSON, TOO_DEEP),
    post("nesting-1024-brackets-closed", b"[" * 1024 + b"]" * 1024, 400, BAD_JSON, TOO_DEEP),
    post("nesting-2kb-objects", b'{"a":' * 400 + b"1" + b"}" * 400, 400, BAD_JSON, TOO_DEEP),
    post("nesting-1000-in-payload", nested(1000), 400, BAD_JSON, TOO_DEEP),
    # headers that lie or are huge
    post("content-length-short", task(), 400, BAD_JSON, r"not valid JSON", environ={"CONTENT_LENGTH": "5"}),
    post("content-length-long", task(), 400, BAD_JSON, r"ended \(or stopped arriving\) before the length its Content-Length header announced", environ={"CONTENT_LENGTH": "1000"}),
    post("content-length-huge", task(), 413, "body_too_large", r"larger than 1048576 bytes", environ={"CONTENT_LENGTH": str(10**20)}),
    post("header-64-kib", b"{", 400, BAD_JSON, r"not valid JSON", headers={"X-Filler": "h" * 65_536}),
]

QUERY = [
    # only the parameters a route knows
    post("submit-with-dry-run", task(), 400, "invalid_parameter", r"Unknown query parameter 'dry_run'", path="/api/tasks?dry_run=1"),
    post("batch-with-dry-run", batch(_task(NEW)), 400, "invalid_parameter", r"'dry_run'", path="/api/tasks/batch?dry_run=1"),
    get("list-with-two-unknown", "/api/tasks?foo=1&bar=2", 400, "invalid_parameter", r'"bar": "Unknown parameter.", "foo": "Unknown parameter."'),
    get("task-with-verbose", "/api/tasks/a?verbose=1", 400, "invalid_parameter", r"'verbose'; this route accepts wait"),
    # wait: a number of seconds from 0 to 60
    get("wait-a-word", "/api/tasks/a?wait=soon", 400, "invalid_parameter", r"wait must be a number of seconds from 0 to 60"),
    get("wait-past-60", "/api/tasks/a?wait=60.001", 400, "invalid_parameter", r"Not a number from 0 to 60"),
    get("wait-negative", "/api/tasks/a?wait=-0.5", 400, "invalid_parameter", r"wait must be"),
    get("wait-nan", "/api/tasks/a?wait=NaN", 400, "invalid_parameter", r"wait must be"),
    get("wait-overflow", "/api/tasks/a?wait=1e400", 400, "invalid_parameter", r"wait must be"),
    get("wait-empty", "/api/tasks/a?wait=", 400, "invalid_parameter", r"wait must be"),
    get("wait-nul", "/api/tasks/a?wait=%00", 400, "invalid_parameter", r"wait must be"),
    get("wait-hex", "/api/tasks/a?wait=0x10", 400, "invalid_parameter", r"wait must be"),
    get("wait-exponent", "/api/tasks/a?wait=1e1", 400, "invalid_parameter", r"wait must be"),
    get("wait-underscore", "/api/tasks/a?wait=1_0", 400, "invalid_parameter", r"wait must be"),
    get("wait-plus", "/api/tasks/a?wait=%2B3", 400, "invalid_parameter", r"wait must be"),
    get("wait-space", "/api/tasks/a?wait=%205", 400, "invalid_parameter", r"wait must be"),
    get("wait-arabic-digit", "/api/tasks/a?wait=%D9%A3", 400, "invalid_parameter", r"wait must be"),
    get("wait-trailing-dot", "/api/tasks/a?wait=3.", 400, "invalid_parameter", r"wait must be"),
    get("wait-twice-with-other", "/api/tasks/a?wait=1&x=2", 400, "invalid_parameter", r"'x'"),
    get("wait-unknown-task", "/api/tasks/nope?wait=1", 404, "not_found", r"No task has the id 'nope'"),
    get("wait-impossible-id", "/api/tasks/%00?wait=1", 404, "not_found", r"No task has the id"),
    # an encoded slash: no id holds one, whatever route the decoded path would reach
    get("status-through-encoded-slash", "/api/tasks/a%2Fstatus", 404, "not_found", r"encoded slash"),
    get("blockers-through-encoded-slash", "/api/tasks/a%2fblockers", 404, "not_found", r"encoded slash"),
    get("attempts-through-encoded-slash", "/api/tasks/f%2Fattempts", 404, "not_found", r"encoded slash"),
    Case("cancel-through-encoded-slash", "POST", "/api/tasks/a%2Fcancel", 404, "not_found", r"encoded slash"),
    get("queue-through-encoded-slash", "/api/queues/mail%2Fpause", 404, "not_found", r"encoded slash"),
    get("attempts-with-param", "/api/tasks/f/attempts?limit=1", 400, "invalid_parameter", r"'limit'"),
    get("attempts-unknown-task", "/api/tasks/nope/attempts", 404, "not_found", r"No task has the id 'nope'"),
    get("attempts-impossible-id", "/api/tasks/%00/attempts", 404, "not_found", r"No task has the id"),
    get("attempts-long-id", "/api/tasks/" + "x" * 5000 + "/attempts", 404, "not_found", r"5,000 characters"),
    get("instances-with-param", "/api/instances?host=vm", 400, "invalid_parameter", r"'host'"),
    get("events-unknown-param", "/api/events?since=3", 400, "invalid_parameter", r"'since'"),
    get("events-unknown-status", "/api/events?status=DONE", 400, "invalid_parameter", r"Unknown status 'DONE'"),
    get("events-status-misspelt", "/api/events?status=queud", 400, "invalid_parameter", r"Unknown status 'queud'"),
    get("events-empty-type-list", "/api/events?type=,,", 400, "invalid_parameter", r"comma-separated"),
    get("events-21-types", "/api/events?type=" + ",".join(f"t{k}" for k in range(21)), 400, "invalid_parameter", r"1 to 20"),
    get("events-long-batch", "/api/events?batch=" + "b" * 129, 400, "invalid_parameter", r"batch must be an id"),
    get("events-impossible-task", "/api/events?task=%00", 400, "invalid_parameter", r"task must be an id"),
    get("events-nul-type", "/api/events?type=a%00b", 400, "invalid_parameter", r"comma-separated"),
    Case("events-last-id-text", "GET", "/api/events", 400, "invalid_parameter", r"Last-Event-ID must be", headers={"Last-Event-ID": "abc"}),
    Case("events-last-id-negative", "GET", "/api/events", 400, "invalid_parameter", r"Last-Event-ID must be", headers={"Last-Event-ID": "-1"}),
    Case("events-last-id-huge", "GET", "/api/events", 400, "invalid_parameter", r"Last-Event-ID must be", headers={"Last-Event-ID": "9" * 101}),
    Case("events-last-id-no-break-space", "GET", "/api/events", 400, "invalid_parameter", r"Last-Event-ID must be", headers={"Last-Event-ID": "\xa05"}),
    get("docs-with-param", "/api/docs?url=https://example.com/x.json", 400, "invalid_parameter", r"'url'"),
    get("docs-unknown-file", "/api/docs/index.html", 404, "not_found", r"index.html"),
    get("docs-traversal", "/api/docs/..%2F..%2Fsetup.cfg", 404, "not_found", r"encoded slash"),
    get("status-with-param", "/api/tasks/a/status?x=1", 400, "invalid_parameter", r"'x'"),
    get("blockers-with-param", "/api/tasks/b/blockers?depth=9", 400, "invalid_parameter", r"'depth'"),
    get("openapi-with-param", "/api/openapi.json?v=2", 400, "invalid_parameter", r"'v'"),
    Case("cancel-with-force", "POST", "/api/tasks/a/cancel?force=true", 400, "invalid_parameter", r"'force'"),
    Case("retry-with-reset", "POST", "/api/tasks/f/retry?reset=1", 400, "invalid_parameter", r"'reset'"),
    # limit, status, type, batch_id
    get("limit-zero", "/api/tasks?limit=0", 400, "invalid_parameter", r"limit must be an integer from 1 to 1000"),
    get("limit-1001", "/api/tasks?limit=1001", 400, "invalid_parameter", r"limit must be"),
    get("limit-negative", "/api/tasks?limit=-5", 400, "invalid_parameter", r"limit must be"),
    get("limit-float", "/api/tasks?limit=2.5", 400, "invalid_parameter", r"limit must be"),
    get("limit-5000-digits", "/api/tasks?limit=" + "9" * 5000, 400, "invalid_parameter", r"limit must be"),
    # a parameter given twice: read, only its first value would count
    get("limit-twice", "/api/tasks?limit=abc&limit=2", 400, "invalid_parameter", r"'limit' is given more than once"),
    get("list-status-twice", "/api/tasks?status=QUEUED&status=RUNNING", 400, "invalid_parameter", r'"status": "Given more than once."'),
    get("wait-twice", "/api/tasks/a?wait=1&wait=2", 400, "invalid_parameter", r"'wait' is given more than once"),
    get("events-status-twice", "/api/events?status=QUEUED&status=RUNNING", 400, "invalid_parameter", r"'status' is given more than once; give it once with its values comma-separated\."),
    get("events-batch-twice", "/api/events?batch=b1&batch=b2", 400, "invalid_parameter", r"'batch' is given more than once"),
    get("events-batch-two-names", "/api/events?batch=b1&batch_id=b1", 400, "invalid_parameter", r"batch_id and batch are the same filter; give one of them\."),
    get("events-task-two-names", "/api/events?task_id=t&task=t", 400, "invalid_parameter", r"task_id and task are the same filter"),
    get("events-long-batch-id", "/api/events?batch_id=" + "b" * 129, 400, "invalid_parameter", r"batch_id must be an id"),
    get("list-status-folds-only-ascii", "/api/tasks?status=queu%C3%A9d", 400, "invalid_parameter", r"Unknown status 'queuéd'; use one of QUEUED, RUNNING"),
    get("list-status-with-nul", "/api/tasks?status=QUEUED%00", 400, "invalid_parameter", r"Unknown status"),
    get("list-type-with-nul", "/api/tasks?type=simulate%00", 400, "invalid_parameter", r"type must be 1 to 64 characters"),
    get("list-type-65-chars", "/api/tasks?type=" + "t" * 65, 400, "invalid_parameter", r"type must be 1 to 64 characters"),
    get("list-type-invalid-utf8", "/api/tasks?type=%ff", 400, "invalid_parameter", r"type must be"),
    get("list-batch-id-with-nul", "/api/tasks?batch_id=b%00", 400, "invalid_parameter", r"batch_id must be 1 to 64 characters"),
    get("list-batch-id-empty", "/api/tasks?batch_id=", 400, "invalid_parameter", r"batch_id must be"),
]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _flip_first(cursor: str) -> str:
    return cursor[0].swapcase() + cursor[1:]


CURSOR = r"The cursor is malformed; use the one the previous page gave \(the URL of its Link header, or the CLI's --cursor line\)"
CURSORS = [
    get(f"cursor-{name}", (lambda s, tamper=tamper: f"/api/tasks?limit=2&cursor={tamper(s.cursor)}"), 400, "invalid_parameter", CURSOR)
    for name, tamper in [
        ("first-char-flipped", _flip_first),
        # "v1:9" with padding bits set: decodes like "djE6OQ", but was never issued
        ("padding-bits-set", lambda c: "djE6OR"),
        ("stray-character", lambda c: c[:2] + "!" + c[2:]),
        ("padded", lambda c: c + "=="),
        ("truncated-by-one", lambda c: c[:-1]),
        ("truncated-by-two", lambda c: c[:-2]),
        ("doubled", lambda c: c + c),
        ("base64-garbage", lambda c: "!!!!"),
        ("junk-json", lambda c: _b64(b'{"seq": 3, "admin": true}')),
        ("version-2", lambda c: _b64(b"v2:3")),
        ("seq-zero", lambda c: _b64(b"v1:0")),
        ("seq-negative", lambda c: _b64(b"v1:-3")),
        ("seq-leading-zero", lambda c: _b64(b"v1:03")),
        ("seq-past-int64", lambda c: _b64(f"v1:{2**63}".encode())),
        ("5000-chars", lambda c: "A" * 5000),
        ("not-utf8", lambda c: _b64(b"v1:\xff")),
        ("empty", lambda c: ""),
    ]
]

PATH_IDS = [
    # ids in the URL that no task can have: not found, and never sent to the database
    get("get-id-with-nul", "/api/tasks/a%00b", 404, "not_found", rf"No task has the id 'a\\x00b'; task ids use {ID_RULE}"),
    get("get-id-with-space", "/api/tasks/a%20b", 404, "not_found", rf"'a b'; task ids use {ID_RULE}"),
    get("get-id-129-chars", "/api/tasks/" + "a" * 129, 404, "not_found", rf"task ids use {ID_RULE}"),
    get("get-id-10000-chars", "/api/tasks/" + "a" * 10_000, 404, "not_found", r"No task has the id 'a{40}'\.\.\. \(10,000 characters\); task ids use"),
    get("get-id-dot-dot", "/api/tasks/..", 404, "not_found", rf"'\.\.'; task ids use {ID_RULE}"),
    get("get-id-with-slash", "/api/tasks/a%2Fb", 404, "not_found", r"encoded slash"),
    get("get-id-invalid-utf8", "/api/tasks/%ff", 404, "not_found", r"task ids use"),
    get("get-id-unknown", "/api/tasks/ghost", 404, "not_found", r"^No task has the id 'ghost'\. "),
    get("status-id-with-nul", "/api/tasks/a%00/status", 404, "not_found", r"task ids use"),
    get("status-id-129-chars", f"/api/tasks/{'a' * 129}/status", 404, "not_found", r"task ids use"),
    get("blockers-id-with-nul", "/api/tasks/b%00/blockers", 404, "not_found", r"task ids use"),
    get("blockers-id-with-space", "/api/tasks/a%20b/blockers", 404, "not_found", r"task ids use"),
    get("blockers-id-129-chars", f"/api/tasks/{'a' * 129}/blockers", 404, "not_found", r"task ids use"),
    get("blockers-id-dot-dot", "/api/tasks/../blockers", 404, "not_found", r"'\.\.'; task ids use"),
    get("graph-id-with-nul", "/dashboard/graph/a%00", 404, "not_found", r"task ids use"),
    get("actions-id-with-nul", "/dashboard/actions/a%00", 404, "not_found", r"task ids use"),
    Case("cancel-id-with-nul", "POST", "/api/tasks/a%00/cancel", 404, "not_found", r"'a\\x00'; task ids use"),
    Case("cancel-id-with-space", "POST", "/api/tasks/a%20/cancel", 404, "not_found", r"task ids use"),
    Case("cancel-id-129-chars", "POST", f"/api/tasks/{'a' * 129}/cancel", 404, "not_found", r"task ids use"),
    Case("cancel-id-dot-dot", "POST", "/api/tasks/../cancel", 404, "not_found", r"task ids use"),
    # an encoded slash must not be merged into a redirect to task "a"
    Case("cancel-id-with-slash", "POST", "/api/tasks/a%2F/cancel", 404, "not_found", r"encoded slash"),
    Case("retry-id-with-slash", "POST", "/api/tasks/..%2F/retry", 404, "not_found", r"encoded slash"),
    Case("retry-id-with-nul", "POST", "/api/tasks/f%00/retry", 404, "not_found", r"task ids use"),
    Case("retry-id-129-chars", "POST", f"/api/tasks/{'f' * 129}/retry", 404, "not_found", r"task ids use"),
    Case("retry-id-with-space", "POST", "/api/tasks/f%20/retry", 404, "not_found", r"task ids use"),
]

STATES = [
    Case("cancel-failed", "POST", "/api/tasks/f/cancel", 409, "invalid_state", r"Task f is FAILED; only QUEUED or RUNNING tasks can be cancelled"),
    Case("cancel-cancelled", "POST", "/api/tasks/x/cancel", 409, "invalid_state", r"Task x is CANCELLED"),
    Case("cancel-upstream-failed", "POST", "/api/tasks/g/cancel", 409, "invalid_state", r"Task g is UPSTREAM_FAILED"),
    Case("retry-queued", "POST", "/api/tasks/a/retry", 409, "invalid_state", r"Task a is QUEUED; only FAILED, UPSTREAM_FAILED or CANCELLED tasks can be retried"),
    Case("retry-upstream-failed", "POST", "/api/tasks/g/retry", 409, "invalid_state", r"did not succeed; retry f\."),
]

ONE = _task(NEW)
BATCH = "/api/tasks/batch"
BATCHES = [
    post("batch-empty-list", batch(), 400, INVALID, r"The batch has no tasks.*Must be a non-empty array", path=BATCH),
    post("batch-no-tasks-field", b"{}", 400, INVALID, r"The batch has no tasks", path=BATCH),
    post("batch-tasks-an-object", json.dumps({"tasks": ONE}).encode(), 400, INVALID, r"Must be a non-empty array", path=BATCH),
    post("batch-unknown-field", batch(ONE, batch_id="mine"), 400, INVALID, r'one field, tasks.*"batch_id": "Unknown field', path=BATCH),
    post("batch-an-array", b"[" + json.dumps(ONE).encode() + b"]", 400, BAD_JSON, NOT_OBJECT, path=BATCH),
    post("batch-item-not-an-object", batch(ONE, "new-2", None), 400, INVALID, r'2 of 3 tasks are invalid; nothing was stored.*"tasks.1": "Must be a JSON object', path=BATCH),
    post("batch-invalid-task-named-by-index", batch(ONE, _task("new-2", duration_ms=True)), 400, INVALID, r'"tasks.1.duration_ms": "Must be a JSON integer', path=BATCH),
    post("batch-100001-tasks", lambda: batch(*[0] * 100_001), 413, "body_too_large", r"at most 100,000 tasks; this one has 100,001", path=BATCH),
    post("batch-duplicate-ids", batch(ONE, _task("new-2"), _task(NEW, "new-2")), 400, INVALID, r"The id 'new-1' appears more than once.*\"tasks.2.id\": \"The id 'new-1' is also the id of tasks.0", path=BATCH),
    post("batch-cycle", batch(_task("q1", "q3"), _task("q2", "q1"), _task("q3", "q2")), 400, "dependency_cycle", r'cycle of 3 tasks: q1 -> q3 -> q2 -> q1.*"cycle": \["q1", "q3", "q2", "q1"\]', path=BATCH),
    post("batch-cycle-through-stored-ok-task", batch(_task("q1", "a", "q2"), _task("q2", "q1")), 400, "dependency_cycle", r"q1 -> q2 -> q1", path=BATCH),
    post("batch-self-dependency", batch(_task("q1", "q1")), 400, INVALID, r'"tasks.0.dependencies": "Contains the task\'s own id', path=BATCH),
    post("batch-unknown-outside-dependency", batch(_task("q1", "a"), _task("q2", "q1", "ghost")), 400, "unknown_dependency", r'"missing": \["ghost"\]', path=BATCH),
    post("batch-replay-different-body", json.dumps({"tasks": [_task("p2", "p1"), _task("p1", payload={"n": 2})]}).encode(), 409, "duplicate_id", r'A task of the batch, .p1., already exists with a different body.*"p1": \["payload"\]', path=BATCH),
    post("batch-replay-partial", batch(_task("p1", payload={"n": 1})), 409, "duplicate_id", r"not as one batch of exactly these tasks; resubmit only the new ones", path=BATCH),
    post("batch-stored-plus-new", batch(_task("a", payload={"n": 1}), ONE), 409, "duplicate_id", r"1 of the batch's 2 tasks already exist", path=BATCH),
    post("batch-replay-identical", json.dumps(SEED_BATCH).encode(), 200, None, "", path=BATCH),
]

def schedule(**fields: Any) -> bytes:
    """A new schedule's body with `fields` changed; a field set to ... is left out."""
    base: dict[str, Any] = {"id": "s-new", "interval_s": 60, "task": {"type": "simulate", "duration_ms": 10}}
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not ...}).encode()


def patch(name: str, path: str, body: bytes, status: int, code: str, message: str, **options: Any) -> Case:
    return Case(name, "PATCH", path, status, code, message, body, {**JSON, **options.pop("headers", {})}, **options)


SCHEDULES_PATH = "/api/schedules"
SCHEDULES = [
    post("schedule-cron-61-minutes", schedule(interval_s=..., cron="61 * * * *"), 400, INVALID, r'"cron": "Not a valid cron expression', path=SCHEDULES_PATH),
    post("schedule-cron-4-fields", schedule(interval_s=..., cron="* * * *"), 400, INVALID, r'"cron": "Must be a cron expression of 5 fields', path=SCHEDULES_PATH),
    post("schedule-cron-6-fields", schedule(interval_s=..., cron="0 * * * * *"), 400, INVALID, r'"cron": "Must be a cron expression of 5 fields', path=SCHEDULES_PATH),
    post("schedule-cron-100kb", schedule(interval_s=..., cron="*" * 100_000), 400, INVALID, r'"cron": "Must be a cron', path=SCHEDULES_PATH),
    post("schedule-timezone-unknown", schedule(timezone="Mars/Olympus"), 400, INVALID, r'"timezone": "Unknown time zone', path=SCHEDULES_PATH),
    post("schedule-timezone-path", schedule(timezone="../../../etc/passwd"), 400, INVALID, r'"timezone": "Unknown time zone', path=SCHEDULES_PATH),
    post("schedule-timezone-with-nul", schedule(timezone="UTC\u0000"), 400, INVALID, r'"timezone": "Unknown time zone', path=SCHEDULES_PATH),
    post("schedule-interval-zero", schedule(interval_s=0), 400, INVALID, r'"interval_s": "Must be a whole number of seconds from 1', path=SCHEDULES_PATH),
    post("schedule-interval-true", schedule(interval_s=True), 400, INVALID, r'"interval_s": "Must be a whole number', path=SCHEDULES_PATH),
    post("schedule-interval-2-pow-63", with_raw("interval_s", str(2**63)).replace(b'"id": "new-1", ', b'"id": "s-new", "task": {"type": "simulate", "duration_ms": 10}, ').replace(b'"type": "simulate", "duration_ms": 10, "interval_s"', b'"interval_s"'), 400, BAD_JSON, r"does not fit in 64 bits", path=SCHEDULES_PATH),
    post("schedule-cron-and-interval", schedule(cron="* * * * *"), 400, INVALID, r'"cron": "Give exactly one of cron and interval_s, not both', path=SCHEDULES_PATH),
    post("schedule-neither-timing", schedule(interval_s=...), 400, INVALID, r'"cron": "Give exactly one of cron and interval_s\."', path=SCHEDULES_PATH),
    post("schedule-task-and-batch", schedule(batch={"tasks": [_task("b1")]}), 400, INVALID, r'"batch": "Give exactly one of task and batch, not both', path=SCHEDULES_PATH),
    post("schedule-neither-work", schedule(task=...), 400, INVALID, r'"task": "Give exactly one of task and batch\."', path=SCHEDULES_PATH),
    post("schedule-task-with-id", schedule(task=_task("mine")), 400, INVALID, r'"task.id": "A schedule\'s task has no id', path=SCHEDULES_PATH),
    post("schedule-task-invalid", schedule(task={"type": "simulate", "duration_ms": 0}), 400, INVALID, r'"task.duration_ms": "Must be between 1', path=SCHEDULES_PATH),
    post("schedule-task-lone-surrogate", schedule(task={"type": "simulate", "duration_ms": 1, "payload": {"k": "\ud800"}}), 400, INVALID, r'"task.payload": "Must hold no lone UTF-16 surrogate', path=SCHEDULES_PATH),
    post("schedule-batch-cycle", schedule(task=..., batch={"tasks": [_task("q1", "q2"), _task("q2", "q1")]}), 400, INVALID, r'"batch": "The dependencies form a cycle', path=SCHEDULES_PATH),
    post("schedule-batch-id-too-long", schedule(task=..., batch={"tasks": [_task("q" * 112)]}), 400, INVALID, r'"batch.tasks.0.id": "Too long', path=SCHEDULES_PATH),
    post("schedule-id-48-chars", schedule(id="s" * 48), 400, INVALID, r'"id": "Use 1 to 47 characters', path=SCHEDULES_PATH),
    post("schedule-id-with-slash", schedule(id="a/b"), 400, INVALID, r'"id": "Use 1 to 47', path=SCHEDULES_PATH),
    post("schedule-id-missing", schedule(id=...), 400, INVALID, r'"id": "Use 1 to 47', path=SCHEDULES_PATH),
    post("schedule-catch-up-zero", schedule(catch_up=0), 400, INVALID, r'"catch_up": "Must be \'skip\', \'last\' or a number from 1 to 100', path=SCHEDULES_PATH),
    post("schedule-catch-up-all", schedule(catch_up="all"), 400, INVALID, r'"catch_up": "Must be', path=SCHEDULES_PATH),
    post("schedule-overlap-queue", schedule(overlap="queue"), 400, INVALID, r'"overlap": "Must be \'skip\' or \'allow\'', path=SCHEDULES_PATH),
    post("schedule-paused-string", schedule(paused="no"), 400, INVALID, r'"paused": "Must be true or false', path=SCHEDULES_PATH),
    post("schedule-unknown-field", schedule(every="day"), 400, INVALID, r'"every": "Unknown field', path=SCHEDULES_PATH),
    post("schedule-unknown-field-and-no-timing", schedule(interval_s=..., every=60), 400, INVALID, r'"every": "Unknown field\.".*"cron": "Give exactly one of cron and interval_s\."', path=SCHEDULES_PATH),
    post("schedule-misspelt-field", schedule(intervals=60, interval_s=...), 400, INVALID, r'"intervals": "Unknown field; did you mean \'interval_s\' \(in seconds\)\?"', path=SCHEDULES_PATH),
    post("schedule-an-array", b"[]", 400, BAD_JSON, NOT_OBJECT, path=SCHEDULES_PATH),
    post("schedule-text-plain", schedule(), 415, "unsupported_media_type", r"application/json", path=SCHEDULES_PATH, headers={"Content-Type": "text/plain"}),
    post("schedule-with-param", schedule(), 400, "invalid_parameter", r"'now'", path=SCHEDULES_PATH + "?now=1"),
    post("schedule-replay-different", json.dumps({**SEED_SCHEDULE, "cron": "0 * * * *"}).encode(), 409, "duplicate_id", r"'s1' already exists with a different body", path=SCHEDULES_PATH),
    post("schedule-replay-identical", json.dumps(SEED_SCHEDULE).encode(), 200, None, "", path=SCHEDULES_PATH),
    get("schedules-limit-zero", "/api/schedules?limit=0", 400, "invalid_parameter", r"limit must be"),
    get("schedules-unknown-param", "/api/schedules?status=x", 400, "invalid_parameter", r"'status'"),
    get("schedule-unknown", "/api/schedules/ghost", 404, "not_found", r"No schedule 'ghost'"),
    get("schedule-id-with-nul", "/api/schedules/s%00", 404, "not_found", r"No schedule 's\\x00'; schedule ids use 1 to 47 characters"),
    get("schedules-cursor-with-nul", "/api/schedules?cursor=s%00", 400, "invalid_parameter", r"The cursor is malformed"),
    get("schedules-cursor-10000-chars", "/api/schedules?cursor=" + "s" * 10_000, 400, "invalid_parameter", r"The cursor is malformed"),
    patch("schedule-patch-id-with-nul", "/api/schedules/s%00", json.dumps({"paused": True}).encode(), 404, "not_found", r"schedule ids use"),
    Case("schedule-delete-id-with-nul", "DELETE", "/api/schedules/s%00", 404, "not_found", r"schedule ids use"),
    get("schedule-id-10000-chars", "/api/schedules/" + "s" * 10_000, 404, "not_found", r"No schedule"),
    patch("schedule-patch-id", "/api/schedules/s1", json.dumps({"id": "s2"}).encode(), 400, INVALID, r'"id": "Cannot change'),
    patch("schedule-patch-empty", "/api/schedules/s1", b"{}", 400, INVALID, r"Nothing to change"),
    patch("schedule-patch-bad-cron", "/api/schedules/s1", json.dumps({"cron": "nope"}).encode(), 400, INVALID, r'"cron": "Must be a cron expression'),
    patch("schedule-patch-both", "/api/schedules/s1", json.dumps({"cron": "* * * * *", "interval_s": 5}).encode(), 400, INVALID, r"not both"),
    patch("schedule-patch-task-with-id", "/api/schedules/s1", json.dumps({"task": _task("x")}).encode(), 400, INVALID, r'"task.id"'),
    patch("schedule-patch-unknown", "/api/schedules/ghost", json.dumps({"paused": True}).encode(), 404, "not_found", r"No schedule 'ghost'"),
    patch("schedule-patch-text", "/api/schedules/s1", b"paused", 415, "unsupported_media_type", r"application/json", headers={"Content-Type": "text/plain"}),
    Case("schedule-delete-unknown", "DELETE", "/api/schedules/ghost", 404, "not_found", r"No schedule 'ghost'"),
    Case("schedule-delete-with-param", "DELETE", "/api/schedules/s1?force=1", 400, "invalid_parameter", r"'force'"),
]

def put(name: str, path: str, body: bytes, status: int, code: str | None, message: str, **options: Any) -> Case:
    return Case(name, "PUT", path, status, code, message, body, {**JSON, **options.pop("headers", {})}, **options)


QUEUE_RULE = r"1 to 64 characters from A-Z a-z 0-9"
QUEUES = [
    post("task-queue-bad-name", task(queue="-mail"), 400, INVALID, r'"queue": "Use ' + QUEUE_RULE),
    post("task-queue-65-chars", task(queue="q" * 65), 400, INVALID, r'"queue": "Use ' + QUEUE_RULE),
    post("task-queue-a-number", task(queue=7), 400, INVALID, r'"queue": "Not a valid string'),
    post("task-queue-a-list", task(queue=["mail"]), 400, INVALID, r'"queue": "Not a valid string'),
    post("batch-queue-bad-name", batch(_task(NEW, queue="ma il")), 400, INVALID, r'"tasks.0.queue"', path=BATCH),
    get("queues-unknown-param", "/api/queues?state=paused", 400, "invalid_parameter", r"'state'"),
    get("queue-unknown", "/api/queues/ghost", 404, "not_found", r"No queue named 'ghost'"),
    get("queue-name-with-nul", "/api/queues/q%00", 400, "invalid_parameter", r"is not a queue name.*" + QUEUE_RULE),
    get("queue-name-10000-chars", "/api/queues/" + "q" * 10_000, 400, "invalid_parameter", r"is not a queue name"),
    put("queue-limit-zero", "/api/queues/mail", json.dumps({"concurrency_limit": 0}).encode(), 400, INVALID, r'"concurrency_limit": "Must be null or from 1 to 100000 \(pause the queue'),
    put("queue-limit-string", "/api/queues/mail", json.dumps({"concurrency_limit": "2"}).encode(), 400, INVALID, r'"concurrency_limit": "Must be a JSON integer'),
    put("queue-limit-boolean", "/api/queues/mail", json.dumps({"concurrency_limit": True}).encode(), 400, INVALID, r'"concurrency_limit": "Must be a JSON integer'),
    put("queue-limit-float", "/api/queues/mail", json.dumps({"concurrency_limit": 1.5}).encode(), 400, INVALID, r'"concurrency_limit": "Must be a JSON integer'),
    put("queue-limit-huge", "/api/queues/mail", b'{"concurrency_limit": 1' + b"0" * 4000 + b"}", 400, BAD_JSON, r"4,001 digits\) does not fit in 64 bits"),
    put("queue-rate-zero", "/api/queues/mail", json.dumps({"rate_limit_per_s": 0}).encode(), 400, INVALID, r'"rate_limit_per_s": "Must be null or from 0.001'),
    put("queue-rate-string", "/api/queues/mail", json.dumps({"rate_limit_per_s": "fast"}).encode(), 400, INVALID, r'"rate_limit_per_s": "Must be a JSON number'),
    put("queue-rate-overflow", "/api/queues/mail", b'{"rate_limit_per_s": 1e999}', 400, BAD_JSON, r"1e999 does not fit in a double"),
    put("queue-misspelt-limit", "/api/queues/mail", json.dumps({"concurency_limit": 3}).encode(), 400, INVALID, r'"concurency_limit": "Unknown field; did you mean \'concurrency_limit\'\?"'),
    put("queue-rate-per-second", "/api/queues/mail", json.dumps({"rate_limit_per_sec": 5}).encode(), 400, INVALID, r'"rate_limit_per_sec": "Unknown field; did you mean \'rate_limit_per_s\' \(per second\)\?"'),
    put("queue-rate-short-name", "/api/queues/mail", json.dumps({"rate_limit": 5}).encode(), 400, INVALID, r'"rate_limit": "Unknown field; did you mean \'rate_limit_per_s\' \(per second\)\?"'),
    put("queue-pause-word", "/api/queues/mail", json.dumps({"Pause": True}).encode(), 400, INVALID, r'"Pause": "Not a limit: POST /api/queues/<name>/pause'),
    put("queue-unknown-field", "/api/queues/mail", json.dumps({"paused": True}).encode(), 400, INVALID, r'"paused": "Not a limit: POST /api/queues/<name>/pause'),
    put("queue-body-a-list", "/api/queues/mail", b"[2]", 400, BAD_JSON, NOT_OBJECT),
    put("queue-body-text", "/api/queues/mail", b"2", 415, "unsupported_media_type", r"application/json", headers={"Content-Type": "text/plain"}),
    put("queue-bad-name", "/api/queues/ma%20il", json.dumps({}).encode(), 400, "invalid_parameter", r"is not a queue name"),
    put("queue-with-param", "/api/queues/mail?force=1", json.dumps({}).encode(), 400, "invalid_parameter", r"'force'"),
    put("queue-same-limits", "/api/queues/mail", json.dumps(SEED_QUEUE).encode(), 200, None, ""),
    post("queue-pause-bad-name", b"", 400, "invalid_parameter", r"is not a queue name", path="/api/queues/-x/pause"),
    post("queue-resume-10000-chars", b"", 400, "invalid_parameter", r"is not a queue name", path="/api/queues/" + "q" * 10_000 + "/resume"),
    post("queue-pause-paused", b"", 200, None, "", path="/api/queues/held/pause"),
]
ACTIONS = [
    patch("task-patch-empty", "/api/tasks/b", b"{}", 400, INVALID, r"Nothing to change"),
    patch("task-patch-misspelt", "/api/tasks/b", json.dumps({"prioirty": 1}).encode(), 400, INVALID, r'"prioirty": "Unknown field; did you mean \'priority\'\?"'),
    patch("task-patch-fixed-field", "/api/tasks/b", json.dumps({"payload": {}}).encode(), 400, INVALID, r'"payload": "Fixed once submitted: a PATCH changes only priority, queue and run_at\."'),
    patch("task-patch-status", "/api/tasks/b", json.dumps({"status": "COMPLETED"}).encode(), 400, INVALID, r'"status": "Set by the server: a PATCH changes only priority, queue and run_at'),
    patch("task-patch-priority-high", "/api/tasks/b", json.dumps({"priority": 1001}).encode(), 400, INVALID, r'"priority": "Must be between -1000 and 1000'),
    patch("task-patch-priority-bool", "/api/tasks/b", json.dumps({"priority": True}).encode(), 400, INVALID, r'"priority": "Must be a JSON integer'),
    patch("task-patch-queue-bad", "/api/tasks/b", json.dumps({"queue": "a b"}).encode(), 400, INVALID, r'"queue": "Use ' + QUEUE_RULE),
    patch("task-patch-run-at-text", "/api/tasks/b", json.dumps({"run_at": "soon"}).encode(), 400, INVALID, r'"run_at": "Must be an ISO 8601 time'),
    patch("task-patch-not-queued", "/api/tasks/x", json.dumps({"priority": 1}).encode(), 409, "invalid_state", r"only a QUEUED task can be changed"),
    patch("task-patch-unknown", "/api/tasks/ghost", json.dumps({"priority": 1}).encode(), 404, "not_found", r"ghost"),
    patch("task-patch-text", "/api/tasks/b", b"priority", 415, "unsupported_media_type", r"application/json", headers={"Content-Type": "text/plain"}),
    patch("task-patch-list", "/api/tasks/b", b"[1]", 400, BAD_JSON, NOT_OBJECT),
    Case("task-delete-queued", "DELETE", "/api/tasks/b", 409, "invalid_state", r"only a finished task can be deleted"),
    Case("task-delete-blocked", "DELETE", "/api/tasks/f", 409, "invalid_state", r'cannot be deleted.*"blocking": \["g"\]'),
    Case("task-delete-param", "DELETE", "/api/tasks/x?with_dependents=1", 400, "invalid_parameter", r"with_dependents must be true or false"),
    Case("task-delete-unknown-param", "DELETE", "/api/tasks/x?force=true", 400, "invalid_parameter", r"'force'"),
    Case("task-delete-unknown", "DELETE", "/api/tasks/ghost", 404, "not_found", r"ghost"),
    Case("task-delete-id-10000-chars", "DELETE", "/api/tasks/" + "t" * 10_000, 404, "not_found", r"."),
    get("batch-unknown", "/api/batches/ghost", 404, "not_found", r"No batch 'ghost'"),
    get("batch-id-65-chars", "/api/batches/" + "b" * 65, 400, "invalid_parameter", r"is not a batch id"),
    get("batch-id-with-nul", "/api/batches/b%00", 400, "invalid_parameter", r"is not a batch id"),
    get("batch-unknown-param", "/api/batches/seed-batch?x=1", 400, "invalid_parameter", r"'x'"),
    get("batch-view-unknown", "/dashboard/batches/ghost", 404, "not_found", r"No batch 'ghost'"),
    get("batch-view-id-65-chars", "/dashboard/batches/" + "b" * 65, 400, "invalid_parameter", r"is not a batch id"),
    get("batch-view-id-with-nul", "/dashboard/batches/b%00", 400, "invalid_parameter", r"is not a batch id"),
    post("batch-cancel-unknown", b"", 404, "not_found", r"No batch 'ghost'", path="/api/batches/ghost/cancel"),
    post("batch-retry-unknown", b"", 404, "not_found", r"No batch 'ghost'", path="/api/batches/ghost/retry"),
    post("batch-retry-nothing", b"", 409, "invalid_state", r"has no task to retry", path="/api/batches/seed-batch/retry"),
    post("batch-cancel-bad-id", b"", 400, "invalid_parameter", r"is not a batch id", path="/api/batches/-x/cancel"),
]
# fmt: on

# Every rule of the app's URL map: a path it matches, and the methods of METHODS it answers.
# test_route_table_is_the_url_map keeps this in step with app.url_map.
ROUTES: dict[str, tuple[str, frozenset[str]]] = {
    "/static/<path:filename>": ("/static/dashboard/dashboard.css", frozenset({"GET"})),
    "/api/tasks": ("/api/tasks", frozenset({"GET", "POST"})),
    # GET, PATCH and DELETE /api/tasks/batch act on the task whose id is "batch"
    "/api/tasks/batch": ("/api/tasks/batch", frozenset({"GET", "POST", "PATCH", "DELETE"})),
    "/api/tasks/<task_id>": ("/api/tasks/a", frozenset({"GET", "PATCH", "DELETE"})),
    "/api/tasks/<task_id>/status": ("/api/tasks/a/status", frozenset({"GET"})),
    "/api/tasks/<task_id>/cancel": ("/api/tasks/a/cancel", frozenset({"POST"})),
    "/api/tasks/<task_id>/retry": ("/api/tasks/f/retry", frozenset({"POST"})),
    "/api/tasks/<task_id>/blockers": ("/api/tasks/b/blockers", frozenset({"GET"})),
    "/api/tasks/<task_id>/attempts": ("/api/tasks/f/attempts", frozenset({"GET"})),
    "/api/instances": ("/api/instances", frozenset({"GET"})),
    "/api/events": ("/api/events", frozenset({"GET"})),
    "/api/schedules": ("/api/schedules", frozenset({"GET", "POST"})),
    "/api/schedules/<schedule_id>": ("/api/schedules/s1", frozenset({"GET", "PATCH", "DELETE"})),
    "/api/queues": ("/api/queues", frozenset({"GET"})),
    "/api/batches/<batch_id>": ("/api/batches/seed-batch", frozenset({"GET"})),
    "/api/batches/<batch_id>/cancel": ("/api/batches/seed-batch/cancel", frozenset({"POST"})),
    "/api/batches/<batch_id>/retry": ("/api/batches/seed-batch/retry", frozenset({"POST"})),
    "/api/queues/<queue_name>": ("/api/queues/mail", frozenset({"GET", "PUT", "DELETE"})),
    "/api/queues/<queue_name>/pause": ("/api/queues/held/pause", frozenset({"POST"})),
    "/api/queues/<queue_name>/resume": ("/api/queues/mail/resume", frozenset({"POST"})),
    "/api/openapi.json": ("/api/openapi.json", frozenset({"GET"})),
    "/api/docs": ("/api/docs", frozenset({"GET"})),
    "/api/docs/<path:filename>": ("/api/docs/swagger-ui.css", frozenset({"GET"})),
    "/health": ("/health", frozenset({"GET"})),
    "/metrics": ("/metrics", frozenset({"GET"})),
    "/": ("/", frozenset({"GET"})),
    "/tasks/<task_id>": ("/tasks/a", frozenset({"GET"})),
    "/schedules": ("/schedules", frozenset({"GET"})),
    "/queues": ("/queues", frozenset({"GET"})),
    "/instances": ("/instances", frozenset({"GET"})),
    "/dashboard/counts": ("/dashboard/counts", frozenset({"GET"})),
    "/dashboard/graph/<task_id>": ("/dashboard/graph/a", frozenset({"GET"})),
    "/batches/<batch_id>": ("/batches/seed-batch", frozenset({"GET"})),
    "/dashboard/batches/<batch_id>": ("/dashboard/batches/seed-batch", frozenset({"GET"})),
    "/dashboard/actions/<task_id>": ("/dashboard/actions/a", frozenset({"GET"})),
}


def _slug(rule: str) -> str:
    """A test id for a URL rule: /api/tasks/<task_id>/cancel is api-tasks-task_id-cancel."""
    plain = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"\1", rule).strip("/")
    return plain.replace("/", "-") or "root"


NOT_ALLOWED = [
    Case(
        f"{method.lower()}-{_slug(rule)}",
        method,
        sample,
        405,
        "method_not_allowed",
        rf"This route does not accept {method}; it accepts {', '.join(sorted(allowed | {'HEAD'} if 'GET' in allowed else allowed))}",
        # a body the route would take, so that only the method can explain the 405
        task() if method != "GET" else b"",
        JSON if method != "GET" else {},
        allow=allowed,
    )
    for rule, (sample, allowed) in ROUTES.items()
    for method in METHODS
    if method not in allowed
]

CASES = (
    SUBMIT_FIELDS
    + REPLAYS
    + MEDIA
    + QUERY
    + CURSORS
    + PATH_IDS
    + STATES
    + BATCHES
    + SCHEDULES
    + QUEUES
    + ACTIONS
    + NOT_ALLOWED
)


# -- the checks ------------------------------------------------------------------------


def send(seeded: Seeded, case: Case) -> TestResponse:
    path = case.path(seeded) if callable(case.path) else case.path
    body = case.body() if callable(case.body) else case.body
    if not case.chunked:
        return seeded.client.open(
            path,
            method=case.method,
            data=body,
            headers=case.headers,
            environ_overrides=case.environ,
        )
    return seeded.client.open(
        path,
        method=case.method,
        input_stream=io.BytesIO(body),
        headers={**case.headers, "Transfer-Encoding": "chunked"},
        environ_overrides={**case.environ, "wsgi.input_terminated": True},
    )


def large_inputs(case: Case, seeded: Seeded) -> list[str]:
    """Return the parts of the request long enough that an answer must not repeat them."""
    path = case.path(seeded) if callable(case.path) else case.path
    body = case.body() if callable(case.body) else case.body
    parts = [path, body[:MIB].decode("latin-1"), *case.headers.values()]
    return [p for p in parts if len(p) > 512]


def check_error(response: TestResponse, case: Case) -> None:
    raw = response.get_data()
    assert response.mimetype == "application/json", raw[:300]
    assert len(raw) < MAX_ERROR_BYTES, f"{len(raw)} bytes: {raw[:300]!r}"
    body = json.loads(raw)
    assert isinstance(body, dict) and set(body) <= ERROR_KEYS, body
    assert body["code"] == case.code, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body.get("details", {}), dict), body
    said = body["error"] + " " + json.dumps(body.get("details", {}))
    assert re.search(case.message, said), f"{case.message!r} not in {said!r}"
    for leak in ("Traceback", "sys.set_int_max_str_digits", "psycopg", "sqlalchemy", ".py"):
        assert leak not in said, said


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_hostile_request_is_refused_and_changes_nothing(seeded: Seeded, case: Case) -> None:
    before = snapshot(seeded.engine)

    response = send(seeded, case)

    assert response.status_code == case.status, response.get_data()[:500]
    if case.code is None:
        assert response.mimetype == "application/json"
        assert response.get_json()  # the stored task or batch, as it was
    else:
        check_error(response, case)
    for blob in large_inputs(case, seeded):
        text = response.get_data(as_text=True)
        for start in (0, len(blob) // 2, len(blob) - 256):
            assert blob[start : start + 256] not in text
    if case.status == 405:
        named = {m.strip() for m in response.headers["Allow"].split(",")}
        assert named & set(METHODS) == case.allow
    after = snapshot(seeded.engine)
    assert after == before, changed(before, after)


def test_route_table_is_the_url_map(seeded: Seeded) -> None:
    url_map = seeded.app.url_map
    adapter = url_map.bind("localhost")

    assert {rule.rule for rule in url_map.iter_rules()} == set(ROUTES)
    for rule, (sample, allowed) in ROUTES.items():
        matched, _ = adapter.match(sample, method="OPTIONS", return_rule=True)
        assert matched.rule == rule, f"{sample} is a path of {matched.rule}, not of {rule}"
        assert set(adapter.allowed_methods(sample)) & set(METHODS) == allowed, rule


@pytest.mark.parametrize("rule", list(ROUTES))
def test_head_and_options_behave(seeded: Seeded, rule: str) -> None:
    sample, allowed = ROUTES[rule]
    before = snapshot(seeded.engine)

    with seeded.client.options(sample) as options, seeded.client.head(sample) as head:
        pass

    assert options.status_code == 200
    assert options.get_data() == b""
    expected = allowed | {"OPTIONS"} | ({"HEAD"} if "GET" in allowed else set())
    assert {m.strip() for m in options.headers["Allow"].split(",")} == expected
    assert head.get_data() == b""
    if "GET" in allowed:
        with seeded.client.get(sample) as got:
            assert got.get_data() != b""
        assert head.status_code == got.status_code
        assert head.mimetype == got.mimetype
    else:
        assert head.status_code == 405
        assert head.mimetype == "application/json"
        assert "POST" in head.headers["Allow"]
    assert snapshot(seeded.engine) == before


def test_case_names_are_unique_test_ids() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 60
