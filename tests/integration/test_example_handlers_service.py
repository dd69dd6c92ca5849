"""The example handlers through the service: a graph of them runs, and without a data folder
the file types are refused. Called directly: tests/unit/test_example_handlers.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps import AppFactory
from tests.support.client import assert_error, running_app, wait_terminal


def test_the_service_runs_the_example_handlers(
    make_app: AppFactory, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = running_app(make_app, TASK_HANDLERS="app.example_handlers")
    client = app.test_client()
    (data_dir / "in.txt").write_text("to be or not to be\n")
    bodies: list[dict[str, Any]] = [
        {"id": "p", "type": "primes", "payload": {"below": 1000}},
        {"id": "c", "type": "checksum", "payload": {"path": "in.txt"}},
        {"id": "w", "type": "word_count", "dependencies": ["c"],
         "payload": {"path": "in.txt", "output": "out/summary.json"}},
        {"id": "x", "type": "checksum", "payload": {"path": "../secret"}},
    ]  # fmt: skip
    for body in bodies:
        response = client.post("/api/tasks", json={"duration_ms": 1, **body})
        assert response.status_code == 201, response.get_json()

    done = wait_terminal(client, *(b["id"] for b in bodies))
    assert done["p"]["result"] == {"below": 1000, "count": 168, "largest": 997}
    assert done["c"]["result"]["sha256"] == hashlib.sha256(b"to be or not to be\n").hexdigest()
    assert done["w"]["result"]["words"] == 6
    assert json.loads((data_dir / "out" / "summary.json").read_text())["words"] == 6
    assert {done[i]["status"] for i in "pcw"} == {"COMPLETED"}
    assert [done[i]["progress"] for i in "pcw"] == [100, 100, 100]
    assert done["x"]["status"] == "FAILED" and done["x"]["error_code"] == "handler_error"
    assert "leads outside the data folder" in done["x"]["error"]


def test_without_a_data_folder_the_service_refuses_file_tasks(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASK_DATA_DIR", raising=False)
    client = make_app(TASK_HANDLERS="app.example_handlers").test_client()
    body = {"type": "checksum", "duration_ms": 1, "payload": {"path": "in.txt"}}
    assert_error(client.post("/api/tasks", json=body), 400, "unknown_task_type")
    body = {"type": "primes", "duration_ms": 1, "payload": {"below": 10}}
    assert client.post("/api/tasks", json=body).status_code == 201
