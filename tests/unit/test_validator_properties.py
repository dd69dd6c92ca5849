"""Properties of what a submission must get through: the JSON reader and the task validator.

Generated input, checked mostly against the functions themselves (fast), and a few times
through the test client. `FUZZ_EXAMPLES` raises every test's number of examples and
`FUZZ_SEED` changes the seed; by default the run is the same every time.
"""

from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.errors import ApiError, BodyTooLarge, InvalidJson, ValidationFailed
from app.jsonbody import MAX_DEPTH, MAX_INTEGER, parse_json_object
from app.schemas import (
    MAX_DURATION_MS,
    MAX_PAYLOAD_BYTES,
    TRIGGER_RULES,
    TaskIn,
    TaskOut,
    validation_details,
)
from app.services import batch
from app.services.submissions import DEFAULTS, normalise
from tests.support.apps import build_app

SEED = int(os.environ.get("FUZZ_SEED", "20261127"))
SCALED = os.environ.get("FUZZ_EXAMPLES")


def bounded(examples: int) -> Callable[[Any], Any]:
    """Settings of one property: `examples` by default, FUZZ_EXAMPLES when set; seeded."""
    chosen = settings(
        max_examples=int(SCALED) if SCALED else examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    def apply(test: Any) -> Any:
        return seed(SEED)(chosen(test))

    return apply


# -- strategies ----------------------------------------------------------------------

FIELDS = list(TaskIn().fields)
ID_CHARS = string.ascii_letters + string.digits + "._:-"
FIRST_CHARS = string.ascii_letters + string.digits
# Everything an ISO time may say about its zone, as marshmallow reads it.
ZONES = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)

# Integers the JSON reader lets through: the validator is what must refuse the rest.
json_integers = st.integers(-MAX_INTEGER - 1, MAX_INTEGER)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    json_integers,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def identifiers(most: int) -> st.SearchStrategy[str]:
    """Ids and types: a letter or digit, then up to `most` - 1 of the id characters."""
    rest = st.text(alphabet=ID_CHARS, max_size=most - 1)
    return st.builds(lambda first, tail: first + tail, st.sampled_from(FIRST_CHARS), rest)


def iso_times() -> st.SearchStrategy[str]:
    """ISO 8601 times, with or without a zone, as a client might write them."""
    moments = st.datetimes(
        min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=ZONES
    )
    spec = st.sampled_from(["seconds", "milliseconds", "microseconds"])
    return st.builds(lambda m, t: m.isoformat(timespec=t), moments, spec)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": identifiers(128),
    "dependencies": optional(st.lists(identifiers(128), max_size=6)),
    "payload": optional(json_objects),
    "priority": optional(st.integers(-1000, 1000)),
    "max_attempts": optional(st.integers(1, 100)),
    "retry_backoff_ms": optional(st.integers(0, MAX_DURATION_MS)),
    "timeout_ms": optional(st.integers(1, MAX_DURATION_MS)),
    "run_at": optional(iso_times()),
    "trigger_rule": optional(st.sampled_from(TRIGGER_RULES)),
}
valid_tasks = st.fixed_dictionaries(
    {"type": identifiers(64), "duration_ms": st.integers(1, MAX_DURATION_MS)},
    optional=VALID_FIELDS,
).filter(lambda t: t.get("id") not in (t.get("dependencies") or []))

not_integers = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.just([]),
    st.just({}),
)


def out_of(low: int, high: int) -> st.SearchStrategy[Any]:
    """Integers outside low..high, and JSON values that are not integers at all."""
    outside = st.one_of(
        st.integers(max_value=low - 1, min_value=-MAX_INTEGER),
        st.integers(min_value=high + 1, max_value=MAX_INTEGER),
    )
    return st.one_of(outside, not_integers)


def bad_identifiers(most: int) -> st.SearchStrategy[Any]:
    """Strings that break the id rules (and values that are not strings)."""
    return st.one_of(
        st.just(""),
        st.just("a" * (most + 1)),
        st.text(min_size=1, max_size=8).filter(
            lambda s: s[0] not in FIRST_CHARS or any(c not in ID_CHARS for c in s)
        ),
        json_integers,
        st.just(None),
        st.just(["a"]),
    )


