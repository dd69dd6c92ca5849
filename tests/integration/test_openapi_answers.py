"""Real answers of the API, each checked against the schema the OpenAPI document gives it."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.support.openapi import conforms


def test_real_answers_match_the_document(client: FlaskClient, document: dict[str, Any]) -> None:
    body = {"id": "a", "type": "simulate", "duration_ms": 10, "payload": {"x": 1}}
    assert conforms(document, "TaskIn", body) == []
    created = client.post("/api/tasks", json=body)
    assert created.status_code == 201
    assert conforms(document, "TaskOut", created.get_json()) == []
    assert conforms(document, "TaskStatusOut", client.get("/api/tasks/a/status").get_json()) == []
    listed = client.get("/api/tasks").get_json()
    assert [conforms(document, "TaskSummary", item) for item in listed] == [[]]
    blockers = client.get("/api/tasks/a/blockers").get_json()
    assert conforms(document, "BlockersOut", blockers) == []
    waiting = {"kind": "no_handler", "type": "resize"}  # as blockers answers it
    assert conforms(document, "BlockersOut", {**blockers, "blockers": [waiting]}) == []
    batch = client.post(
        "/api/tasks/batch", json={"tasks": [{"type": "simulate", "duration_ms": 1}]}
    )
    assert batch.status_code == 201
    assert conforms(document, "BatchOut", batch.get_json()) == []
    assert conforms(document, "HealthOut", client.get("/health").get_json()) == []
    missing = client.get("/api/tasks/nope")
    assert conforms(document, "Error", missing.get_json()) == []
