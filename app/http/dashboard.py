"""The dashboard: HTML pages served by the app, and the two JSON reads they need beyond the API.

The pages are plain HTML, CSS and JavaScript from `templates/dashboard` and
`static/dashboard`; they call the JSON API on the same origin, plus `GET /dashboard/counts`
(tasks per status) and `GET /dashboard/graph/<id>` (a task's neighbourhood, both ways).
With API_TOKEN set, those data routes need the token like the API (app/auth.py); the pages
and static files stay open, and the pages ask for the token once and keep it per tab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify, render_template

from app import parts
from app.errors import NotFound
from app.services.reads import check_task_id
from app.statuses import Status
from app.storage import database
from app.storage.counts import by_status
from app.storage.graph import edges, has_task, neighbours, nodes

if TYPE_CHECKING:
    from sqlalchemy import Connection

bp = Blueprint("dashboard", __name__)

# How far the graph reaches from the task, each way, and how many tasks it shows at most.
GRAPH_LEVELS = 2
MAX_GRAPH_NODES = 200


@bp.get("/")
def index() -> str:
    """The overview: counts by status and the task table."""
    return render_template("dashboard/index.html", statuses=[s.value for s in Status])


@bp.get("/tasks/<task_id>")
def task_page(task_id: str) -> str:
    """One task: its details, its blockers, its actions and its dependency graph."""
    return render_template("dashboard/task.html", task_id=task_id)


@bp.get("/dashboard/counts")
def counts() -> Response:
    """Return `{status: count}` for every status, zeros included, from one grouped query."""
    with database.read(parts.engine()) as conn:
        found = by_status(conn)
    return jsonify(found)


@bp.get("/dashboard/graph/<task_id>")
def graph(task_id: str) -> Response:
    """Return the task, its dependencies and its dependents up to two levels each way.

    `edges` are `[dependency, dependent]` pairs between the returned nodes; `truncated`
    says the neighbourhood had more than `MAX_GRAPH_NODES` tasks and some were left out.
    """
    with database.read(parts.engine()) as conn:
        return jsonify(neighbourhood(conn, task_id))


def neighbourhood(conn: Connection, task_id: str) -> dict[str, Any]:
    """Collect the nodes (nearest first) and the edges among them."""
    check_task_id(task_id)
    if not has_task(conn, task_id):
        raise NotFound(f"No task has the id {task_id!r}.", {"id": task_id})
    order = [task_id]
    seen = {task_id}
    truncated = False
    up, down = [task_id], [task_id]
    for _ in range(GRAPH_LEVELS):
        up, full_up = _step(conn, up, seen, order, towards_dependencies=True)
        down, full_down = _step(conn, down, seen, order, towards_dependencies=False)
        truncated = truncated or full_up or full_down
    return {
        "nodes": nodes(conn, order),
        "edges": edges(conn, order),
        "truncated": truncated,
    }


def _step(
    conn: Connection,
    frontier: list[str],
    seen: set[str],
    order: list[str],
    *,
    towards_dependencies: bool,
) -> tuple[list[str], bool]:
    """Add the next level one way; return it and whether the node limit cut it short."""
    found: list[str] = []
    if not frontier:
        return found, False
    room = MAX_GRAPH_NODES - len(order)
    # One more than there is room for, beyond what is already seen, tells a cut.
    limit = room + len(seen) + 1
    for other in neighbours(conn, frontier, towards_dependencies=towards_dependencies, limit=limit):
        if other in seen:
            continue
        if len(order) >= MAX_GRAPH_NODES:
            return found, True
        seen.add(other)
        order.append(other)
        found.append(other)
    return found, False
