"""The row a submission makes for a new task, from the statuses of its dependencies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.services.submissions import DEFAULTS, new_row

NOW = datetime(2026, 1, 2, 3, 4, 5)


def _wanted(*dependencies: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "t",
        "type": "noop",
        "duration_ms": 1,
        "dependencies": list(dependencies),
        **DEFAULTS,
        **fields,
    }


def test_a_task_without_dependencies_is_born_queued_and_ready() -> None:
    row = new_row(_wanted(), {}, NOW, batch_id="b1")

    assert row["status"] == "QUEUED"
    assert row["pending_deps"] == 0
    assert (row["error"], row["error_code"], row["finished_at"]) == (None, None, None)
    assert (row["created_at"], row["updated_at"], row["batch_id"]) == (NOW, NOW, "b1")


def test_only_unfinished_dependencies_are_counted_as_pending() -> None:
    statuses = {"a": "QUEUED", "b": "RUNNING", "c": "COMPLETED"}

    row = new_row(_wanted("a", "b", "c"), statuses, NOW)

    assert (row["status"], row["pending_deps"]) == ("QUEUED", 2)


def test_a_failed_dependency_is_named_even_after_a_cancelled_one() -> None:
    statuses = {"a": "CANCELLED", "b": "COMPLETED", "c": "UPSTREAM_FAILED"}

    row = new_row(_wanted("a", "b", "c"), statuses, NOW)

    assert (row["status"], row["error_code"]) == ("UPSTREAM_FAILED", "upstream_failed")
    assert row["error"] == "Dependency c failed, so this task will not run."
    assert row["finished_at"] == NOW


def test_the_first_cancelled_dependency_is_named_when_none_failed() -> None:
    statuses = {"a": "QUEUED", "b": "CANCELLED", "c": "CANCELLED"}

    row = new_row(_wanted("a", "b", "c"), statuses, NOW)

    assert (row["status"], row["error_code"]) == ("CANCELLED", "upstream_cancelled")
    assert row["error"] == "Dependency b was cancelled, so this task will not run."
    assert row["pending_deps"] == 1


def test_an_all_done_task_waits_for_a_failed_dependency_rather_than_ending() -> None:
    statuses = {"a": "FAILED", "b": "RUNNING"}

    row = new_row(_wanted("a", "b", trigger_rule="all_done"), statuses, NOW)

    assert (row["status"], row["pending_deps"], row["error"]) == ("QUEUED", 1, None)
