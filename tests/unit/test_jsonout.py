"""Answers written by orjson read as the standard encoder's did."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from app.http.jsonout import FastJSON


@dataclass
class _Point:
    x: int
    label: str


def _both(obj: Any, debug: bool = False) -> tuple[bytes, bytes]:
    app = Flask(__name__)
    app.debug = debug
    fast, standard = FastJSON(app), DefaultJSONProvider(app)
    for provider in (fast, standard):
        provider.sort_keys = False
    with app.app_context():
        return fast.response(obj).get_data(), standard.response(obj).get_data()


TASK = {
    "id": "t-1",
    "type": "etl",
    "status": "QUEUED",
    "dependencies": ["a", "b"],
    "payload": {"rows": [1, 2.5, None, True], "nested": {"k": "v"}},
    "attempts": 0,
    "started_at": None,
    "progress": 97,
}


@pytest.mark.parametrize(
    "obj",
    [
        TASK,
        {"batch_id": "b", "tasks": [TASK] * 3},
        [1, -2, 0.1, 3.75, 10**18, -(2**63)],
        {"error": {"code": "invalid", "message": 'a "quoted" \\ back\tslash\n'}},
        {"when": datetime(2026, 12, 6, 5, 0, 1), "day": date(2026, 12, 6)},
        {"aware": datetime(2026, 12, 6, 5, 0, 1, tzinfo=UTC)},
        {"id": uuid.UUID(int=7), "amount": Decimal("1.50"), "point": _Point(1, "p")},
        "a bare string",
        None,
    ],
)
def test_an_answer_is_the_standard_encoders_byte_for_byte(obj: Any) -> None:
    fast, standard = _both(obj)
    assert fast == standard
    assert fast.endswith(b"\n")


def test_text_outside_ascii_is_written_as_utf8_and_reads_the_same() -> None:
    obj = {"id": "tâche-été", "message": "日本語 ✓ \U0001f600"}
    fast, standard = _both(obj)
    assert json.loads(fast) == json.loads(standard) == obj
    assert "tâche-été".encode() in fast


@pytest.mark.parametrize(
    "obj",
    [
        {"payload": {"big": 2**70}},  # past 64 bits: orjson refuses it
        {"error": {"message": "bad id \ud800"}},  # a lone surrogate, quoted from input
        {1: "a key that is not text"},
    ],
)
def test_what_orjson_refuses_is_written_by_the_standard_encoder(obj: Any) -> None:
    fast, standard = _both(obj)
    assert fast == standard


def test_a_debug_app_gets_the_indented_answer() -> None:
    fast, standard = _both(TASK, debug=True)
    assert fast == standard and b"\n  " in fast