# For each field, values that must be refused with that field named.
INVALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": bad_identifiers(128),
    "type": bad_identifiers(64),
    "duration_ms": st.one_of(out_of(1, MAX_DURATION_MS), st.none()),
    "dependencies": st.one_of(
        st.text(max_size=3),
        json_integers,
        st.just({}),
        st.lists(bad_identifiers(128), min_size=1, max_size=3),
        st.just(["a"] * 1001),
    ),
    "payload": st.one_of(
        st.lists(json_scalars, max_size=2),
        json_scalars.filter(lambda v: v is not None),
        st.just({"big": "x" * MAX_PAYLOAD_BYTES}),
    ),
    "priority": out_of(-1000, 1000),
    "max_attempts": out_of(1, 100),
    "retry_backoff_ms": out_of(0, MAX_DURATION_MS),
    "timeout_ms": out_of(1, MAX_DURATION_MS),
    "run_at": st.one_of(
        # A stray letter makes any text a non-time.
        st.text(alphabet="0123456789-T:Z ", max_size=20).map(lambda s: s + "x"),
        st.sampled_from(["", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "12:00"]),
        json_integers,
        st.booleans(),
        st.just([]),
    ),
    "trigger_rule": st.one_of(
        st.text(max_size=12).filter(lambda s: s not in TRIGGER_RULES),
        json_integers,
        st.just([]),
    ),
}
# A field the schema does not have, with any value.
unknown_fields = st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid task with one field broken (or one unknown field added); and that field."""
    task = draw(valid_tasks)
    names = sorted(INVALID_FIELDS)
    name = draw(st.sampled_from([*names, ""]))
    if not name:
        name = draw(unknown_fields)
        value = draw(json_values)
    else:
        value = draw(INVALID_FIELDS[name])
    task[name] = value
    return task, name


# -- the validator, called directly -----------------------------------------------------

task_in = TaskIn()


def validate(body: Any) -> dict[str, Any]:
    """Validate one task as POST /api/tasks does; raise ValidationFailed when it is wrong."""
    try:
        loaded = task_in.load(body)
    except ValidationError as exc:
        raise ValidationFailed("invalid", validation_details(exc)) from None
    return normalise(loaded)


@bounded(300)
@given(st.one_of(json_objects, st.dictionaries(st.sampled_from(FIELDS), json_values)))
def test_any_json_object_is_accepted_or_refused_never_crashes(body: dict[str, Any]) -> None:
    try:
        wanted = validate(body)
    except ValidationFailed as exc:
        assert exc.details
        assert set(exc.details) <= set(body) | set(FIELDS) | {"_schema"}
        return
    assert set(wanted) == {"id", "type", "duration_ms", "dependencies", *DEFAULTS}


@bounded(300)
@given(valid_tasks)
def test_every_valid_task_is_accepted_as_sent(body: dict[str, Any]) -> None:
    wanted = validate(body)
    assert wanted["type"] == body["type"]
    assert wanted["duration_ms"] == body["duration_ms"]
    assert wanted["id"] == body.get("id") or len(wanted["id"]) == 32
    assert wanted["dependencies"] == list(dict.fromkeys(body.get("dependencies") or []))
    for name, default in DEFAULTS.items():
        if name != "run_at":
            sent = body.get(name)
            assert wanted[name] == (default if sent is None else sent), name
    assert wanted["run_at"] == expected_run_at(body.get("run_at"))


def expected_run_at(sent: str | None) -> datetime | None:
    """Return the naive UTC time a sent run_at is stored as."""
    if sent is None:
        return None
    moment = datetime.fromisoformat(sent)
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


@bounded(400)
@given(near_valid())
def test_a_broken_field_is_refused_and_named(case: tuple[dict[str, Any], str]) -> None:
    body, field = case
    with pytest.raises(ValidationFailed) as refused:
        validate(body)
    assert field in (refused.value.details or {})


@bounded(300)
@given(st.one_of(valid_tasks, near_valid().map(lambda c: c[0]), json_objects, json_values))
def test_the_batch_fast_path_accepts_only_what_the_schema_accepts(item: Any) -> None:
    try:
        expected: Any = task_in.load(item)
    except ValidationError:
        expected = ValidationError
    try:
        loaded: Any = batch.load_task(item)
    except ValidationError:
        loaded = ValidationError
    assert loaded == expected


@bounded(150)
@given(st.lists(st.one_of(valid_tasks, near_valid().map(lambda c: c[0])), max_size=4))
def test_a_batch_is_refused_only_with_api_errors_naming_the_task(items: list[Any]) -> None:
    try:
        wanted = batch.parse_batch({"tasks": items})
    except ApiError as exc:
        assert 400 <= exc.status < 500
        keys = (exc.details or {}).keys()
        assert keys, exc.message
        if isinstance(exc, ValidationFailed) and items:
            assert all(k.startswith("tasks.") for k in keys), keys
        return
    assert [w["type"] for w in wanted] == [i["type"] for i in items]


# -- the strict JSON reader ------------------------------------------------------------


def read(raw: bytes, max_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """Run the strict parser on `raw`, as a request body's bytes."""
    return parse_json_object(raw, max_bytes)


