"""Fuzz every route against the OpenAPI document the app serves (schemathesis, in-process).

Each documented operation gets generated requests, valid and invalid, sent straight to the
WSGI app. Whatever comes in, the answer must be documented: no 5xx, a documented status,
content type, headers and body; invalid input never succeeds. Bounded for CI;
`FUZZ_EXAMPLES` (per operation) and `FUZZ_SEED` run it longer or from another seed.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks as openapi_checks

from app import parts
from app.http.openapi import build_spec
from app.schemas import ID_PATTERN, MAX_DEPENDENCIES, MAX_QUEUE_NAME_LENGTH
from app.services import actions, queues, reads, schedules, submissions
from app.statuses import Status
from app.storage import database
from app.storage.store import Outcome, Store
from tests.support.apps import build_app, postgres_schema
from tests.support.openapi import URL
from tests.support.store import set_fields

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("FUZZ_SEED", "20261127"))
TOKEN = "fuzz-token-0123456789abcdef"
ID = re.compile(ID_PATTERN)
MAX_ID_LENGTH = 128

CONFIG = {
    "seed": SEED,
    "generation": {
        "max-examples": EXAMPLES,
        # A fixed seed and no example database: CI sends the same requests every run.
        "database": "none",
        "mode": "all",
    },
    # Operation by operation; the seeded tasks below give the task routes real ids.
    "phases": {"stateful": {"enabled": False}},
}
CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    # Input the document forbids gets a 4xx, never a 2xx.
    openapi_checks.negative_data_rejection,
    # An undocumented method gets 405 with Allow.
    openapi_checks.unsupported_method,
]
# Not checked: positive_data_acceptance, since some rules are beyond JSON Schema (a task
# naming itself, unknown dependencies, a cursor this server did not issue) and are
# documented 400s; allow_header_conformance, since Flask's automatic OPTIONS answer for
# /api/tasks/batch also lists GET: GET /api/tasks/batch shows the task whose id is "batch".

VARIANTS: dict[str, dict[str, str]] = {
    "open": {},
    # Answers 401 to a missing or wrong token, and 429 once five tasks are QUEUED.
    "guarded": {"API_TOKEN": TOKEN, "MAX_QUEUED_TASKS": "5"},
    "postgres": {},
}
# Mostly the right token; sometimes a wrong one or none, which matters once one is set.
CREDENTIALS = [f"Bearer {TOKEN}"] * 3 + ["Bearer not-the-token-at-all", None]

# One task per status (and a few kinds of waiting), so fuzzed ids often name real tasks.
SEEDED = {
    "done": Status.COMPLETED,
    "failed": Status.FAILED,
    "running": Status.RUNNING,
    "queued": Status.QUEUED,
    "child": Status.QUEUED,
    "later": Status.QUEUED,
    "upstream": Status.UPSTREAM_FAILED,
    "cancelled": Status.CANCELLED,
}

# Schedules the fuzzed routes may name: one firing every minute, one paused cron schedule.
SCHEDULES = ["minutely", "nightly"]
# Queues they may name: the default, a limited one, a paused one.
QUEUES = ["default", "mail", "held"]
# The batch some seeded tasks belong to.
BATCH = "fuzz-batch"

# The document the app serves, as JSON; test_the_fuzzed_document_is_the_served_one checks it.
schema = schemathesis.openapi.from_dict(
    json.loads(json.dumps(build_spec())), config=SchemathesisConfig.from_dict(CONFIG)
)


def conforming_id(value: Any) -> bool:
    """Tell whether the document allows `value` as a task id."""
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and bool(ID.match(value))


# The hooks swap generated ids for seeded ones only where the generated ones conform:
# a request generated to be invalid must stay invalid, or it could rightly succeed.


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Name a seeded task (or schedule) half the time, or keep what was generated."""
    if path_parameters and conforming_id(path_parameters.get("schedule_id")):
        named = st.sampled_from(SCHEDULES).map(lambda i: {**path_parameters, "schedule_id": i})
        return st.one_of(st.just(path_parameters), named)
    if path_parameters and conforming_id(path_parameters.get("batch_id")):
        named = st.just({**path_parameters, "batch_id": BATCH})
        return st.one_of(st.just(path_parameters), named)
    name = path_parameters.get("queue_name") if path_parameters else None
    if path_parameters and conforming_id(name) and len(name) <= MAX_QUEUE_NAME_LENGTH:
        named = st.sampled_from(QUEUES).map(lambda q: {**path_parameters, "queue_name": q})
        return st.one_of(st.just(path_parameters), named)
    if not path_parameters or not conforming_id(path_parameters.get("task_id")):
        return st.just(path_parameters)
    seeded = st.sampled_from(sorted(SEEDED)).map(lambda i: {**path_parameters, "task_id": i})
    return st.one_of(st.just(path_parameters), seeded)


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Make a task depend on seeded tasks some of the time, so dependencies resolve."""
    dependencies = body.get("dependencies") if isinstance(body, dict) else None
    if not isinstance(dependencies, list) or len(dependencies) > MAX_DEPENDENCIES:
        return st.just(body)
    if not all(map(conforming_id, dependencies)):
        return st.just(body)
    picked = st.lists(st.sampled_from(sorted(SEEDED)), max_size=3)
    return st.one_of(st.just(body), picked.map(lambda deps: {**body, "dependencies": deps}))


def seed(store: Store) -> None:
    """Store SEEDED: claim, finish and cancel directly, with no scheduler thread."""
    engine = store.engine
    now = database.utcnow()
    store.register(
        {"id": "fuzz", "hostname": "fuzz", "pid": 0, "started_at": now, "heartbeat_at": now}
    )

    def add(task_id: str, *deps: str, **extra: Any) -> None:
        body = {"id": task_id, "type": "simulate", "duration_ms": 1, "dependencies": list(deps)}
        submissions.submit(engine, {**body, **extra})

    for task_id, outcome in (
        ("done", Outcome(Status.COMPLETED, result={"ok": True})),
        ("failed", Outcome(Status.FAILED, error="It broke.", error_code="handler_error")),
        ("running", None),
    ):
        add(task_id)
        (claim,) = store.claim("fuzz", 1)
        if outcome is not None:
            assert store.finish(claim, outcome)
    add("queued", payload={"n": 1})
    add("child", "queued", "done")
    add("later", run_at=now + timedelta(days=1))
    add("upstream", "failed")
    add("cancelled")
    actions.cancel(engine, "cancelled")
    work = {"type": "simulate", "duration_ms": 1}
    for body in (
        {"id": "minutely", "interval_s": 60, "task": work},
        {
            "id": "nightly",
            "cron": "0 2 * * *",
            "timezone": "Europe/Paris",
            "paused": True,
            "batch": {"tasks": [{**work, "id": "a"}, {**work, "id": "b", "dependencies": ["a"]}]},
        },
    ):
        schedules.create(engine, schedules.parse_new(body))
    queues.set_limits(engine, "mail", {"concurrency_limit": 2, "rate_limit_per_s": 5.0})
    queues.pause(engine, "held")
    add("mailed", queue="mail")
    for task_id in ("done", "failed", "upstream", "queued"):
        set_fields(store, task_id, batch_id=BATCH)
    statuses = {t: reads.get_status(engine, t)["status"] for t in SEEDED}
    assert statuses == SEEDED


@pytest.fixture(
    scope="module",
    params=["open", "guarded", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def fuzzed_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    """An app with seeded tasks: open, guarded by a token and a queue limit, or on PostgreSQL."""
    if request.param == "postgres":
        schemas = postgres_schema()
        url = next(schemas)
    else:
        schemas = iter(())
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'tasks.db'}"
    app = build_app(url, VARIANTS[request.param])
    seed(app.extensions["store"])
    # A generated `wait` of up to 60 s on a task nothing runs would only wait: answered at
    # once, as by a worker that stops, its values are still checked.
    parts.waiters(app).close()
    # A stream lasts EVENT_STREAM_MAX_S: closed, as a stopping worker's, each generated
    # request is checked and its stream ends at once (the streams' own tests read them).
    parts.streams(app).close()
    yield app
    app.extensions["store"].engine.dispose()
    next(schemas, None)  # drops the PostgreSQL schema


def credentials(case: Any) -> dict[str, str] | None:
    """Pick the Authorization header from the request itself, so a failure replays alike.

    (Drawing it with `given` would turn off schemathesis's coverage and examples phases.)
    """
    seen = repr((case.method, case.path_parameters, case.query, case.body)).encode()
    authorization = CREDENTIALS[zlib.crc32(seen) % len(CREDENTIALS)]
    return None if authorization is None else {"Authorization": authorization}


@schema.parametrize()
def test_every_answer_is_documented(case: Any, fuzzed_app: Flask) -> None:
    case.call_and_validate(app=fuzzed_app, checks=CHECKS, headers=credentials(case))


def test_the_fuzzed_document_is_the_served_one(client: FlaskClient) -> None:
    assert client.get(URL).get_json() == schema.raw_schema
