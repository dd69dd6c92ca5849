"""The quick task dump writes exactly what the schema writes, for a page as for a batch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.schemas import TaskOut
from app.services.batch import dump_tasks


def task(n: int, **fields: Any) -> dict[str, Any]:
    moment = datetime(2026, 12, 4, 12, 0, n, 123456)
    base: dict[str, Any] = {
        "id": f"t{n}",
        "type": "resize",
        "duration_ms": 10 * n,
        "status": "COMPLETED",
        "dependencies": [f"d{n}", "shared"],
        "created_at": moment,
        "updated_at": moment,
        "payload": {"n": n, "nested": [1, None]},
        "priority": n % 3,
        "max_attempts": 2,
        "retry_backoff_ms": 1000,
        "timeout_ms": None,
        "run_at": {2: datetime(999, 1, 2, 3, 4, 5), 3: datetime(2027, 1, 1, tzinfo=UTC)}.get(n),
        "trigger_rule": "all_success",
        "batch_id": None,
        "result": [n, "ok"],
        "error": None,
        "error_code": None,
        "progress": 100,
        "attempts": 1,
        "started_at": moment,
        "finished_at": None,
        "worker": "host-1",
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    "schema",
    [TaskOut(many=True), TaskOut(many=True, exclude=("payload", "result"))],
    ids=["whole", "summary"],
)
def test_the_quick_dump_equals_the_schemas(schema: TaskOut) -> None:
    tasks = [task(n) for n in range(4)]
    tasks.append(task(9, payload=None, result=None, error="boom", error_code="handler_error"))
    missing = task(10)
    del missing["worker"]  # a row without a field goes through the schema itself
    tasks.append(missing)
    assert dump_tasks(tasks, schema) == schema.dump(tasks)
    assert [list(t) for t in dump_tasks(tasks, schema)] == [list(t) for t in schema.dump(tasks)]