def depth(value: Any) -> int:
    """Return how deep `value` nests: a scalar is 0, an empty object or array 1."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def fits(value: Any) -> bool:
    """Tell whether every number in `value` fits (64-bit integers, finite doubles)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -MAX_INTEGER - 1 <= value <= MAX_INTEGER
    if isinstance(value, float):
        return math.isfinite(value)
    items = value.values() if isinstance(value, dict) else value
    return all(fits(v) for v in items)


def reference(raw: bytes) -> dict[str, Any] | None:
    """What the reader must return: json.loads's object within the limits, or None."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(items)
        if len(value) != len(items):
            repeated.append("key")
        return value

    try:
        # parse_constant: json.loads reads NaN and Infinity, which are not JSON.
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=_refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or repeated or not fits(value) or depth(value) > MAX_DEPTH:
        return None
    return value


def _refuse(name: str) -> Any:
    raise ValueError(name)


def encodings(value: Any) -> st.SearchStrategy[bytes]:
    """`value` as JSON text, written in the ways clients write it."""
    return st.builds(
        lambda ascii_only, indent, spaced: json.dumps(
            value,
            ensure_ascii=ascii_only,
            indent=indent,
            separators=(", ", ": ") if spaced else (",", ":"),
            allow_nan=True,
        ).encode(),
        st.booleans(),
        st.sampled_from([None, 0, 2]),
        st.booleans(),
    )


@bounded(300)
@given(json_objects.flatmap(lambda v: st.tuples(st.just(v), encodings(v))))
def test_the_reader_returns_what_json_loads_returns(case: tuple[Any, bytes]) -> None:
    value, raw = case
    assume(depth(value) <= MAX_DEPTH)
    assert read(raw) == json.loads(raw) == value


def nested(levels: int, leaf: Any = 1) -> Any:
    """Return `levels` alternating objects and arrays around `leaf`."""
    value = leaf
    for level in range(levels - 1):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


@bounded(60)
@given(st.integers(1, 80))
def test_depth_up_to_the_limit_is_accepted_and_beyond_refused(levels: int) -> None:
    value = nested(levels)
    assert depth(value) == levels
    raw = json.dumps(value).encode()
    if levels <= MAX_DEPTH:
        assert read(raw) == value
    else:
        with pytest.raises(InvalidJson):
            read(raw)


# Numbers json.loads reads but that do not fit a 64-bit integer or a double.
unfit_numbers = st.one_of(
    st.integers(min_value=MAX_INTEGER + 1).map(str),
    st.integers(max_value=-MAX_INTEGER - 2).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E309"]),
    st.integers(309, 5000).map(lambda e: f"1.5e{e}"),
)


@bounded(200)
@given(json_objects, st.text(max_size=6), unfit_numbers)
def test_numbers_that_do_not_fit_are_refused(base: dict[str, Any], key: str, number: str) -> None:
    assume(key not in base)
    before = json.dumps(base)[:-1] + (", " if base else "")
    raw = f"{before}{json.dumps(key)}: {number}}}".encode()
    json.loads(raw)  # Python itself reads every one of them
    with pytest.raises(InvalidJson):
        read(raw)


# JSON-like text built from tokens, with what the reader must refuse mixed in: NaN and
# Infinity, numbers past the limits, repeated keys (also spelled with escapes), and damage.
number_tokens = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1.5", "1e5", "2E-3"]),
    st.sampled_from([str(MAX_INTEGER), str(MAX_INTEGER + 1), str(-MAX_INTEGER - 1)]),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
# Mostly distinct keys; "a" and its escaped spelling repeat now and then.
key_tokens = st.one_of(
    st.text(min_size=1, max_size=6).map(json.dumps), st.sampled_from(['"a"', '"\\u0061"'])
)
value_tokens = st.recursive(
    st.one_of(number_tokens, st.sampled_from(["null", "true", "false"]), key_tokens),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(key_tokens, inner), max_size=3).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=12,
)


@st.composite
def json_like(draw: st.DrawFn) -> bytes:
    """An object as text, sometimes damaged by a cut, a BOM or a wrong encoding."""
    pairs = draw(st.lists(st.tuples(key_tokens, value_tokens), max_size=4))
    text = "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    raw = text.encode()
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "bom", "utf16", "top"]))
    if damage == "cut":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + raw[at + 1 :]
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif damage == "utf16":
        raw = text.encode("utf-16")
    elif damage == "top":
        raw = draw(value_tokens).encode()
    return raw


@bounded(400)
@given(st.one_of(json_like(), st.binary(max_size=48), json_values.flatmap(encodings)))
def test_any_bytes_are_read_exactly_as_json_loads_would_or_refused(raw: bytes) -> None:
    expected = reference(raw)
    try:
        value = read(raw)
    except InvalidJson:
        assert expected is None
        return
    assert value == expected


@bounded(100)
@given(json_objects, st.integers(2, 200))
def test_a_body_over_the_limit_is_too_large(value: dict[str, Any], max_bytes: int) -> None:
    raw = json.dumps(value).encode()
    if len(raw) > max_bytes:
        with pytest.raises(BodyTooLarge):
            read(raw, max_bytes)
    else:
        assert read(raw, max_bytes) == value


# -- through the API ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """A client of one app for the whole module, with three tasks to depend on."""
    app: Flask = build_app(f"sqlite:///{tmp_path_factory.mktemp('props') / 'tasks.db'}", {})
    client = app.test_client()
    for task_id in ("dep-a", "dep-b", "dep-c"):
        assert client.post("/api/tasks", json=base_task(task_id)).status_code == 201
    yield client
    app.extensions["store"].engine.dispose()


def base_task(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "type": "simulate", "duration_ms": 1}


COUNTER = iter(range(10**9))


def unique(body: dict[str, Any]) -> dict[str, Any]:
    """Give a generated body an id no earlier example used, keeping the rest."""
    suffix = f"-{next(COUNTER)}"
    task_id = body.get("id", "t")[: 128 - len(suffix)] + suffix
    return {**body, "id": task_id}


@bounded(60)
@given(valid_tasks, st.lists(st.sampled_from(["dep-a", "dep-b", "dep-c"]), max_size=4))
def test_a_valid_task_round_trips_through_the_api(
    api: FlaskClient, body: dict[str, Any], dependencies: list[str]
) -> None:
    sent = unique({**body, "dependencies": dependencies})
    created = api.post("/api/tasks", json=sent)
    assert created.status_code == 201, created.get_json()
    shown = api.get(f"/api/tasks/{sent['id']}").get_json()
    assert shown == created.get_json()
    expected = TaskOut().dump({**validate(sent), "status": "QUEUED"})
    for name in ("id", "type", "duration_ms", "dependencies", *DEFAULTS):
        assert shown[name] == expected[name], name
    replay = api.post("/api/tasks", json=sent)
    assert (replay.status_code, replay.get_json()) == (200, shown)


@bounded(60)
@given(near_valid())
def test_a_broken_field_gets_a_400_naming_it(
    api: FlaskClient, case: tuple[dict[str, Any], str]
) -> None:
    body, field = case
    response = api.post("/api/tasks", json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["code"] == "validation_error"
    assert field in error["details"]
    batched = api.post("/api/tasks/batch", json={"tasks": [base_task("ok"), body]})
    assert batched.status_code == 400
    assert f"tasks.1.{field}" in batched.get_json()["details"]


@bounded(60)
@given(st.one_of(st.binary(max_size=48), json_values.flatmap(encodings)))
def test_any_body_gets_a_json_answer_and_never_a_5xx(api: FlaskClient, raw: bytes) -> None:
    for path in ("/api/tasks", "/api/tasks/batch"):
        response = api.post(path, data=raw, content_type="application/json")
        assert response.status_code < 500
        assert response.mimetype == "application/json"
        if response.status_code >= 400:
            assert set(response.get_json()) <= {"error", "code", "details"}
