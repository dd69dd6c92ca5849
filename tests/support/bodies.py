"""Task bodies as a client sends them: a valid one, field by field the invalid ones, and
the validator as POST /api/tasks runs it."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from app.errors import ValidationFailed
from app.schemas import TaskIn, validation_details
from app.services.submissions import normalise


def task(**fields: Any) -> dict[str, Any]:
    """Return a valid task body with `fields` changed; a value of ... drops the field."""
    body = {"id": "ok", "type": "simulate", "duration_ms": 10, **fields}
    return {k: v for k, v in body.items() if v is not ...}


# (name, body, the field an answer must name): each body breaks one rule of one field.
INVALID_FIELDS = [
    ("id-slash", task(id="a/b"), "id"),
    ("id-dotdot", task(id=".."), "id"),
    ("id-nul", task(id="a\x00b"), "id"),
    ("id-space", task(id="a b"), "id"),
    ("id-129-chars", task(id="a" * 129), "id"),
    ("id-trailing-newline", task(id="a\n"), "id"),
    ("type-trailing-newline", task(type="etl\n"), "type"),
    ("id-empty", task(id=""), "id"),
    ("id-leading-dash", task(id="-a"), "id"),
    ("id-leading-dot", task(id=".a"), "id"),
    ("id-non-ascii", task(id="tâche"), "id"),
    ("id-number", task(id=5), "id"),
    ("id-null", task(id=None), "id"),
    ("type-bad-chars", task(type="run it!"), "type"),
    ("type-65-chars", task(type="t" * 65), "type"),
    ("type-empty", task(type=""), "type"),
    ("type-missing", task(type=...), "type"),
    ("type-number", task(type=7), "type"),
    ("type-null", task(type=None), "type"),
    ("duration-string", task(duration_ms="5"), "duration_ms"),
    ("duration-float", task(duration_ms=5.0), "duration_ms"),
    ("duration-true", task(duration_ms=True), "duration_ms"),
    ("duration-zero", task(duration_ms=0), "duration_ms"),
    ("duration-negative", task(duration_ms=-1), "duration_ms"),
    ("duration-over-a-day", task(duration_ms=86_400_001), "duration_ms"),
    ("duration-missing", task(duration_ms=...), "duration_ms"),
    ("duration-null", task(duration_ms=None), "duration_ms"),
    ("deps-string", task(dependencies="a"), "dependencies"),
    ("deps-object", task(dependencies={"a": 1}), "dependencies"),
    ("deps-non-string", task(dependencies=[1]), "dependencies"),
    ("deps-null-item", task(dependencies=[None]), "dependencies"),
    ("deps-invalid-id", task(dependencies=["a/b"]), "dependencies"),
    ("deps-1001", task(dependencies=[f"d{i}" for i in range(1001)]), "dependencies"),
    ("payload-array", task(payload=[1]), "payload"),
    ("payload-string", task(payload="x"), "payload"),
    ("payload-over-64-kib", task(payload={"s": "x" * 65 * 1024}), "payload"),
    ("unknown-field", task(priority_x=1), "priority_x"),
    ("output-status", task(status="COMPLETED"), "status"),
    ("output-attempts", task(attempts=3), "attempts"),
    ("output-result", task(result={"ok": True}), "result"),
]

task_in = TaskIn()


def validate(body: Any) -> dict[str, Any]:
    """Validate one task as POST /api/tasks does; raise ValidationFailed when it is wrong."""
    try:
        loaded = task_in.load(body)
    except ValidationError as exc:
        raise ValidationFailed("invalid", validation_details(exc)) from None
    return normalise(loaded)
