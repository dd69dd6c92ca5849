"""Hypothesis strategies of task bodies and of JSON, and the settings every property runs with.

`FUZZ_EXAMPLES` raises every property's number of examples and `FUZZ_SEED` changes the
seed; by default a run is the same every time.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

from app.jsonbody import MAX_INTEGER
from app.schemas import MAX_DURATION_MS, MAX_PAYLOAD_BYTES, TRIGGER_RULES, TaskIn

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
