"""POST /api/tasks, black-box: what is stored, what is answered, and every way to get it wrong."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.support.bodies import INVALID_FIELDS, task
from tests.support.client import MAX_ERROR_BYTES, ORIGINAL_FIELDS, assert_error
from tests.support.store import count, set_status

LATER_FIELDS = [
    "payload",
    "result",
    "error",
    "error_code",
    "attempts",
    "started_at",
    "finished_at",
    "worker",
]
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def post(client: FlaskClient, body: Any, path: str = "/api/tasks") -> TestResponse:
    """Submit `body` as JSON."""
    return client.post(path, json=body)


def submit(client: FlaskClient, task_id: str, **fields: Any) -> dict[str, Any]:
    """Submit a valid task and return it; fail the test unless it was created."""
    response = post(client, {"id": task_id, "type": "simulate", "duration_ms": 10, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# -- success -------------------------------------------------------------------------


def test_created_task_is_answered_as_committed(client: FlaskClient) -> None:
    response = post(client, {"id": "t1", "type": "simulate", "duration_ms": 250})

    assert response.status_code == 201
    assert response.headers["Location"] == "/api/tasks/t1"
    body = response.get_json()
    assert list(body)[:7] == ORIGINAL_FIELDS
    assert [key for key in body if key in LATER_FIELDS] == LATER_FIELDS
    assert body["id"] == "t1"
    assert body["type"] == "simulate"
    assert body["duration_ms"] == 250
    assert body["status"] == "QUEUED"
    assert body["dependencies"] == []
    assert body["attempts"] == 0
    assert body["result"] is None
    assert body["error"] is None and body["error_code"] is None
    assert body["started_at"] is None and body["finished_at"] is None
    assert TIMESTAMP.match(body["created_at"]) and TIMESTAMP.match(body["updated_at"])
    assert client.get("/api/tasks/t1").get_json() == body


def test_id_is_generated_when_absent(client: FlaskClient) -> None:
    first = post(client, {"type": "simulate", "duration_ms": 1})
    second = post(client, {"type": "simulate", "duration_ms": 1})

    assert first.status_code == second.status_code == 201
    ids = [first.get_json()["id"], second.get_json()["id"]]
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", i) for i in ids)
    assert first.headers["Location"] == f"/api/tasks/{ids[0]}"
    assert client.get(first.headers["Location"]).status_code == 200


@pytest.mark.parametrize(
    "task_id",
    ["a", "A" * 128, "0-starts-with-digit", "with.dots_and:colons-", "x..y"],
    ids=["one-char", "128-chars", "digit-first", "all-punctuation", "inner-dots"],
)
def test_valid_ids_are_accepted(client: FlaskClient, task_id: str) -> None:
    response = post(client, {"id": task_id, "type": "simulate", "duration_ms": 1})

    assert response.status_code == 201
    assert response.get_json()["id"] == task_id
    assert client.get(response.headers["Location"]).get_json()["id"] == task_id


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, []),
        ({"dependencies": None}, []),
        ({"dependencies": []}, []),
        ({"dependencies": ["b", "a"]}, ["b", "a"]),
        ({"dependencies": ["b", "a", "b", "a"]}, ["b", "a"]),
    ],
    ids=["absent", "null", "empty", "order-kept", "duplicates-once"],
)
def test_dependencies_are_normalised(
    client: FlaskClient, extra: dict[str, Any], expected: list[str]
) -> None:
    submit(client, "a")
    submit(client, "b")

    body = submit(client, "c", **extra)

    assert body["dependencies"] == expected
    assert client.get("/api/tasks/c").get_json()["dependencies"] == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"fail": True, "n": [1, 2.5, None], "s": "é"},
            {"fail": True, "n": [1, 2.5, None], "s": "é"},
        ),
        (None, {}),
        ({}, {}),
    ],
    ids=["object", "null", "empty"],
)
def test_payload_is_stored_and_shown(
    client: FlaskClient, payload: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    body = submit(client, "p", payload=payload)

    assert body["payload"] == expected
    assert client.get("/api/tasks/p").get_json()["payload"] == expected


def test_payload_nested_32_levels_is_accepted(client: FlaskClient) -> None:
    body = nested_body(32)

    response = post(client, body)

    assert response.status_code == 201
    assert response.get_json()["payload"] == body["payload"]


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "utf8"])
def test_charset_parameter_of_json_content_type_is_accepted(
    client: FlaskClient, charset: str
) -> None:
    response = client.post(
        "/api/tasks",
        data=json.dumps({"id": "cs", "type": "t", "duration_ms": 1}),
        content_type=f"application/json; charset={charset}",
    )

    assert response.status_code == 201


def test_the_payload_limit_counts_the_bytes_of_compact_utf8_json(client: FlaskClient) -> None:
    """60,000 bytes of accented text: escaped as \\u00e9 it was 180,000 and refused."""
    body = {"id": "accents", "type": "t", "duration_ms": 1, "payload": {"text": "é" * 30_000}}
    response = client.post(
        "/api/tasks",
        data=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/json",
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["payload"] == body["payload"]


# -- replays -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ({}, {}),
        ({"dependencies": ["a", "b"]}, {"dependencies": ["b", "a"]}),
        ({"dependencies": ["a"]}, {"dependencies": ["a", "a"]}),
        ({"payload": {"k": 1}}, {"payload": {"k": 1}}),
        ({}, {"payload": None, "dependencies": None}),
    ],
    ids=["same-body", "deps-reordered", "deps-duplicated", "same-payload", "nulls-as-defaults"],
)
def test_identical_replay_returns_existing_task(
    client: FlaskClient, first: dict[str, Any], again: dict[str, Any]
) -> None:
    submit(client, "a")
    submit(client, "b")
    created = submit(client, "r", **first)

    response = post(client, {"id": "r", "type": "simulate", "duration_ms": 10, **again})

    assert response.status_code == 200
    assert "Location" not in response.headers
    assert response.get_json() == created


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"type": "other"}, ["type"]),
        ({"duration_ms": 11}, ["duration_ms"]),
        ({"dependencies": ["a"]}, ["dependencies"]),
        ({"payload": {"k": 2}}, ["payload"]),
        ({"payload": {"k": True}}, ["payload"]),
        ({"payload": {"k": 1.0}}, ["payload"]),
        ({"payload": {"k": [1]}}, ["payload"]),
        ({"type": "other", "duration_ms": 11, "payload": {}}, ["type", "duration_ms", "payload"]),
    ],
    ids=[
        "type",
        "duration",
        "dependencies",
        "payload",
        "payload-true-for-1",
        "payload-float-for-int",
        "payload-list",
        "several",
    ],
)
def test_different_replay_is_a_duplicate_id(
    app: Flask, client: FlaskClient, change: dict[str, Any], fields: list[str]
) -> None:
    submit(client, "a")
    original = submit(client, "r", payload={"k": 1})

    response = post(
        client, {"id": "r", "type": "simulate", "duration_ms": 10, "payload": {"k": 1}, **change}
    )

    body = assert_error(response, 409, "duplicate_id")
    assert body["details"]["fields"] == fields
    assert client.get("/api/tasks/r").get_json() == original
    assert count(app) == 2


# -- dependencies --------------------------------------------------------------------


def test_unknown_dependencies_are_listed(app: Flask, client: FlaskClient) -> None:
    submit(client, "known")

    response = post(
        client,
        {"id": "x", "type": "t", "duration_ms": 1, "dependencies": ["ghost", "known", "nope"]},
    )

    body = assert_error(response, 400, "unknown_dependency")
    assert body["details"]["missing"] == ["ghost", "nope"]
    assert count(app) == 1


def test_self_dependency_is_rejected(app: Flask, client: FlaskClient) -> None:
    submit(client, "other")

    response = post(
        client, {"id": "me", "type": "t", "duration_ms": 1, "dependencies": ["other", "me"]}
    )

    body = assert_error(response, 400, "validation_error")
    assert "dependencies" in body["details"]
    assert count(app) == 1


@pytest.mark.parametrize(
    ("upstream", "status", "error_code"),
    [
        ({"f": "FAILED"}, "UPSTREAM_FAILED", "upstream_failed"),
        ({"u": "UPSTREAM_FAILED"}, "UPSTREAM_FAILED", "upstream_failed"),
        ({"c": "CANCELLED"}, "CANCELLED", "upstream_cancelled"),
        ({"c": "CANCELLED", "f": "FAILED"}, "UPSTREAM_FAILED", "upstream_failed"),
        ({"ok": "COMPLETED", "c": "CANCELLED"}, "CANCELLED", "upstream_cancelled"),
        ({"ok": "COMPLETED", "q": "QUEUED"}, "QUEUED", None),
    ],
    ids=["failed", "upstream-failed", "cancelled", "failed-wins", "completed-and-cancelled", "ok"],
)
def test_dead_dependency_propagates_at_once(
    app: Flask,
    client: FlaskClient,
    upstream: dict[str, str],
    status: str,
    error_code: str | None,
) -> None:
    for task_id, upstream_status in upstream.items():
        submit(client, task_id)
        set_status(app, task_id, upstream_status)

    response = post(
        client, {"id": "down", "type": "t", "duration_ms": 1, "dependencies": list(upstream)}
    )

    assert response.status_code == 201
    body = response.get_json()
    assert (body["status"], body["error_code"]) == (status, error_code)
    assert (body["error"] is None) == (error_code is None)
    assert (body["finished_at"] is None) == (error_code is None)
    assert client.get("/api/tasks/down/status").get_json() == {"id": "down", "status": status}


# -- invalid input -------------------------------------------------------------------


def nested_body(levels: int) -> dict[str, Any]:
    """Return a valid task whose JSON nests `levels` deep, the top-level object included."""
    payload: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 2):
        payload = {"a": payload}
    return task(payload=payload)


@pytest.mark.parametrize(
    ("body", "field"),
    [pytest.param(body, field, id=name) for name, body, field in INVALID_FIELDS],
)
def test_invalid_field_is_a_validation_error(
    app: Flask, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = post(client, body)

    details = assert_error(response, 400, "validation_error")["details"]
    assert field in details
    assert isinstance(details[field], str)
    assert count(app) == 0


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()


VALID = b'{"type": "t", "duration_ms": 1'
INVALID_BODIES = [
    ("empty", b""),
    ("whitespace", b"  \n "),
    ("invalid-utf8", b'{"type": "\xff\xfe", "duration_ms": 1}'),
    ("nan", VALID[:-1] + b"NaN}"),
    ("infinity", VALID[:-1] + b"Infinity}"),
    ("minus-infinity", VALID[:-1] + b"-Infinity}"),
    ("bare-nan", b"NaN"),
    ("float-overflow", VALID[:-1] + b"1e400}"),
    ("5000-digit-integer", VALID[:-1] + b"9" * 5000 + b"}"),
    ("integer-over-64-bits", VALID[:-1] + str(2**64).encode() + b"}"),
    ("2kb-open-brackets", b"[" * 2048),
    ("2kb-balanced-brackets", VALID + b', "payload": {"a": ' + b"[" * 1024 + b"]" * 1024 + b"}}"),
    ("33-levels", _json(nested_body(33))),
    ("top-level-array", _json([task()])),
    ("top-level-string", b'"task"'),
    ("top-level-number", b"5"),
    ("top-level-null", b"null"),
    ("duplicate-keys", b'{"type": "t", "type": "u", "duration_ms": 1}'),
    ("truncated", VALID),
    ("trailing-garbage", VALID + b"} x"),
    ("single-quotes", b"{'type': 't', 'duration_ms': 1}"),
]


@pytest.mark.parametrize("raw", [pytest.param(raw, id=name) for name, raw in INVALID_BODIES])
def test_malformed_body_is_invalid_json(app: Flask, client: FlaskClient, raw: bytes) -> None:
    response = client.post("/api/tasks", data=raw, content_type="application/json")

    assert_error(response, 400, "invalid_json")
    assert count(app) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        None,
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
    ],
    ids=["text-plain", "none", "form", "multipart", "json-lookalike"],
)
def test_wrong_content_type_is_unsupported(
    app: Flask, client: FlaskClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = client.post("/api/tasks", data=_json(task()), headers=headers)

    assert_error(response, 415, "unsupported_media_type")
    assert count(app) == 0


MIB = 1024 * 1024


def padded(size: int) -> bytes:
    """Return a valid task body of exactly `size` bytes (JSON allows trailing spaces)."""
    raw = _json(task())
    return raw + b" " * (size - len(raw))


def send(client: FlaskClient, raw: bytes, *, chunked: bool) -> TestResponse:
    """Post `raw` with a Content-Length, or streamed as a server does for a chunked body."""
    if not chunked:
        return client.post("/api/tasks", data=raw, content_type="application/json")
    return client.post(
        "/api/tasks",
        input_stream=io.BytesIO(raw),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_one_mib_is_accepted(client: FlaskClient, chunked: bool) -> None:
    response = send(client, padded(MIB), chunked=chunked)

    assert response.status_code == 201


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [MIB + 1, 3 * MIB], ids=["one-byte-over", "3-mib"])
def test_body_over_one_mib_is_too_large(
    app: Flask, client: FlaskClient, size: int, chunked: bool
) -> None:
    response = send(client, padded(size), chunked=chunked)

    assert_error(response, 413, "body_too_large")
    assert count(app) == 0


@pytest.mark.parametrize("query", ["priority=1", "id=x", "limit=5"])
def test_query_parameter_on_submit_is_invalid(app: Flask, client: FlaskClient, query: str) -> None:
    response = post(client, task(), path=f"/api/tasks?{query}")

    body = assert_error(response, 400, "invalid_parameter")
    assert query.split("=")[0] in body["details"]
    assert count(app) == 0


LONG = "x" * 100_000


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(task(id=LONG), id="100kb-id"),
        pytest.param(task(type=LONG), id="100kb-type"),
        pytest.param({LONG: 1, **task()}, id="100kb-unknown-field"),
        pytest.param(
            {**{f"{i}{LONG[:5000]}": 1 for i in range(20)}, **task()}, id="20-long-fields"
        ),
        pytest.param({**{f"é{i}" * 300: 1 for i in range(20)}, **task()}, id="non-ascii-fields"),
        pytest.param(task(dependencies=[f"{i}{'d' * 120}" for i in range(1000)]), id="1000-deps"),
        pytest.param(task(dependencies=[LONG]), id="100kb-dependency"),
    ],
)
def test_error_body_never_echoes_large_input(
    app: Flask, client: FlaskClient, body: dict[str, Any]
) -> None:
    response = post(client, body)

    assert response.status_code == 400
    assert len(response.get_data()) < MAX_ERROR_BYTES
    assert LONG[:300] not in response.get_data(as_text=True)
    assert count(app) == 0


def test_a_misspelt_field_is_named_but_many_unknown_fields_are_not_guessed_at(
    client: FlaskClient,
) -> None:
    misspelt = {"id": "m", "type": "t", "duration_ms": 1, "priorty": 1}
    answer = assert_error(post(client, misspelt), 400, "validation_error")
    assert answer["details"] == {"priorty": "Unknown field; did you mean 'priority'?"}
    # Past MAX_GUESSED_FIELDS unknown fields a body is not misspelt: none is guessed at,
    # and an output field is still said to be the server's.
    many = {**misspelt, "tipe": "t", "payloda": {}, "queu": "q", "status": "QUEUED"}
    details = assert_error(post(client, many), 400, "validation_error")["details"]
    assert details == {
        "priorty": "Unknown field.",
        "tipe": "Unknown field.",
        "payloda": "Unknown field.",
        "queu": "Unknown field.",
        "status": "Set by the server; a submission cannot give it.",
    }


def test_a_field_named_another_common_way_is_named_and_long_names_are_not_kept(
    client: FlaskClient,
) -> None:
    from app import schemas

    body = {"id": "n", "type": "t", "duration_ms": 1, "max_retries": 2, "depends_on": []}
    details = assert_error(post(client, body), 400, "validation_error")["details"]
    assert details == {
        "max_retries": "Unknown field; did you mean 'max_attempts'?",
        "depends_on": "Unknown field; did you mean 'dependencies'?",
    }
    kept = schemas._close.cache_info().currsize
    for k in range(20):  # names no field is near in length: compared with nothing, not kept
        long = {"id": "n", "type": "t", "duration_ms": 1, f"{k}" + "x" * 100_000: 1}
        assert_error(post(client, long), 400, "validation_error")
    assert schemas._close.cache_info().currsize == kept


def test_a_batch_guesses_at_the_misspelt_fields_of_its_first_invalid_tasks_only() -> None:
    # An answer shows the first details only; guessing past them would cost a large
    # batch's request time for nothing anybody sees.
    from app.errors import ValidationFailed
    from app.services.batch import GUESSED_TASKS, parse_batch

    tasks = [{"id": f"b{k}", "type": "t", "duration_ms": 1, "priorty": 1} for k in range(30)]
    with pytest.raises(ValidationFailed) as refused:
        parse_batch({"tasks": tasks})
    details = refused.value.details or {}
    guessed = "Unknown field; did you mean 'priority'?"
    assert [details[f"tasks.{k}.priorty"] == guessed for k in range(30)] == [
        k < GUESSED_TASKS for k in range(30)
    ]
    assert details[f"tasks.{GUESSED_TASKS}.priorty"] == "Unknown field."
