"""Properties of what a submission must get through: the JSON reader and the task validator.

Generated input, checked against the functions themselves (fast); the same input through
the test client is tests/integration/test_api_properties.py. `FUZZ_EXAMPLES` raises every
test's number of examples and `FUZZ_SEED` changes the seed; by default the run is the same
every time.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.errors import ApiError, BodyTooLarge, InvalidJson, ValidationFailed
from app.jsonbody import MAX_DEPTH, MAX_INTEGER, parse_json_object
from app.services import batch
from app.services.submissions import DEFAULTS
from tests.support.bodies import task_in, validate
from tests.support.strategies import (
    FIELDS,
    bounded,
    encodings,
    json_objects,
    json_values,
    near_valid,
    valid_tasks,
)

# -- the validator, called directly -----------------------------------------------------


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
