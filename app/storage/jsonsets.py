"""Sets of rows passed to one statement as a single JSON parameter.

A cascade, a retry or a prune names thousands of tasks. As bound lists they would cost a
statement per few hundred ids (and SQLAlchemy's expansion of each list as much as the
statement); as one JSON text, read by the database's own JSON table functions, they
cost one statement whatever their number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def param(d: str, name: str) -> str:
    """Return the placeholder of parameter `name` in the driver's style."""
    return f":{name}" if d == "sqlite" else f"%({name})s"


def ids(d: str, name: str) -> str:
    """Return a subquery of one column, `id`: the ids of the JSON array `name`."""
    if d == "sqlite":
        return f"SELECT value AS id FROM json_each(:{name})"
    return f"SELECT json_array_elements_text(%({name})s::json) AS id"


def pairs(d: str, name: str) -> str:
    """Return a FROM item `j` with the keys and values of the JSON object `name`
    (`j.key`, `j.value` as text on PostgreSQL, as stored on SQLite)."""
    if d == "sqlite":
        return f"json_each(:{name}) AS j"
    return f"json_each_text(%({name})s::json) AS j"


def integer(d: str, expression: str) -> str:
    """Return `expression`, a value from `pairs`, as an integer."""
    return expression if d == "sqlite" else f"({expression})::int"


def of_ids(values: Iterable[str]) -> str:
    """Return ids as the JSON text `ids` reads."""
    return json.dumps(list(values))


def of_pairs(values: Mapping[str, Any]) -> str:
    """Return a mapping as the JSON text `pairs` reads."""
    return json.dumps(dict(values))


def dependents(d: str, name: str, condition: str) -> str:
    """Return a query of the edges (task_id, dependency_id) from the tasks of the JSON
    array `name` to their dependents `t` that meet `condition`.

    On PostgreSQL each task's edges are a LATERAL subquery it cannot flatten (OFFSET 0)
    and the dependent's row a scalar subquery by id: the read goes from the given tasks
    outward, however the statistics mislead the planner (see `database.by_index`).
    """
    if d == "sqlite":
        return (
            f"SELECT e.task_id, e.dependency_id FROM ({ids(d, name)}) AS s"
            " JOIN task_dependencies e ON e.dependency_id = s.id"
            f" JOIN tasks t ON t.id = e.task_id WHERE {condition}"
        )
    return (
        f"SELECT e.task_id, e.dependency_id FROM ({ids(d, name)}) AS s CROSS JOIN LATERAL"
        " (SELECT e.task_id, e.dependency_id FROM task_dependencies e"
        f" WHERE e.dependency_id = s.id AND (SELECT {condition} FROM tasks t"
        " WHERE t.id = e.task_id) OFFSET 0) AS e"
    )
