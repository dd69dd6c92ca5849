"""Properties of submissions through the test client: a valid task round-trips, a broken
field is named, and no body gets a 5xx. The same input checked against the validator and
the JSON reader directly is tests/unit/test_validator_properties.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

from app.schemas import TaskOut
from app.services.submissions import DEFAULTS
from tests.support.apps import build_app
from tests.support.bodies import validate
from tests.support.strategies import bounded, encodings, json_values, near_valid, valid_tasks


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
